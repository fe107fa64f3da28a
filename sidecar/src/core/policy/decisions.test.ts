// Table-driven decision tests: real AccessPolicy specs compiled by the real opa binary (once per policy),
// loaded into the sidecar's PolicyEngine, and asked about real-looking commands.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessPolicySpec, CombinedDecision, PolicyCommand, SqlStatementFacts } from '@chaperone/api';
import { compilePolicy } from '@chaperone/operator/policy-compiler';
import { PolicyEngine } from './policy-engine.ts';
import type { PolicyBundle, PolicyRequest } from './policy-engine.ts';
import { DEFAULT_ISSUER, http, identity, kube, request, spec, sql, stmt } from './policy-fixtures.test-helpers.ts';

const APPROVAL = { approverGroups: ['dba'], requiredApprovals: 1, timeout: '30m', allowSelfApproval: false };
const APPROVAL_OUT = {
  approverGroups: ['dba'],
  approvers: [],
  requiredApprovals: 1,
  timeoutSeconds: 1800,
  allowSelfApproval: false,
};
const PII = {
  rule: 'team/sql/pii',
  columns: ['email', 'public.users.ssn'],
  detectors: ['email'],
  strategy: 'hash',
  // The compiler's defaults for what the rule leaves out.
  types: [],
  keepLast: 4,
  value: '',
  untraceable: 'redact',
  denyPredicates: false,
};

const POLICIES: Readonly<Record<string, AccessPolicySpec>> = {
  subjects: spec({
    subjects: [
      { issuer: 'https://issuer.a', subject: 'system:serviceaccount:ci:*' },
      { issuer: 'https://issuer.b', actor: 'user:alice@*' },
      { issuer: 'https://issuer.c', groups: ['sre-*', 'oncall'] },
      { issuer: 'https://issuer.d', actorKinds: ['human'] },
      { issuer: 'https://issuer.e', subject: 'bot-*-worker', maxDelegationDepth: 1 },
    ],
    rules: [],
    defaultDecision: 'allow',
  }),
  sql: spec({
    rules: [
      {
        name: 'deny-secrets',
        decision: 'deny',
        match: { sql: { relations: ['secret.*'] } },
        message: 'the secret schema is off limits',
      },
      { name: 'deny-sleep', decision: 'deny', match: { sql: { functions: ['pg_sleep*'] } } },
      { name: 'approve-ddl', decision: 'approve', match: { sql: { statementKinds: ['ddl'] } } },
      {
        name: 'allow-reads',
        decision: 'allow',
        match: {
          sql: {
            statementKinds: ['select', 'show', 'explain'],
            relations: ['public.*', 'reporting.daily_*'],
            sideEffects: false,
          },
        },
      },
      { name: 'allow-tx', decision: 'allow', match: { sql: { statementKinds: ['transaction', 'set'] } } },
      {
        name: 'approve-writes',
        decision: 'approve',
        wait: false,
        match: { sql: { statementKinds: ['insert', 'update', 'delete', 'merge'], relations: ['public.*'] } },
      },
    ],
    approval: APPROVAL,
    masking: [{ name: 'pii', columns: ['email', 'public.users.ssn'], detectors: ['email'], strategy: 'hash' }],
  }),
  readonly: spec({
    rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'], sideEffects: false } } }],
  }),
  k8s: spec({
    resources: { names: ['cluster'] },
    rules: [
      { name: 'deny-debug', decision: 'deny', match: { kubernetes: { nonResourceURLs: ['/debug/**'] } } },
      { name: 'metrics', decision: 'allow', match: { kubernetes: { verbs: ['get'], nonResourceURLs: ['/metrics'] } } },
      {
        name: 'deny-exec',
        decision: 'deny',
        match: { kubernetes: { resources: ['pods'], subresources: ['exec', 'attach'] } },
      },
      { name: 'deny-secrets', decision: 'deny', match: { kubernetes: { apiGroups: [''], resources: ['secrets'] } } },
      {
        name: 'keep',
        decision: 'deny',
        match: {
          kubernetes: { verbs: ['get', 'delete', 'update', 'create'], resources: ['configmaps'], names: ['keep-*'] },
        },
      },
      { name: 'read', decision: 'allow', match: { kubernetes: { verbs: ['get', 'list', 'watch'] } } },
      {
        name: 'prod-delete',
        decision: 'approve',
        match: { kubernetes: { verbs: ['delete'], namespaces: ['prod-*'], names: ['web-*'] } },
      },
      { name: 'dev', decision: 'allow', match: { kubernetes: { namespaces: ['dev'], apiGroups: ['apps', ''] } } },
      {
        name: 'named-services',
        decision: 'allow',
        match: { kubernetes: { verbs: ['delete'], resources: ['services'], names: ['tmp-*'] } },
      },
    ],
    approval: APPROVAL,
  }),
  // RBAC's reading of resources for allow rules; an eviction deletes its pod for deny rules.
  'k8s-subresources': spec({
    resources: { names: ['cluster'] },
    rules: [
      { name: 'no-pod-delete', decision: 'deny', match: { kubernetes: { verbs: ['delete'], resources: ['pods'] } } },
      {
        name: 'pods',
        decision: 'allow',
        match: { kubernetes: { verbs: ['get', 'create', 'patch'], resources: ['pods'] } },
      },
      {
        name: 'logs',
        decision: 'allow',
        match: { kubernetes: { verbs: ['get'], resources: ['pods'], subresources: ['log'] } },
      },
      { name: 'updates', decision: 'allow', match: { kubernetes: { verbs: ['update'], resources: ['*'] } } },
    ],
    defaultDecision: 'deny',
  }),
  http: spec({
    resources: { selector: { matchLabels: { tier: 'api' } } },
    rules: [
      { name: 'deny-admin', decision: 'deny', match: { http: { paths: ['/admin/**'] } } },
      { name: 'users', decision: 'allow', match: { http: { methods: ['GET', 'HEAD'], paths: ['/v1/users/*'] } } },
      { name: 'reports', decision: 'allow', match: { http: { methods: ['get'], paths: ['/v1/reports/**/summary'] } } },
      { name: 'post', decision: 'approve', match: { http: { methods: ['POST'], paths: ['/v1/**'] } } },
    ],
    approval: APPROVAL,
  }),
  'http-params': spec({
    resources: { selector: { matchLabels: { tier: 'api' } } },
    rules: [
      { name: 'no-admin-role', decision: 'deny', match: { http: { query: { role: ['admin'] } } } },
      { name: 'no-debug-header', decision: 'deny', match: { http: { headers: { 'X-Debug': ['*'] } } } },
      {
        name: 'search',
        decision: 'allow',
        match: { http: { methods: ['GET'], paths: ['/search'], hosts: ['API.example.com'], query: { q: ['safe*'] } } },
      },
    ],
  }),
  time: spec({
    rules: [
      {
        name: 'business-hours',
        decision: 'allow',
        match: {},
        when: {
          timeWindows: [
            { days: ['Mon', 'Tue', 'Wed', 'Thu', 'Fri'], start: '09:00', end: '17:00', timeZone: 'Europe/Berlin' },
          ],
        },
      },
      {
        name: 'night',
        decision: 'approve',
        match: {},
        when: { timeWindows: [{ days: ['Sat'], start: '22:00', end: '02:00', timeZone: 'UTC' }] },
      },
    ],
    approval: APPROVAL,
  }),
  defaultAllow: spec({
    rules: [{ name: 'no-ddl', decision: 'deny', match: { sql: { statementKinds: ['ddl'] } } }],
    defaultDecision: 'allow',
  }),
  rego: spec({
    rules: [{ name: 'all', decision: 'allow', match: {} }],
    approval: APPROVAL,
    rego: [
      'package chaperone.custom',
      '',
      'deny contains "application evil is blocked" if input.session.applicationName == "evil"',
      '',
      'deny contains msg if {',
      '\tsome st in input.command.statements',
      '\tst.kind == "delete"',
      '\tcount(st.relations) > 1',
      '\tmsg := "multi-table delete"',
      '}',
      '',
      'approve contains "exports need approval" if {',
      '\tsome st in input.command.statements',
      '\tst.kind == "copy-to"',
      '}',
      '',
    ].join('\n'),
  }),
  allowAll: spec({ rules: [{ name: 'all', decision: 'allow', match: {} }] }),
  approveInserts: spec({
    rules: [{ name: 'inserts', decision: 'approve', match: { sql: { statementKinds: ['insert'] } } }],
    defaultDecision: 'allow',
    approval: APPROVAL,
  }),
  denyDdl: spec({
    rules: [{ name: 'ddl', decision: 'deny', match: { sql: { statementKinds: ['ddl'] } } }],
    defaultDecision: 'allow',
  }),
  otherIssuer: spec({
    subjects: [{ issuer: 'https://elsewhere' }],
    rules: [{ name: 'all', decision: 'deny', match: {} }],
  }),
  otherResource: spec({ resources: { names: ['other-db'] }, rules: [{ name: 'all', decision: 'deny', match: {} }] }),
  chain: spec({
    rules: [
      {
        name: 'no-ai-writes',
        decision: 'deny',
        match: { sql: { sideEffects: true } },
        when: { anyActor: { kinds: ['ai-agent'] } },
      },
      {
        name: 'scripts-no-ddl',
        decision: 'deny',
        match: { sql: { statementKinds: ['ddl'] } },
        when: { actor: { kinds: ['script'], issuers: ['https://spire.example'] } },
      },
      {
        name: 'deep-reads-only',
        decision: 'deny',
        match: { sql: { sideEffects: true } },
        when: { minDelegationDepth: 3 },
      },
      {
        name: 'writes-need-scope',
        decision: 'allow',
        match: { sql: { sideEffects: true } },
        when: { scopes: ['db:write'] },
      },
      { name: 'reads', decision: 'allow', match: { sql: { sideEffects: false } } },
    ],
  }),
};

interface Expect {
  readonly decision: CombinedDecision['decision'];
  readonly rule?: string;
  readonly policy?: string;
  readonly reason?: RegExp;
  readonly message?: string;
  readonly masking?: readonly unknown[];
  readonly approval?: unknown;
}

interface Case {
  readonly name: string;
  readonly policies: readonly string[];
  /** A bare statement stands for a one-statement SQL command. */
  readonly command: PolicyCommand | SqlStatementFacts;
  readonly req?: Partial<PolicyRequest>;
  /** ISO instant; default a Wednesday 10:00 UTC. */
  readonly at?: string;
  readonly expect: Expect;
}

const K8S = { resource: { name: 'cluster', namespace: 'team', type: 'kubernetes' as const, labels: {} } };
const API = { resource: { name: 'payments', namespace: 'team', type: 'http' as const, labels: { tier: 'api' } } };
const sel = stmt('select', ['public.orders']);

const CASES: readonly Case[] = [
  // Subjects
  {
    name: 'subject glob with issuer',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.a' }) },
    expect: { decision: 'allow', rule: 'default' },
  },
  {
    name: 'subject glob: wrong issuer is not covered',
    policies: ['subjects'],
    command: sel,
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  {
    name: 'subject glob: other namespace not covered',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.a', subject: 'system:serviceaccount:prod:x' }) },
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  {
    name: 'actor in the chain',
    policies: ['subjects'],
    command: sel,
    req: {
      identity: identity({
        issuer: 'https://issuer.b',
        subject: 'agent',
        chain: [{ subject: 'job' }, { subject: 'user:alice@example.com' }],
      }),
    },
    expect: { decision: 'allow' },
  },
  {
    name: 'actor absent from the chain',
    policies: ['subjects'],
    command: sel,
    req: {
      identity: identity({
        issuer: 'https://issuer.b',
        subject: 'user:alice@example.com',
        chain: [{ subject: 'job' }],
      }),
    },
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  {
    name: 'group glob',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.c', groups: ['x', 'sre-eu'] }) },
    expect: { decision: 'allow' },
  },
  {
    name: 'group literal',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.c', groups: ['oncall'] }) },
    expect: { decision: 'allow' },
  },
  {
    name: 'no matching group',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.c', groups: ['dev'] }) },
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  {
    name: 'actor kind',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.d', kind: 'human' }) },
    expect: { decision: 'allow' },
  },
  {
    name: 'other actor kind',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.d', kind: 'ai-agent' }) },
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  {
    name: 'delegation depth within limit (glob in the middle)',
    policies: ['subjects'],
    command: sel,
    req: { identity: identity({ issuer: 'https://issuer.e', subject: 'bot-7-worker', chain: [{ subject: 'ci' }] }) },
    expect: { decision: 'allow' },
  },
  {
    name: 'delegation depth over limit',
    policies: ['subjects'],
    command: sel,
    req: {
      identity: identity({
        issuer: 'https://issuer.e',
        subject: 'bot-7-worker',
        chain: [{ subject: 'ci' }, { subject: 'agent' }],
      }),
    },
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  // SQL
  {
    name: 'select on public is allowed, with masking',
    policies: ['sql'],
    command: sql(sel),
    expect: { decision: 'allow', rule: 'allow-reads', masking: [PII] },
  },
  {
    name: 'relation glob in a second schema',
    policies: ['sql'],
    command: sql(stmt('select', ['reporting.daily_sales'])),
    expect: { decision: 'allow', rule: 'allow-reads' },
  },
  {
    name: 'allow rule needs every relation to match',
    policies: ['sql'],
    command: sql(stmt('select', ['public.a', 'audit.log'])),
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'deny rule matches any relation, with message',
    policies: ['sql'],
    command: sql(stmt('select', ['public.a', 'secret.keys'])),
    expect: {
      decision: 'deny',
      rule: 'deny-secrets',
      message: 'the secret schema is off limits',
      masking: [],
      reason: /statement 1 \(select\)/,
    },
  },
  {
    name: 'function glob denies',
    policies: ['sql'],
    command: sql(stmt('select', [], ['pg_catalog.pg_sleep_for'])),
    expect: { decision: 'deny', rule: 'deny-sleep' },
  },
  {
    name: 'select without relations',
    policies: ['sql'],
    command: sql(stmt('select', [], ['pg_catalog.now'])),
    expect: { decision: 'allow', rule: 'allow-reads' },
  },
  {
    name: 'sideEffects true does not match a read rule',
    policies: ['sql'],
    command: sql(stmt('select', ['public.seq'], ['pg_catalog.nextval'], true)),
    expect: { decision: 'deny', rule: 'default' },
  },
  { name: 'show', policies: ['sql'], command: sql(stmt('show')), expect: { decision: 'allow', rule: 'allow-reads' } },
  {
    name: 'explain',
    policies: ['sql'],
    command: sql(stmt('explain', ['public.orders'])),
    expect: { decision: 'allow', rule: 'allow-reads' },
  },
  {
    name: 'transaction',
    policies: ['sql'],
    command: sql(stmt('transaction')),
    expect: { decision: 'allow', rule: 'allow-tx' },
  },
  { name: 'set', policies: ['sql'], command: sql(stmt('set')), expect: { decision: 'allow', rule: 'allow-tx' } },
  {
    name: 'ddl needs approval',
    policies: ['sql'],
    command: sql(stmt('ddl', ['public.t'], [], true)),
    expect: { decision: 'approve', rule: 'approve-ddl', approval: APPROVAL_OUT, masking: [PII] },
  },
  {
    name: 'insert needs approval, answered at once (wait: false on its rule only)',
    policies: ['sql'],
    command: sql(stmt('insert', ['public.orders'], [], true)),
    expect: { decision: 'approve', rule: 'approve-writes', approval: { ...APPROVAL_OUT, wait: false } },
  },
  {
    name: 'update needs approval',
    policies: ['sql'],
    command: sql(stmt('update', ['public.orders'], [], true)),
    expect: { decision: 'approve', rule: 'approve-writes' },
  },
  {
    name: 'delete outside public is denied',
    policies: ['sql'],
    command: sql(stmt('delete', ['audit.log'], [], true)),
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'merge',
    policies: ['sql'],
    command: sql(stmt('merge', ['public.a', 'public.b'], [], true)),
    expect: { decision: 'approve', rule: 'approve-writes' },
  },
  {
    name: 'copy-to falls to default',
    policies: ['sql'],
    command: sql(stmt('copy-to', ['public.orders'])),
    expect: { decision: 'deny', rule: 'default', reason: /default decision is deny/ },
  },
  {
    name: 'other statement kinds fall to default',
    policies: ['sql'],
    command: sql(stmt('do', [], [], true)),
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'empty statement list gets the default',
    policies: ['sql'],
    command: sql(),
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'multi-statement: strictest statement wins',
    policies: ['sql'],
    command: sql(sel, stmt('insert', ['public.orders'], [], true), stmt('select', ['secret.keys'])),
    expect: { decision: 'deny', rule: 'deny-secrets', reason: /statement 3 \(select\)/ },
  },
  {
    name: 'multi-statement: read-only policy denies read+write',
    policies: ['readonly'],
    command: sql(stmt('select', ['public.a']), stmt('insert', ['public.a'], [], true)),
    expect: { decision: 'deny', rule: 'default', reason: /default/ },
  },
  {
    name: 'multi-statement: all reads allowed',
    policies: ['readonly'],
    command: sql(stmt('select', ['public.a']), stmt('select', ['public.b'])),
    expect: { decision: 'allow', rule: 'reads' },
  },
  {
    name: 'multi-statement: approve beats allow',
    policies: ['sql'],
    command: sql(sel, stmt('ddl', [], [], true)),
    expect: { decision: 'approve', rule: 'approve-ddl' },
  },
  {
    name: 'default allow',
    policies: ['defaultAllow'],
    command: sql(stmt('delete', ['x.y'], [], true)),
    expect: { decision: 'allow', rule: 'default' },
  },
  {
    name: 'default allow with a deny rule',
    policies: ['defaultAllow'],
    command: sql(stmt('ddl')),
    expect: { decision: 'deny', rule: 'no-ddl' },
  },
  // Kubernetes
  {
    name: 'k8s exec subresource denied',
    policies: ['k8s'],
    command: kube({ verb: 'create', subresource: 'exec', name: 'web-1' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'deny-exec' },
  },
  {
    name: 'k8s core secrets denied',
    policies: ['k8s'],
    command: kube({ resource: 'secrets' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'deny-secrets' },
  },
  {
    name: 'k8s secrets in another group do not match',
    policies: ['k8s'],
    command: kube({ apiGroup: 'example.com', resource: 'secrets' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'read' },
  },
  {
    name: 'k8s read verbs',
    policies: ['k8s'],
    command: kube({ verb: 'list', resource: 'deployments', apiGroup: 'apps', namespace: 'prod' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'read' },
  },
  {
    name: 'k8s delete in prod by name needs approval',
    policies: ['k8s'],
    command: kube({ verb: 'delete', namespace: 'prod-eu', name: 'web-2' }),
    req: K8S,
    expect: { decision: 'approve', rule: 'prod-delete' },
  },
  {
    name: 'k8s delete in prod, other name',
    policies: ['k8s'],
    command: kube({ verb: 'delete', namespace: 'prod-eu', name: 'db-0' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'k8s dev namespace and group',
    policies: ['k8s'],
    command: kube({ verb: 'patch', apiGroup: 'apps', resource: 'deployments', namespace: 'dev' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'dev' },
  },
  {
    name: 'k8s dev namespace, other group',
    policies: ['k8s'],
    command: kube({ verb: 'patch', apiGroup: 'batch', resource: 'jobs', namespace: 'dev' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  // A deny or approve rule with names covers the requests that can reach those names (render-rego.ts).
  {
    name: 'k8s deny by name covers deletecollection (no name)',
    policies: ['k8s'],
    command: kube({ verb: 'deletecollection', resource: 'configmaps', namespace: 'dev', name: '' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'keep' },
  },
  {
    name: 'k8s deny of get by name covers list and watch of the collection',
    policies: ['k8s'],
    command: kube({ verb: 'watch', resource: 'configmaps', namespace: 'dev', name: '' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'keep' },
  },
  {
    name: 'k8s deny of update by name covers patch',
    policies: ['k8s'],
    command: kube({ verb: 'patch', resource: 'configmaps', namespace: 'dev', name: 'keep-me' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'keep' },
  },
  {
    name: 'k8s deny by name covers a create (the API server reads its name from the body)',
    policies: ['k8s'],
    command: kube({ verb: 'create', resource: 'configmaps', namespace: 'dev', name: '' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'keep' },
  },
  {
    name: 'k8s deny by name still leaves other names alone',
    policies: ['k8s'],
    command: kube({ verb: 'patch', resource: 'configmaps', namespace: 'dev', name: 'other' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'dev' },
  },
  {
    name: 'k8s approve by name covers deletecollection',
    policies: ['k8s'],
    command: kube({ verb: 'deletecollection', namespace: 'prod-eu', name: '' }),
    req: K8S,
    expect: { decision: 'approve', rule: 'prod-delete' },
  },
  {
    name: 'k8s allow by name stays exact: deletecollection is not allowed by a delete rule',
    policies: ['k8s'],
    command: kube({ verb: 'deletecollection', resource: 'services', namespace: 'x', name: '' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'k8s allow by name stays exact: a named delete',
    policies: ['k8s'],
    command: kube({ verb: 'delete', resource: 'services', namespace: 'x', name: 'tmp-1' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'named-services' },
  },
  {
    name: 'k8s policy does not cover a sql command',
    policies: ['k8s'],
    command: sql(sel),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  // Kubernetes non-resource URLs
  {
    name: 'k8s /metrics allowed by its nonResourceURLs rule',
    policies: ['k8s'],
    command: kube({ verb: 'get', resource: '', namespace: '', nonResourcePath: '/metrics' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'metrics' },
  },
  {
    name: 'k8s a resource rule (verbs get) does not match a non-resource request',
    policies: ['k8s'],
    command: kube({ verb: 'get', resource: '', namespace: '', nonResourcePath: '/logs/kube-apiserver.log' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'k8s /debug/** denies deep paths',
    policies: ['k8s'],
    command: kube({ verb: 'get', resource: '', namespace: '', nonResourcePath: '/debug/pprof/profile' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'deny-debug' },
  },
  {
    name: 'k8s a nonResourceURLs rule does not match a resource request',
    policies: ['k8s'],
    command: kube({ verb: 'get', resource: 'pods', namespace: 'x' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'read' },
  },
  {
    name: 'k8s an allow rule naming pods allows the pods themselves',
    policies: ['k8s-subresources'],
    command: kube({ verb: 'create' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'pods' },
  },
  {
    name: 'k8s an allow rule naming pods does not allow pods/exec',
    policies: ['k8s-subresources'],
    command: kube({ verb: 'create', subresource: 'exec', name: 'web-1' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'k8s an allow rule naming pods does not allow pods/ephemeralcontainers',
    policies: ['k8s-subresources'],
    command: kube({ verb: 'patch', subresource: 'ephemeralcontainers', name: 'web-1' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'k8s an allow rule naming pods does not allow pods/proxy',
    policies: ['k8s-subresources'],
    command: kube({ verb: 'get', subresource: 'proxy', name: 'web-1' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'k8s an allow rule naming pods/log allows it',
    policies: ['k8s-subresources'],
    command: kube({ verb: 'get', subresource: 'log', name: 'web-1' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'logs' },
  },
  {
    name: 'k8s an allow rule naming * allows subresources',
    policies: ['k8s-subresources'],
    command: kube({ verb: 'update', apiGroup: 'apps', resource: 'deployments', subresource: 'scale', name: 'web' }),
    req: K8S,
    expect: { decision: 'allow', rule: 'updates' },
  },
  {
    name: 'k8s a deny rule for deleting pods covers an eviction',
    policies: ['k8s-subresources'],
    command: kube({ verb: 'create', subresource: 'eviction', name: 'web-1' }),
    req: K8S,
    expect: { decision: 'deny', rule: 'no-pod-delete' },
  },
  // HTTP host, query and headers
  {
    name: 'http query: every reading allowed',
    policies: ['http-params'],
    command: http('GET', '/search', { query: { q: ['safe one'] } }),
    req: API,
    expect: { decision: 'allow', rule: 'search' },
  },
  {
    name: 'http query: one reading not allowed fails the allow rule',
    policies: ['http-params'],
    command: http('GET', '/search', { query: { q: ['safe one', 'drop table'] } }),
    req: API,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'http query: a missing parameter does not match',
    policies: ['http-params'],
    command: http('GET', '/search'),
    req: API,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'http query: any reading matching a deny rule denies',
    policies: ['http-params'],
    command: http('GET', '/search', { query: { q: ['safe'], role: ['user', 'admin'] } }),
    req: API,
    expect: { decision: 'deny', rule: 'no-admin-role' },
  },
  {
    name: 'http headers: names compared case-insensitively',
    policies: ['http-params'],
    command: http('GET', '/search', { query: { q: ['safe'] }, headers: { 'x-debug': ['1'] } }),
    req: API,
    expect: { decision: 'deny', rule: 'no-debug-header' },
  },
  {
    name: 'http hosts: another host does not match',
    policies: ['http-params'],
    command: http('GET', '/search', { query: { q: ['safe'] }, host: 'evil.example.com' }),
    req: API,
    expect: { decision: 'deny', rule: 'default' },
  },
  // HTTP
  {
    name: 'http /admin/** covers /admin',
    policies: ['http'],
    command: http('GET', '/admin'),
    req: API,
    expect: { decision: 'deny', rule: 'deny-admin' },
  },
  {
    name: 'http /admin/** covers deep paths',
    policies: ['http'],
    command: http('GET', '/admin/a/b/c'),
    req: API,
    expect: { decision: 'deny', rule: 'deny-admin' },
  },
  {
    name: 'http /administrator is not /admin/**',
    policies: ['http'],
    command: http('GET', '/administrator'),
    req: API,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'http * within a segment',
    policies: ['http'],
    command: http('GET', '/v1/users/42'),
    req: API,
    expect: { decision: 'allow', rule: 'users' },
  },
  {
    name: 'http * does not cross segments',
    policies: ['http'],
    command: http('GET', '/v1/users/42/keys'),
    req: API,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'http method case-insensitive',
    policies: ['http'],
    command: http('head', '/v1/users/42'),
    req: API,
    expect: { decision: 'allow', rule: 'users' },
  },
  {
    name: 'http ** in the middle, zero segments',
    policies: ['http'],
    command: http('GET', '/v1/reports/summary'),
    req: API,
    expect: { decision: 'allow', rule: 'reports' },
  },
  {
    name: 'http ** in the middle, many segments',
    policies: ['http'],
    command: http('GET', '/v1/reports/2025/q1/summary'),
    req: API,
    expect: { decision: 'allow', rule: 'reports' },
  },
  {
    name: 'http POST needs approval',
    policies: ['http'],
    command: http('POST', '/v1/payments'),
    req: API,
    expect: { decision: 'approve', rule: 'post', approval: APPROVAL_OUT },
  },
  {
    name: 'http DELETE falls to default',
    policies: ['http'],
    command: http('DELETE', '/v1/users/42'),
    req: API,
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'http selector: resource without the label is not covered',
    policies: ['http'],
    command: http('GET', '/v1/users/1'),
    req: { resource: { ...API.resource, labels: { tier: 'web' } } },
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  // Time windows (January: Berlin is UTC+1)
  {
    name: 'inside the business window (Berlin)',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-15T09:30:00Z',
    expect: { decision: 'allow', rule: 'business-hours' },
  },
  {
    name: 'non-UTC zone: 08:30 UTC is 09:30 in Berlin',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-15T08:30:00Z',
    expect: { decision: 'allow', rule: 'business-hours' },
  },
  {
    name: 'before the window in Berlin',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-15T07:59:00Z',
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'end is exclusive',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-15T16:00:00Z',
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'weekday filter excludes Saturday',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-18T10:00:00Z',
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'crossing midnight: before midnight',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-18T23:15:00Z',
    expect: { decision: 'approve', rule: 'night' },
  },
  {
    name: 'crossing midnight: after midnight belongs to Saturday',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-19T01:59:00Z',
    expect: { decision: 'approve', rule: 'night' },
  },
  {
    name: 'crossing midnight: Saturday early morning is Friday night',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-18T01:00:00Z',
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'crossing midnight: end is exclusive',
    policies: ['time'],
    command: sql(sel),
    at: '2025-01-19T02:00:00Z',
    expect: { decision: 'deny', rule: 'default' },
  },
  // Raw Rego
  {
    name: 'raw rego deny',
    policies: ['rego'],
    command: sql(sel),
    req: { session: { id: 's', applicationName: 'evil', clientAddress: '', inTransaction: false } },
    expect: { decision: 'deny', rule: 'rego', reason: /application evil is blocked/ },
  },
  {
    name: 'raw rego deny with input facts',
    policies: ['rego'],
    command: sql(stmt('delete', ['public.a', 'public.b'], [], true)),
    expect: { decision: 'deny', rule: 'rego', reason: /multi-table delete/ },
  },
  {
    name: 'raw rego approve turns allow into approve',
    policies: ['rego'],
    command: sql(stmt('copy-to', ['public.a'])),
    expect: { decision: 'approve', rule: 'rego', reason: /exports need approval/, approval: APPROVAL_OUT },
  },
  {
    name: 'raw rego silent: declarative allow',
    policies: ['rego'],
    command: sql(sel),
    expect: { decision: 'allow', rule: 'all' },
  },
  // Several policies
  {
    name: 'combined: all allow',
    policies: ['allowAll', 'approveInserts', 'denyDdl', 'otherIssuer'],
    command: sql(sel),
    expect: { decision: 'allow', policy: 'team/allowAll' },
  },
  {
    name: 'combined: approve beats allow',
    policies: ['allowAll', 'approveInserts', 'denyDdl'],
    command: sql(stmt('insert', ['public.a'])),
    expect: { decision: 'approve', policy: 'team/approveInserts', rule: 'inserts' },
  },
  {
    name: 'combined: deny beats approve',
    policies: ['allowAll', 'approveInserts', 'denyDdl'],
    command: sql(stmt('insert', ['public.a']), stmt('ddl')),
    expect: { decision: 'deny', policy: 'team/denyDdl', rule: 'ddl', masking: [] },
  },
  {
    name: 'combined: non-applicable deny ignored',
    policies: ['allowAll', 'otherIssuer', 'otherResource'],
    command: sql(stmt('ddl')),
    expect: { decision: 'allow', policy: 'team/allowAll' },
  },
  {
    name: 'combined: no applicable policy denies',
    policies: ['otherIssuer', 'otherResource'],
    command: sql(sel),
    expect: { decision: 'deny', rule: 'no-policy', policy: '' },
  },
  {
    name: 'no bundles at all denies',
    policies: [],
    command: sql(sel),
    expect: { decision: 'deny', rule: 'no-policy' },
  },
  // The verified delegation chain (when.actor, when.anyActor, when.minDelegationDepth, when.scopes)
  {
    name: 'chain: an undelegated CI subject writes',
    policies: ['chain'],
    command: stmt('insert', ['public.orders'], [], true),
    req: { identity: identity({ kind: 'ci' }) },
    expect: { decision: 'allow', rule: 'writes-need-scope' },
  },
  {
    name: 'chain: an AI agent as the current actor may not write',
    policies: ['chain'],
    command: stmt('insert', ['public.orders'], [], true),
    req: { identity: identity({ kind: 'ci', chain: [{ subject: 'agent:writer', kind: 'ai-agent' }] }) },
    expect: { decision: 'deny', rule: 'no-ai-writes' },
  },
  {
    name: 'chain: an AI agent as an earlier actor still forbids writes (past RFC 8693 §4.1)',
    policies: ['chain'],
    command: stmt('update', ['public.orders'], [], true),
    req: {
      identity: identity({
        kind: 'ci',
        chain: [
          { subject: 'script:etl', kind: 'script' },
          { subject: 'agent:writer', kind: 'ai-agent' },
        ],
      }),
    },
    expect: { decision: 'deny', rule: 'no-ai-writes' },
  },
  {
    name: 'chain: an AI agent as the subject itself is a party of the chain',
    policies: ['chain'],
    command: stmt('insert', ['public.orders'], [], true),
    req: { identity: identity({ kind: 'ai-agent' }) },
    expect: { decision: 'deny', rule: 'no-ai-writes' },
  },
  {
    name: 'chain: the AI agent may still read',
    policies: ['chain'],
    command: sel,
    req: { identity: identity({ chain: [{ subject: 'agent:writer', kind: 'ai-agent' }] }) },
    expect: { decision: 'allow', rule: 'reads' },
  },
  {
    name: 'chain: when.actor matches the current actor only',
    policies: ['chain'],
    command: stmt('ddl', ['public.t'], [], true),
    req: {
      identity: identity({
        chain: [
          { subject: 'script:etl', kind: 'script', issuer: 'https://spire.example' },
          { subject: 'human:bob', kind: 'human' },
        ],
      }),
    },
    expect: { decision: 'deny', rule: 'scripts-no-ddl' },
  },
  {
    name: 'chain: an earlier script is not the current actor',
    policies: ['chain'],
    command: stmt('ddl', ['public.t'], [], true),
    req: {
      identity: identity({
        chain: [
          { subject: 'human:bob', kind: 'human' },
          { subject: 'script:etl', kind: 'script', issuer: 'https://spire.example' },
        ],
      }),
    },
    expect: { decision: 'allow', rule: 'writes-need-scope' },
  },
  {
    name: 'chain: when.actor needs every set field of the same party (issuer differs)',
    policies: ['chain'],
    command: stmt('ddl', ['public.t'], [], true),
    req: { identity: identity({ chain: [{ subject: 'script:etl', kind: 'script', issuer: 'https://other' }] }) },
    expect: { decision: 'allow', rule: 'writes-need-scope' },
  },
  {
    name: 'chain: depth 3 is read-only',
    policies: ['chain'],
    command: stmt('delete', ['public.t'], [], true),
    req: {
      identity: identity({ chain: [{ subject: 'a', kind: 'human' }, { subject: 'b' }, { subject: 'c' }] }),
    },
    expect: { decision: 'deny', rule: 'deep-reads-only' },
  },
  {
    name: 'chain: a token narrowed to read scopes gets no write rule',
    policies: ['chain'],
    command: stmt('insert', ['public.t'], [], true),
    req: { identity: identity({ scopes: ['db:read'] }) },
    expect: { decision: 'deny', rule: 'default' },
  },
  {
    name: 'chain: a token narrowed to the write scope writes',
    policies: ['chain'],
    command: stmt('insert', ['public.t'], [], true),
    req: { identity: identity({ scopes: ['db:read', 'db:write'] }) },
    expect: { decision: 'allow', rule: 'writes-need-scope' },
  },
  {
    name: 'chain: an identity without an acting party is malformed',
    policies: ['chain'],
    command: sel,
    req: {
      identity: {
        subject: 'x',
        issuer: DEFAULT_ISSUER,
        groups: [],
        chain: [],
        depth: 0,
      } as unknown as PolicyRequest['identity'],
    },
    expect: { decision: 'deny', rule: 'invalid-input', reason: /identity is malformed/ },
  },
  {
    name: 'chain: scopes that are not a list are malformed',
    policies: ['chain'],
    command: sel,
    req: { identity: { ...identity(), scopes: 'db:write' } as unknown as PolicyRequest['identity'] },
    expect: { decision: 'deny', rule: 'invalid-input', reason: /identity is malformed/ },
  },
  // Malformed input (the engine sends what it is given; the policy fails closed)
  {
    name: 'unknown command type',
    policies: ['allowAll'],
    command: { type: 'ftp' } as unknown as PolicyCommand,
    expect: { decision: 'deny', rule: 'invalid-input', reason: /command is malformed/ },
  },
  {
    name: 'statement without sideEffects',
    policies: ['allowAll'],
    command: {
      type: 'sql',
      statements: [{ kind: 'select', relations: [], functions: [] }],
    } as unknown as PolicyCommand,
    expect: { decision: 'deny', rule: 'invalid-input' },
  },
  {
    name: 'statements not a list',
    policies: ['allowAll'],
    command: { type: 'sql', statements: 'select 1' } as unknown as PolicyCommand,
    expect: { decision: 'deny', rule: 'invalid-input' },
  },
  {
    name: 'kubernetes request missing a field',
    policies: ['allowAll'],
    command: { type: 'kubernetes', verb: 'get' } as unknown as PolicyCommand,
    expect: { decision: 'deny', rule: 'invalid-input' },
  },
  {
    name: 'identity without groups',
    policies: ['allowAll'],
    command: sql(sel),
    req: {
      identity: { subject: 'x', issuer: DEFAULT_ISSUER, chain: [], depth: 0 } as unknown as PolicyRequest['identity'],
    },
    expect: { decision: 'deny', rule: 'invalid-input', reason: /identity is malformed/ },
  },
];

const bundles = new Map<string, PolicyBundle>();

function asSqlCommand(c: PolicyCommand | SqlStatementFacts): PolicyCommand {
  return 'type' in c ? c : sql(c);
}

describe('policy decisions (compiled with opa, evaluated in wasm)', () => {
  before(async () => {
    await Promise.all(
      Object.entries(POLICIES).map(async ([name, s]) => {
        const r = await compilePolicy({ namespace: 'team', name, spec: s });
        if (!r.ok) throw new Error(`${name}: ${JSON.stringify(r.errors)}`);
        bundles.set(name, { wasm: r.wasm, manifest: r.manifest, digest: r.digest });
      }),
    );
  });

  for (const c of CASES) {
    it(c.name, async () => {
      let now = Date.parse(c.at ?? '2025-01-15T10:00:00Z');
      const engine = new PolicyEngine({ clock: () => now });
      await engine.replaceBundles(c.policies.map((p) => bundles.get(p) ?? assert.fail(`no bundle ${p}`)));
      const req = request(asSqlCommand(c.command), c.req);
      const got = engine.decide(req);
      const e = c.expect;
      assert.equal(got.decision, e.decision, JSON.stringify(got));
      if (e.rule !== undefined) assert.equal(got.rule, e.rule, JSON.stringify(got));
      if (e.policy !== undefined) assert.equal(got.policy, e.policy);
      if (e.reason !== undefined) assert.match(got.reasons.join('\n'), e.reason);
      if (e.message !== undefined) assert.equal(got.message, e.message);
      if (e.masking !== undefined) assert.deepEqual(got.masking, e.masking);
      if (e.approval !== undefined) assert.deepEqual(got.approval, e.approval);
      if (e.decision !== 'approve') assert.equal(got.approval, undefined);
      // The cached answer is the same answer.
      now += 1;
      assert.deepEqual(engine.decide(req, 'fp'), got);
      assert.deepEqual(engine.decide(req, 'fp'), got);
    });
  }
});
