// The RFC 8693 token exchange served by the real operator against the real API server: delegation across
// a service-account token (TokenReview) and a real OIDC issuer on loopback, narrowing at every hop, every
// refusal the issue names with its RFC error code and a clear description, hostile requests, the external
// issuer's keys cached and rotated, and the evidence: every issued token has its hash-chained, signed record.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { SignJWT, compactVerify, createLocalJWKSet, importJWK, jwtVerify, type JWK } from 'jose';
import {
  CLAIMS,
  EXCHANGE_LOG_HEAD_TYPE,
  TOKEN_EXCHANGE_PATHS,
  TOKEN_TYPES,
  hashExchangeRecord,
  verifyExchangeChain,
  type ExchangeRecord,
} from '@chaperone/api';
import { PUBLIC_KEYS_CONFIGMAP, JWKS_FILE, parsePublished } from '../../operator/src/identity/signing-keys.ts';
import * as k8s from '@kubernetes/client-node';
import { controlPlaneEnv } from '../harness/env.ts';
import { podToken } from '../harness/materialise-pod.ts';
import { poll } from '../harness/poll.ts';
import { exchangeForm, startExchangeFixture, type ExchangeReply } from './exchange-fixture.ts';
import { ciDelegation, claimsOf, createIdentityWorld } from './identity-fixture.ts';
import { startOidcIssuer } from './oidc-issuer.ts';

function refused(reply: ExchangeReply, error: string, reason: string, description: RegExp): void {
  assert.equal(reply.status, error === 'invalid_client' ? 401 : 400, JSON.stringify(reply.body));
  assert.equal(reply.body.error, error, JSON.stringify(reply.body));
  assert.equal(reply.body.chaperone_reason, reason, JSON.stringify(reply.body));
  assert.match(String(reply.body.error_description), description);
  assert.equal(reply.headers['cache-control'], 'no-store');
}

/** A copy of `token` with its payload changed and re-signed with a key the exchange never published. */
async function forge(token: string, change: (claims: Record<string, unknown>) => void, kid?: string): Promise<string> {
  const claims = claimsOf(token);
  change(claims);
  const header = JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString('utf8')) as { kid: string };
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: kid ?? header.kid, typ: 'JWT' }).sign(privateKey);
}

test('token exchange: delegation with narrowing, every refusal, hostile requests, issuer keys, evidence', async (t) => {
  const ex = await startExchangeFixture(t);
  const world = await createIdentityWorld(t, ex);
  await ex.applyDelegationPolicy('ci', ciDelegation(world));
  const ordersDb = world.resource('orders-db');
  const billingDb = world.resource('billing-db');
  const ci = await world.ciToken();
  const agentToken = await world.agents.sign({ sub: 'agent:report-writer' });
  const scriptToken = await world.agents.sign({ sub: 'script:etl' });
  const issued: string[] = [];

  await t.test('discovery and JWKS are served where sidecars and clients look', async () => {
    const discovery = await ex.get(TOKEN_EXCHANGE_PATHS.discovery);
    assert.equal(discovery.status, 200);
    assert.equal(discovery.body.issuer, ex.issuer);
    assert.equal(discovery.body.token_endpoint, `${ex.issuer}/token`);
    assert.equal(discovery.body.jwks_uri, `${ex.issuer}/jwks`);
    assert.deepEqual(discovery.body.grant_types_supported, ['urn:ietf:params:oauth:grant-type:token-exchange']);
    const jwks = await ex.get(TOKEN_EXCHANGE_PATHS.jwks);
    assert.equal(jwks.status, 200);
    const keys = jwks.body.keys as JWK[];
    assert.ok(keys.length >= 1);
    assert.ok(
      keys.every((k) => k.kty === 'EC' && k.crv === 'P-256' && k.d === undefined),
      'public keys only',
    );
  });

  let child = '';
  await t.test('a CI pod token and an AI agent token make a delegated, narrowed child token', async () => {
    const reply = await ex.post(
      exchangeForm(ci, { actor: agentToken, resources: [ordersDb], scope: 'db:read db:write', lifetime: 300 }),
    );
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    assert.equal(reply.body.token_type, 'N_A');
    assert.equal(reply.body.issued_token_type, TOKEN_TYPES.jwt);
    assert.equal(reply.body.expires_in, 300);
    assert.equal(reply.body.scope, 'db:read db:write');
    assert.equal(reply.headers['cache-control'], 'no-store');
    child = String(reply.body.access_token);
    issued.push(child);
    // Verified the way a sidecar verifies it: with the served JWKS.
    const jwks = (await ex.get(TOKEN_EXCHANGE_PATHS.jwks)).body as unknown as Parameters<typeof createLocalJWKSet>[0];
    const { payload, protectedHeader } = await jwtVerify(child, createLocalJWKSet(jwks), {
      issuer: ex.issuer,
      audience: 'chaperone',
    });
    assert.equal(protectedHeader.alg, 'ES256');
    assert.equal(payload.sub, `system:serviceaccount:${world.namespace}:ci-runner`);
    assert.equal(payload[CLAIMS.subjectIssuer], controlPlaneEnv().issuer);
    assert.equal(payload[CLAIMS.agentKind], 'ci');
    assert.deepEqual(payload.act, {
      sub: 'agent:report-writer',
      iss: world.agents.issuer,
      [CLAIMS.agentKind]: 'ai-agent',
    });
    assert.deepEqual(payload[CLAIMS.resources], [ordersDb]);
    assert.equal(payload.scope, 'db:read db:write');
    assert.equal((payload.exp ?? 0) - (payload.iat ?? 0), 300);
  });

  let grandchild = '';
  await t.test(
    'the agent hands a narrower token to a script: the act claims nest, current actor outermost',
    async () => {
      grandchild = await ex.exchange(child, { actor: scriptToken, scope: 'db:read' });
      issued.push(grandchild);
      const claims = claimsOf(grandchild);
      assert.deepEqual(claims.act, {
        sub: 'script:etl',
        iss: world.agents.issuer,
        [CLAIMS.agentKind]: 'script',
        act: { sub: 'agent:report-writer', iss: world.agents.issuer, [CLAIMS.agentKind]: 'ai-agent' },
      });
      assert.deepEqual(claims[CLAIMS.resources], [ordersDb], 'resources are inherited');
      assert.equal(claims.scope, 'db:read');
      assert.ok((claims.exp as number) <= (claimsOf(child).exp as number), 'never outlives the parent');
    },
  );

  await t.test('refused: a widened scope', async () => {
    refused(
      await ex.post(exchangeForm(grandchild, { scope: 'db:read db:write' })),
      'invalid_scope',
      'scope-widened',
      /scope "db:write" is not among the subject token's scopes \(db:read\)/,
    );
  });

  await t.test('refused: a widened resource', async () => {
    refused(
      await ex.post(exchangeForm(child, { resources: [ordersDb, billingDb] })),
      'invalid_target',
      'resource-widened',
      /billing-db.*not among the subject token's resources/,
    );
    refused(
      await ex.post(
        exchangeForm(ci, { actor: agentToken, resources: ['urn:chaperone:resource:other-team:db'], scope: 'db:read' }),
      ),
      'invalid_target',
      'resource-not-allowed',
      /not allowed by rule .*ci-to-agents/,
    );
  });

  await t.test('refused: an extended lifetime, past the parent and past the rule', async () => {
    refused(
      await ex.post(exchangeForm(child, { lifetime: 3000 })),
      'invalid_request',
      'lifetime-exceeds-parent',
      /requested_lifetime 3000s would outlive the subject token/,
    );
    refused(
      await ex.post(exchangeForm(ci, { actor: agentToken, resources: [ordersDb], scope: 'db:read', lifetime: 1200 })),
      'invalid_request',
      'lifetime-exceeds-maximum',
      /exceeds the maximum 600s of rule/,
    );
  });

  await t.test('refused: depth over the maximum', async () => {
    const planner = await world.agents.sign({ sub: 'agent:planner' });
    const twoAgents = await ex.exchange(child, { actor: planner });
    issued.push(twoAgents);
    refused(
      await ex.post(exchangeForm(twoAgents, { actor: scriptToken })),
      'unauthorized_client',
      'depth-exceeded',
      /delegation depth 3 exceeds the maximum 2 of rule .*agents-to-scripts-and-agents/,
    );
  });

  await t.test('refused: an act claim added or edited and re-signed with a foreign key', async () => {
    const edited = await forge(child, (c) => {
      (c.act as Record<string, unknown>)[CLAIMS.agentKind] = 'human'; // hide the AI agent
    });
    refused(
      await ex.post(exchangeForm(edited, { scope: 'db:read' })),
      'invalid_grant',
      'signature',
      /subject_token has an invalid signature/,
    );
    const dropped = await forge(child, (c) => {
      delete c.act; // pretend the CI job acted itself
    });
    refused(await ex.post(exchangeForm(dropped)), 'invalid_grant', 'signature', /invalid signature/);
    const added = await forge(
      ci,
      (c) => {
        c.act = { sub: 'user:alice', iss: 'https://corp.example' };
      },
      'attacker-key',
    );
    refused(
      await ex.post(exchangeForm(added)),
      'invalid_grant',
      'foreign-chain',
      /subject_token carries an act claim .* only chains the exchange built itself are accepted/,
    );
    const otherKey = await forge(
      child,
      (c) => {
        c.exp = (c.exp as number) + 86_400; // a longer life, under a key the exchange never had
      },
      'attacker-key',
    );
    refused(await ex.post(exchangeForm(otherKey)), 'invalid_grant', 'unknown-key', /does not publish/);
    // A trusted external issuer may sign what it likes, but chains are only accepted from the exchange.
    const foreignChain = await world.agents.sign({ sub: 'agent:report-writer', act: { sub: 'user:alice' } });
    refused(
      await ex.post(exchangeForm(foreignChain)),
      'invalid_grant',
      'foreign-chain',
      /carries an act claim .* only chains the exchange built itself are accepted/,
    );
  });

  await t.test('refused: an expired parent (replay after expiry)', async () => {
    const shortLived = await ex.exchange(child, { lifetime: 1 });
    issued.push(shortLived);
    // The same request, repeated until the parent has expired (exp plus the 5 s leeway); not a timing assertion.
    const reply = await poll('the parent token to expire', async () => {
      const r = await ex.post(exchangeForm(shortLived));
      if (r.status === 200) {
        issued.push(String(r.body.access_token));
        return undefined;
      }
      return r;
    });
    refused(reply, 'invalid_grant', 'expired', /subject_token has expired/);
    const expiredAgent = await world.agents.sign({ sub: 'agent:report-writer' }, { expiresIn: -60 });
    refused(
      await ex.post(exchangeForm(ci, { actor: expiredAgent, resources: [ordersDb], scope: 'db:read' })),
      'invalid_grant',
      'expired',
      /actor_token has expired/,
    );
  });

  await t.test("refused: an actor the subject token's may_act does not name", async () => {
    // The CI job offers its work to one agent only: a token for the exchange itself, naming that agent.
    const offer = await ex.exchange(ci, {
      audiences: [ex.issuer],
      resources: [ordersDb],
      mayAct: { sub: 'agent:report-writer', iss: world.agents.issuer },
    });
    issued.push(offer);
    assert.deepEqual(claimsOf(offer).may_act, { sub: 'agent:report-writer', iss: world.agents.issuer });
    const intruder = await world.agents.sign({ sub: 'agent:intruder' });
    refused(
      await ex.post(exchangeForm(offer, { actor: intruder, scope: 'db:read' })),
      'unauthorized_client',
      'may-act-mismatch',
      /may_act names agent:report-writer .*, not agent:intruder/,
    );
    const accepted = await ex.exchange(offer, { actor: agentToken, scope: 'db:read' });
    issued.push(accepted);
    assert.equal((claimsOf(accepted).act as { sub: string }).sub, 'agent:report-writer');
  });

  await t.test(
    'refused: a delegated token presented as an actor token (a delegate hiding behind its principal)',
    async () => {
      // The agent holds `child` (sub = the CI job): as an actor token it would make the CI job the actor.
      const narrowedCi = await ex.exchange(ci, { resources: [ordersDb] });
      issued.push(narrowedCi);
      refused(
        await ex.post(exchangeForm(narrowedCi, { actor: child })),
        'invalid_grant',
        'actor-is-delegated',
        /actor_token was issued by the token exchange; an actor presents its own token/,
      );
    },
  );

  await t.test('refused: an actor no DelegationPolicy rule names', async () => {
    refused(
      await ex.post(exchangeForm(ci, { actor: scriptToken })),
      'unauthorized_client',
      'no-delegation-rule',
      /no DelegationPolicy rule lets system:serviceaccount:.*:ci-runner \(kind ci, .*\) delegate to script:etl \(kind script/,
    );
  });

  await t.test('refused: a token from an untrusted issuer, for another audience, not yet valid', async () => {
    const stranger = await startOidcIssuer();
    t.after(() => stranger.close());
    refused(
      await ex.post(exchangeForm(await stranger.sign({ sub: 'agent:report-writer' }))),
      'invalid_grant',
      'untrusted-issuer',
      /subject_token issuer "https:\/\/127\.0\.0\.1:\d+" is not trusted/,
    );
    refused(
      await ex.post(exchangeForm(ci, { actor: await stranger.sign({ sub: 'agent:report-writer' }) })),
      'invalid_grant',
      'untrusted-issuer',
      /actor_token issuer/,
    );
    refused(
      await ex.post(exchangeForm(await world.agents.sign({ sub: 'agent:x' }, { audience: 'kubernetes' }))),
      'invalid_grant',
      'audience',
      /not meant for the token exchange/,
    );
    refused(
      await ex.post(exchangeForm(await world.agents.sign({ sub: 'agent:x' }, { notBefore: 3600 }))),
      'invalid_grant',
      'not-yet-valid',
      /not valid yet/,
    );
  });

  await t.test('refused: a pod token once its pod is gone (the TokenReview sees the binding)', async () => {
    const doomed = await exchangePod(ex.core, world.namespace);
    await ex.core.deleteNamespacedPod({ namespace: world.namespace, name: doomed.pod, gracePeriodSeconds: 0 });
    await poll(
      'the pod to be gone',
      async () =>
        await ex.core.readNamespacedPod({ namespace: world.namespace, name: doomed.pod }).then(
          () => undefined,
          () => true,
        ),
    );
    refused(await ex.post(exchangeForm(doomed.token)), 'invalid_grant', 'rejected', /rejected by the API server/);
  });

  await t.test('hostile requests get RFC 6749 errors and the endpoint keeps serving', async () => {
    const form = exchangeForm(ci);
    const cases: [string, Promise<ExchangeReply>, number, string][] = [
      ['no grant_type', ex.post({ ...form, grant_type: '' }), 400, 'invalid_request'],
      ['another grant', ex.post({ ...form, grant_type: 'client_credentials' }), 400, 'unsupported_grant_type'],
      ['two subject tokens', ex.post({ ...form, subject_token: [ci, ci] }), 400, 'invalid_request'],
      ['no subject_token_type', ex.post({ ...form, subject_token_type: '' }), 400, 'invalid_request'],
      [
        'a SAML subject',
        ex.post({ ...form, subject_token_type: 'urn:ietf:params:oauth:token-type:saml2' }),
        400,
        'invalid_request',
      ],
      ['actor without type', ex.post({ ...form, actor_token: agentToken }), 400, 'invalid_request'],
      ['type without actor', ex.post({ ...form, actor_token_type: TOKEN_TYPES.jwt }), 400, 'invalid_request'],
      [
        'a refresh token asked for',
        ex.post({ ...form, requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }),
        400,
        'invalid_request',
      ],
      ['a relative resource', ex.post({ ...form, resource: 'orders-db' }), 400, 'invalid_target'],
      ['a bad scope', ex.post({ ...form, scope: 'db:read "quoted"' }), 400, 'invalid_scope'],
      ['a negative lifetime', ex.post({ ...form, requested_lifetime: '-5' }), 400, 'invalid_request'],
      ['may_act not JSON', ex.post({ ...form, may_act: '{sub:' }), 400, 'invalid_request'],
      ['may_act without sub', ex.post({ ...form, may_act: '{"iss":"x"}' }), 400, 'invalid_request'],
      ['not a JWT', ex.post({ ...form, subject_token: 'hunter2' }), 400, 'invalid_grant'],
      [
        'alg none',
        ex.post({
          ...form,
          subject_token: `${Buffer.from('{"alg":"none"}').toString('base64url')}.${ci.split('.')[1] ?? ''}.`,
        }),
        400,
        'invalid_grant',
      ],
      ['a 20 KiB token', ex.post({ ...form, subject_token: 'a'.repeat(20_000) }), 400, 'invalid_request'],
      // One signed token, other texts (jose alone accepts them): each would carry a hash the holder never had.
      ['a padded subject token', ex.post({ ...form, subject_token: `${ci}==` }), 400, 'invalid_grant'],
      // A file's one trailing line break is not part of the token (docs/identity.md); any other whitespace is.
      ['a subject token with a trailing space', ex.post({ ...form, subject_token: `${ci} ` }), 400, 'invalid_grant'],
      ['a subject token with two line breaks', ex.post({ ...form, subject_token: `${ci}\n\n` }), 400, 'invalid_grant'],
      [
        'a padded actor token',
        ex.post(exchangeForm(ci, { actor: `${agentToken}=`, resources: [ordersDb] })),
        400,
        'invalid_grant',
      ],
      ['JSON body', ex.postRaw(JSON.stringify(form), { 'content-type': 'application/json' }), 415, 'invalid_request'],
      ['GET', ex.postRaw('', {}, 'GET'), 405, 'invalid_request'],
      [
        'a 100 KiB body',
        ex.postRaw('a='.padEnd(100_000, 'x'), { 'content-type': 'application/x-www-form-urlencoded' }),
        413,
        'invalid_request',
      ],
    ];
    for (const [name, pending, status, error] of cases) {
      const reply = await pending;
      assert.equal(reply.status, status, `${name}: ${JSON.stringify(reply.body)}`);
      assert.equal(reply.body.error, error, `${name}: ${JSON.stringify(reply.body)}`);
      assert.equal(typeof reply.body.error_description, 'string', name);
      assert.ok(!JSON.stringify(reply.body).includes(ci.slice(-20)), `${name}: the reply never echoes a token`);
    }
    const after = await ex.exchange(ci, { resources: [ordersDb] });
    issued.push(after);
  });

  await t.test("the external issuer's keys are fetched once, cached, and fetched again for a rotated key", async () => {
    const discoveries = world.agents.requests.get('/.well-known/openid-configuration') ?? 0;
    const fetches = world.agents.requests.get('/jwks') ?? 0;
    assert.equal(discoveries, 1, 'discovery once, when the TrustedIssuer was loaded');
    assert.equal(fetches, 1, 'the JWKS once; every exchange since used the cache');
    await world.agents.rotate(true);
    const rotated = await world.agents.sign({ sub: 'agent:report-writer' });
    // A key id the cache lacks makes the exchange fetch again (at most once per 10 s cooldown).
    const accepted = await poll('the rotated key to be fetched', async () => {
      const r = await ex.post(exchangeForm(ci, { actor: rotated, resources: [ordersDb], scope: 'db:read' }));
      return r.status === 200 ? String(r.body.access_token) : undefined;
    });
    issued.push(accepted);
    assert.ok((world.agents.requests.get('/jwks') ?? 0) > fetches);
    refused(
      await ex.post(exchangeForm(ci, { actor: agentToken, resources: [ordersDb], scope: 'db:read' })),
      'invalid_grant',
      'unknown-key',
      /signed with a key its issuer does not publish/,
    );
  });

  await t.test('every issued token has its record: chained, signed, and named by the token', async () => {
    const logs = await ex.logs();
    assert.ok(logs.length >= 1);
    const records: ExchangeRecord[] = logs.flatMap((l) => l.spec.records);
    assert.deepEqual(verifyExchangeChain(records), []);
    assert.equal(records[0]?.seq, 1);
    const byId = new Map(records.map((r) => [r.id, r]));
    for (const token of issued) {
      const claims = claimsOf(token);
      const link = claims[CLAIMS.exchange] as { id: string; record: string };
      const record = byId.get(link.id);
      assert.ok(record !== undefined, `record of ${link.id}`);
      assert.equal(record.hash, link.record);
      assert.equal(hashExchangeRecord(record), record.hash);
      assert.equal(record.subject.subject, claims.sub);
      assert.equal(Date.parse(record.expiresAt) / 1000, claims.exp);
    }
    // The grandchild's record leads back to the child's, and that one to the CI pod's token.
    const g = byId.get((claimsOf(grandchild)[CLAIMS.exchange] as { id: string }).id);
    const c = byId.get((claimsOf(child)[CLAIMS.exchange] as { id: string }).id);
    assert.equal(g?.parent.exchangeId, c?.id);
    assert.equal(g?.parent.exchangeRecord, c?.hash);
    assert.equal(g?.actor?.subject, 'script:etl');
    assert.equal(c?.parent.exchangeId, undefined, 'the CI pod token came from the API server, not the exchange');
    assert.equal(c?.rule, `${ex.namespace}/ci/ci-to-agents`);
    // Heads are signed by a key the exchange published in its ConfigMap (kept after rotation).
    const cm = await ex.core.readNamespacedConfigMap({ namespace: ex.namespace, name: PUBLIC_KEYS_CONFIGMAP });
    const published = parsePublished(cm.data?.[JWKS_FILE]);
    for (const log of logs) {
      const head = log.spec.head;
      assert.ok(head !== undefined);
      const key = published.find((k) => k.kid === head.keyId);
      assert.ok(key !== undefined, 'the head key is published');
      const { payload } = await compactVerify(head.signature, await importJWK(key, 'ES256'));
      const signed = JSON.parse(new TextDecoder().decode(payload)) as { typ: string; hash: string; seq: number };
      assert.equal(signed.typ, EXCHANGE_LOG_HEAD_TYPE);
      assert.equal(signed.hash, head.hash);
      assert.equal(signed.hash, log.spec.records.at(-1)?.hash);
    }
  });

  await t.test('the records are append-only: the API server refuses an edited record', async () => {
    const [log] = await ex.logs();
    assert.ok(log !== undefined);
    await assert.rejects(
      ex.custom.patchNamespacedCustomObject(
        {
          group: 'chaperone.dev',
          version: 'v1alpha1',
          namespace: ex.namespace,
          plural: 'tokenexchangelogs',
          name: log.metadata.name ?? '',
          body: [{ op: 'replace', path: '/spec/records/0/chain', value: [] }],
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.JsonPatch),
      ),
      /append-only/,
    );
  });
});

/** A second pod of the CI job's service account, and a token bound to it. */
async function exchangePod(core: k8s.CoreV1Api, namespace: string): Promise<{ pod: string; token: string }> {
  const pod = await core.createNamespacedPod({
    namespace,
    body: {
      metadata: { name: 'ci-job-doomed' },
      spec: { serviceAccountName: 'ci-runner', containers: [{ name: 'job', image: 'example.invalid/ci:1' }] },
    },
  });
  return { pod: 'ci-job-doomed', token: await podToken(core, pod, 'chaperone') };
}
