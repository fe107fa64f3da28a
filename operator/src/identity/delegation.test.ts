// The exchange decision on its own: rules, may_act, depth and narrowing, each refusal with its code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DelegationPolicy, DelegationRule } from '@chaperone/api';
import { decideExchange, type DelegationSettings, type ExchangeAsk } from './delegation.ts';
import { ExchangeRefusal } from './exchange-refusal.ts';
import type { AuthenticatedToken } from './token-authenticator.ts';

const NOW = Date.parse('2026-03-02T10:00:00Z');
const SA = 'https://kubernetes.default.svc';
const IDP = 'https://agents.example';
const SELF = 'https://chaperone-webhook.chaperone-system.svc/identity/v1';
const SETTINGS: DelegationSettings = { selfIssuer: SELF, maxLifetimeMs: 3_600_000, defaultAudience: 'chaperone' };
const DB = 'urn:chaperone:resource:shop:orders-db';
const OTHER_DB = 'urn:chaperone:resource:shop:billing-db';

function token(overrides: Partial<AuthenticatedToken> = {}): AuthenticatedToken {
  return {
    party: { subject: 'system:serviceaccount:ci:runner', issuer: SA, kind: 'ci' },
    tokenHash: `sha256:${'1'.repeat(64)}`,
    expiresAt: NOW + 3_600_000,
    chain: [],
    audiences: ['chaperone'],
    own: false,
    ...overrides,
  };
}

const agent = token({
  party: { subject: 'agent:report-writer', issuer: IDP, kind: 'ai-agent' },
  tokenHash: `sha256:${'2'.repeat(64)}`,
});
const script = token({
  party: { subject: 'script:etl', issuer: IDP, kind: 'script' },
  tokenHash: `sha256:${'3'.repeat(64)}`,
});

function policy(name: string, rules: Partial<DelegationRule>[]): DelegationPolicy {
  return {
    apiVersion: 'chaperone.dev/v1alpha1',
    kind: 'DelegationPolicy',
    metadata: { name, namespace: 'chaperone-system' },
    spec: {
      rules: rules.map((r, i) => ({
        name: `rule-${String(i)}`,
        from: [{}],
        to: [{}],
        maxDepth: 1,
        maxLifetime: '15m',
        audiences: ['chaperone'],
        ...r,
      })),
    },
  };
}

const POLICIES = [
  policy('ci', [
    {
      name: 'ci-to-agents',
      from: [{ kinds: ['ci'] }],
      to: [{ issuer: IDP, kinds: ['ai-agent'] }],
      maxDepth: 2,
      resources: ['urn:chaperone:resource:shop:*'],
      scopes: ['db:*'],
    },
    {
      name: 'agents-to-scripts',
      from: [{ kinds: ['ai-agent'] }],
      to: [{ kinds: ['script'] }],
      maxDepth: 2,
      maxLifetime: '5m',
    },
  ]),
];

const ask = (overrides: Partial<ExchangeAsk> = {}): ExchangeAsk => ({ audiences: [], resources: [], ...overrides });

function refused(fn: () => unknown, error: string, reason: string, message?: RegExp): void {
  assert.throws(fn, (err) => {
    assert.ok(err instanceof ExchangeRefusal, String(err));
    assert.equal(err.error, error, err.message);
    assert.equal(err.reason, reason, err.message);
    if (message !== undefined) assert.match(err.message, message);
    return true;
  });
}

test('a CI job delegates to an AI agent, which delegates to a script: the chain nests, current actor first', () => {
  const first = decideExchange(
    token(),
    agent,
    ask({ resources: [DB], scopes: ['db:read', 'db:write'] }),
    POLICIES,
    SETTINGS,
    NOW,
  );
  assert.equal(first.rule, 'chaperone-system/ci/ci-to-agents');
  assert.deepEqual(first.subject, { subject: 'system:serviceaccount:ci:runner', issuer: SA, kind: 'ci' });
  assert.deepEqual(first.chain, [{ issuer: IDP, kind: 'ai-agent', subject: 'agent:report-writer' }]);
  assert.deepEqual(first.audiences, ['chaperone']);
  assert.deepEqual(first.resources, [DB]);
  assert.deepEqual(first.scopes, ['db:read', 'db:write']);
  assert.equal(first.expiresAt, NOW + 15 * 60_000);

  const child = token({
    chain: first.chain,
    resources: first.resources ?? [],
    scopes: first.scopes ?? [],
    expiresAt: first.expiresAt,
    own: true,
  });
  const second = decideExchange(child, script, ask({ scopes: ['db:read'] }), POLICIES, SETTINGS, NOW);
  assert.equal(second.rule, 'chaperone-system/ci/agents-to-scripts');
  assert.deepEqual(
    second.chain.map((a) => a.subject),
    ['script:etl', 'agent:report-writer'],
  );
  assert.deepEqual(second.resources, [DB], 'resources are inherited when not named');
  assert.deepEqual(second.scopes, ['db:read']);
  assert.equal(second.expiresAt, NOW + 5 * 60_000, 'the rule maximum, shorter than the parent');
});

test('without an actor token the subject only narrows its own token: same chain, no rule', () => {
  const grant = decideExchange(token(), undefined, ask({ resources: [DB], lifetimeSeconds: 60 }), [], SETTINGS, NOW);
  assert.equal(grant.rule, 'narrow');
  assert.deepEqual(grant.chain, []);
  assert.deepEqual(grant.resources, [DB]);
  assert.equal(grant.expiresAt, NOW + 60_000);
});

test('a widened scope or resource is refused', () => {
  const parent = token({ resources: [DB], scopes: ['db:read'], own: true });
  refused(
    () => decideExchange(parent, undefined, ask({ scopes: ['db:read', 'db:write'] }), [], SETTINGS, NOW),
    'invalid_scope',
    'scope-widened',
    /db:write.*narrow/,
  );
  refused(
    () => decideExchange(parent, undefined, ask({ resources: [DB, OTHER_DB] }), [], SETTINGS, NOW),
    'invalid_target',
    'resource-widened',
    /billing-db/,
  );
});

test('a rule limits resources and scopes even of an unnarrowed parent, and asks for them to be named', () => {
  refused(
    () =>
      decideExchange(
        token(),
        agent,
        ask({ resources: ['urn:chaperone:resource:hr:payroll'] }),
        POLICIES,
        SETTINGS,
        NOW,
      ),
    'invalid_target',
    'resource-not-allowed',
  );
  refused(
    () => decideExchange(token(), agent, ask({ scopes: ['db:read'] }), POLICIES, SETTINGS, NOW),
    'invalid_target',
    'resource-required',
  );
  refused(
    () => decideExchange(token(), agent, ask({ resources: [DB], scopes: ['admin'] }), POLICIES, SETTINGS, NOW),
    'invalid_scope',
    'scope-not-allowed',
  );
});

test('an extended lifetime is refused: past the parent, past the rule, past the exchange maximum', () => {
  const parent = token({ expiresAt: NOW + 120_000 });
  refused(
    () => decideExchange(parent, undefined, ask({ lifetimeSeconds: 600 }), [], SETTINGS, NOW),
    'invalid_request',
    'lifetime-exceeds-parent',
    /expires in 120s/,
  );
  refused(
    () =>
      decideExchange(
        token(),
        agent,
        ask({ resources: [DB], scopes: ['db:read'], lifetimeSeconds: 1800 }),
        POLICIES,
        SETTINGS,
        NOW,
      ),
    'invalid_request',
    'lifetime-exceeds-maximum',
    /900s of rule/,
  );
  refused(
    () =>
      decideExchange(
        token({ expiresAt: NOW + 10 * 3_600_000 }),
        undefined,
        ask({ lifetimeSeconds: 7200 }),
        [],
        SETTINGS,
        NOW,
      ),
    'invalid_request',
    'lifetime-exceeds-maximum',
  );
  const unasked = decideExchange(parent, undefined, ask(), [], SETTINGS, NOW);
  assert.equal(unasked.expiresAt, NOW + 120_000, 'without a request the child ends with its parent');
});

test('the child never outlives the actor token either', () => {
  const shortAgent = token({ ...agent, expiresAt: NOW + 30_000 });
  const grant = decideExchange(
    token(),
    shortAgent,
    ask({ resources: [DB], scopes: ['db:read'] }),
    POLICIES,
    SETTINGS,
    NOW,
  );
  assert.equal(grant.expiresAt, NOW + 30_000);
});

test('an expired parent is refused', () => {
  refused(
    () => decideExchange(token({ expiresAt: NOW - 1 }), agent, ask(), POLICIES, SETTINGS, NOW),
    'invalid_grant',
    'expired',
    /subject_token has expired/,
  );
});

test('depth over the rule maximum is refused', () => {
  const deep = token({
    chain: [
      { subject: 'agent:report-writer', issuer: IDP, kind: 'ai-agent' },
      { subject: 'agent:planner', issuer: IDP, kind: 'ai-agent' },
    ],
    own: true,
  });
  refused(
    () => decideExchange(deep, script, ask(), POLICIES, SETTINGS, NOW),
    'unauthorized_client',
    'depth-exceeded',
    /depth 3 exceeds the maximum 2 of rule chaperone-system\/ci\/agents-to-scripts/,
  );
});

test('an actor the rules do not name, or that may_act excludes, is refused', () => {
  refused(
    () => decideExchange(token(), script, ask(), POLICIES, SETTINGS, NOW),
    'unauthorized_client',
    'no-delegation-rule',
    /no DelegationPolicy rule lets system:serviceaccount:ci:runner \(kind ci.*delegate to script:etl/,
  );
  const offered = token({ mayAct: { subject: 'agent:report-writer', issuer: IDP } });
  const other = token({ party: { subject: 'agent:intruder', issuer: IDP, kind: 'ai-agent' } });
  refused(
    () => decideExchange(offered, other, ask({ resources: [DB], scopes: ['db:read'] }), POLICIES, SETTINGS, NOW),
    'unauthorized_client',
    'may-act-mismatch',
    /may_act names agent:report-writer/,
  );
  const ok = decideExchange(offered, agent, ask({ resources: [DB], scopes: ['db:read'] }), POLICIES, SETTINGS, NOW);
  assert.equal(ok.chain[0]?.subject, 'agent:report-writer');
  assert.equal(ok.mayAct, undefined, 'may_act is consumed by the delegation');
});

test('a narrowed token keeps its may_act; it cannot be swapped for another', () => {
  const offered = token({ mayAct: { subject: 'agent:report-writer', issuer: IDP } });
  assert.deepEqual(decideExchange(offered, undefined, ask(), [], SETTINGS, NOW).mayAct, offered.mayAct);
  refused(
    () => decideExchange(offered, undefined, ask({ mayAct: { subject: 'agent:intruder' } }), [], SETTINGS, NOW),
    'invalid_request',
    'may-act-widened',
  );
});

test('audiences: the rule list, or the default, plus the exchange itself', () => {
  const forExchange = decideExchange(token(), undefined, ask({ audiences: [SELF] }), [], SETTINGS, NOW);
  assert.deepEqual(forExchange.audiences, [SELF]);
  refused(
    () => decideExchange(token(), undefined, ask({ audiences: ['kubernetes'] }), [], SETTINGS, NOW),
    'invalid_target',
    'audience-not-allowed',
  );
});

test("a narrowed token keeps to its parent's audiences: a stolen offer stays an offer", () => {
  const offer = token({ audiences: [SELF], mayAct: { subject: 'agent:report-writer', issuer: IDP } });
  for (const audiences of [[], ['chaperone'], [SELF, 'chaperone']]) {
    refused(
      () => decideExchange(offer, undefined, ask({ audiences }), [], SETTINGS, NOW),
      'invalid_target',
      'audience-widened',
      /not among the subject token's/,
    );
  }
  assert.deepEqual(decideExchange(offer, undefined, ask({ audiences: [SELF] }), [], SETTINGS, NOW).audiences, [SELF]);
  // The named actor redeems it for the rule's audiences.
  const redeemed = decideExchange(offer, agent, ask({ resources: [DB], scopes: ['db:read'] }), POLICIES, SETTINGS, NOW);
  assert.deepEqual(redeemed.audiences, ['chaperone']);
});

test('a may_act without an issuer names nobody who can redeem it', () => {
  const legacy = token({ mayAct: { subject: 'agent:report-writer' } });
  refused(
    () => decideExchange(legacy, agent, ask({ resources: [DB], scopes: ['db:read'] }), POLICIES, SETTINGS, NOW),
    'unauthorized_client',
    'may-act-mismatch',
  );
});

test('rules are tried by policy name, then in order; subjects restricts the top of the chain', () => {
  const policies = [
    policy('b-later', [{ name: 'any', from: [{}], to: [{}], maxDepth: 1 }]),
    policy('a-first', [
      { name: 'only-bob', from: [{}], to: [{}], subjects: [{ subject: 'user:bob' }], maxDepth: 1 },
      { name: 'ci-only', from: [{}], to: [{}], subjects: [{ subject: 'system:serviceaccount:ci:*' }], maxDepth: 1 },
    ]),
  ];
  assert.equal(decideExchange(token(), agent, ask(), policies, SETTINGS, NOW).rule, 'chaperone-system/a-first/ci-only');
});
