// The CRDs against the real API server: established, examples accepted, invalid objects rejected with
// the right field path, transition rules enforced, printer columns and the chaperone category in kubectl.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { GROUP, VERSION, KINDS } from '@chaperone/api';
import { createTestNamespace, kubeConfig, kubectl, statusOf } from './harness/kube.ts';
import { REPO_ROOT } from './harness/tools.ts';

const kc = kubeConfig();
const custom = kc.makeApiClient(k8s.CustomObjectsApi);
const extensions = kc.makeApiClient(k8s.ApiextensionsV1Api);

type Obj = Record<string, unknown> & { metadata?: { name?: string } };

function pluralOf(kind: string): string {
  const def = KINDS.find((k) => k.kind === kind);
  if (def === undefined) throw new Error(`unknown kind ${kind}`);
  return def.plural;
}

async function create(namespace: string, body: Obj): Promise<Obj> {
  return (await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: pluralOf(String(body.kind)),
    body,
  })) as Obj;
}

async function replace(namespace: string, body: Obj, subresource?: 'status'): Promise<Obj> {
  const args = {
    group: GROUP,
    version: VERSION,
    namespace,
    plural: pluralOf(String(body.kind)),
    name: String(body.metadata?.name),
    body,
  };
  return (await (subresource === 'status'
    ? custom.replaceNamespacedCustomObjectStatus(args)
    : custom.replaceNamespacedCustomObject(args))) as Obj;
}

/** Asserts the API server rejected the call as Invalid and named `field` (optionally with `message`). */
async function assertInvalid(call: Promise<unknown>, field: string, message?: RegExp): Promise<void> {
  let error: unknown;
  try {
    await call;
  } catch (err) {
    error = err;
  }
  assert.ok(error !== undefined, `expected the API server to reject the object at ${field}`);
  const status = statusOf(error);
  assert.equal(status?.reason, 'Invalid', `expected reason Invalid, got ${JSON.stringify(status)}`);
  const causes = status.details?.causes ?? [];
  const cause = causes.find((c) => c.field === field);
  assert.ok(cause, `no cause at ${field}; causes: ${JSON.stringify(causes)}`);
  if (message !== undefined) assert.match(cause.message ?? '', message);
}

/**
 * The examples of our kinds and the Secrets they reference. Examples of other API groups (the partition
 * CronJob) are checked against the API server by their own test (e2e/audit/evidence-partitions-cronjob.test.ts).
 */
function examples(): Obj[] {
  const dir = join(REPO_ROOT, 'examples');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => d.toJS() as Obj))
    .filter((o) => String(o.apiVersion).startsWith(`${GROUP}/`) || (o.apiVersion === 'v1' && o.kind === 'Secret'));
}

// ProtectedResource and AccessPolicy have two examples each; the postgres one and the one with an approve
// rule are the bases of the variants.
const BASE_EXAMPLE: Readonly<Record<string, string>> = {
  ProtectedResource: 'orders-db',
  AccessPolicy: 'refunds-approval',
};
const exampleOf = (kind: string): Obj => {
  const found = examples().find(
    (o) => o.kind === kind && (BASE_EXAMPLE[kind] === undefined || o.metadata?.name === BASE_EXAMPLE[kind]),
  );
  if (found === undefined) throw new Error(`no example of ${kind}`);
  return structuredClone(found);
};

/** A copy of the example of `kind` with `mutate` applied to its spec. */
function variant(kind: string, name: string, mutate: (spec: Record<string, any>) => void): Obj {
  const o = exampleOf(kind);
  o.metadata = { name };
  mutate(o.spec as Record<string, any>);
  return o;
}

test('all CRDs are Established with the chaperone category', async () => {
  for (const kind of KINDS) {
    const crd = await extensions.readCustomResourceDefinition({ name: `${kind.plural}.${GROUP}` });
    const established = crd.status?.conditions?.find((c) => c.type === 'Established');
    assert.equal(established?.status, 'True', `${kind.kind} not established`);
    assert.deepEqual(crd.spec.names.categories, ['chaperone']);
  }
});

test('kubectl apply -n NS -f examples, as make demo and a user run it, applies every example into NS', async (t) => {
  // Examples that belong in a namespace of their own (the partition CronJob, in the credential namespace)
  // live in examples/operations, which a non-recursive apply of examples/ does not read.
  const ns = await createTestNamespace(t);
  const out = await kubectl(['apply', '-n', ns, '-f', join(REPO_ROOT, 'examples')]);
  const applied = out.split('\n').filter((l) => / created$/.test(l));
  const expected = readdirSync(join(REPO_ROOT, 'examples'))
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => parseAllDocuments(readFileSync(join(REPO_ROOT, 'examples', f), 'utf8')))
    .filter((d) => d.toJS() !== null);
  assert.equal(applied.length, expected.length, out);
});

test('every example is accepted', async (t) => {
  const ns = await createTestNamespace(t);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  for (const o of examples()) {
    if (o.apiVersion === 'v1' && o.kind === 'Secret') {
      await core.createNamespacedSecret({ namespace: ns, body: o });
      continue;
    }
    const created = await create(ns, o);
    assert.equal(created.metadata?.name, o.metadata?.name);
  }
  // Defaults from the schema are applied by the API server.
  const pr = (await custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: ns,
    plural: 'protectedresources',
    name: 'billing-api',
  })) as { spec: { audit: { retention: string }; tls?: unknown } };
  assert.equal(pr.spec.audit.retention, '720h');
});

describe('invalid objects are rejected with the field that is wrong', () => {
  const cases: { name: string; object: () => Obj; field: string; message?: RegExp }[] = [
    {
      name: 'ProtectedResource with an unknown type',
      object: () => variant('ProtectedResource', 'bad-type', (s) => (s.type = 'mysql')),
      field: 'spec.type',
      message: /Unsupported value/,
    },
    {
      name: 'postgres ProtectedResource without host',
      object: () => variant('ProtectedResource', 'no-host', (s) => delete s.endpoint.host),
      field: 'spec.endpoint',
      message: /needs endpoint.host/,
    },
    {
      name: 'postgres ProtectedResource with a url',
      object: () => variant('ProtectedResource', 'pg-url', (s) => (s.endpoint.url = 'https://x.example.com')),
      field: 'spec.endpoint.url',
    },
    {
      name: 'http ProtectedResource without url',
      object: () => variant('ProtectedResource', 'http-no-url', (s) => ((s.type = 'http'), (s.endpoint = {}))),
      field: 'spec.endpoint',
      message: /needs endpoint.url/,
    },
    {
      name: 'http ProtectedResource with an ftp url',
      object: () =>
        variant(
          'ProtectedResource',
          'ftp-url',
          (s) => ((s.type = 'http'), (s.endpoint = { url: 'ftp://files.example.com' })),
        ),
      field: 'spec.endpoint.url',
      message: /http\(s\)/,
    },
    {
      name: 'port out of range',
      object: () => variant('ProtectedResource', 'bad-port', (s) => (s.endpoint.port = 70000)),
      field: 'spec.endpoint.port',
    },
    {
      name: 'privileged listen port',
      object: () => variant('ProtectedResource', 'low-port', (s) => (s.listenPort = 80)),
      field: 'spec.listenPort',
    },
    {
      name: 'verify-ca without a CA',
      object: () => variant('ProtectedResource', 'no-ca', (s) => (s.tls = { mode: 'verify-ca' })),
      field: 'spec.tls.caSecretRef',
    },
    {
      name: 'http ProtectedResource with a read-only credential',
      object: () =>
        variant('ProtectedResource', 'http-ro', (s) => {
          s.type = 'http';
          s.endpoint = { url: 'https://x.example.com' };
          s.readOnlyCredentialSecretRef = { name: 'ro' };
        }),
      field: 'spec.readOnlyCredentialSecretRef',
      message: /postgres resource only/,
    },
    {
      name: 'read-only credential that is the main credential',
      object: () =>
        variant('ProtectedResource', 'same-ro', (s) => {
          s.readOnlyCredentialSecretRef = { name: s.credentialSecretRef.name };
        }),
      field: 'spec.readOnlyCredentialSecretRef',
      message: /another credential/,
    },
    {
      name: 'masking key in another namespace without a credential delivered from it',
      object: () =>
        variant('ProtectedResource', 'key-elsewhere', (s) => {
          s.maskingKeySecretRef = { name: 'k', namespace: 'chaperone-credentials' };
        }),
      field: 'spec.maskingKeySecretRef.namespace',
      message: /needs a delivered credential from the same namespace/,
    },
    {
      name: 'read-only credential mounted next to a delivered one',
      object: () =>
        variant('ProtectedResource', 'ro-mixed', (s) => {
          s.credentialSecretRef = { ...s.credentialSecretRef, namespace: 'chaperone-credentials' };
          s.readOnlyCredentialSecretRef = { name: 'reader' };
        }),
      field: 'spec.readOnlyCredentialSecretRef',
      message: /both credentials are delivered, or both mounted/,
    },
    {
      name: 'search path in a system schema',
      object: () => variant('ProtectedResource', 'pg-schema', (s) => (s.searchPath = 'pg_catalog')),
      field: 'spec.searchPath',
      message: /system schema/,
    },
    {
      name: 'retention that is not a duration',
      object: () => variant('ProtectedResource', 'bad-retention', (s) => (s.audit.retention = 'forever')),
      field: 'spec.audit.retention',
    },
    {
      name: 'unknown audit failure mode',
      object: () => variant('ProtectedResource', 'bad-failure-mode', (s) => (s.audit.failureMode = 'BestEffort')),
      field: 'spec.audit.failureMode',
    },
    {
      name: 'AccessPolicy rule with an unknown decision',
      object: () => variant('AccessPolicy', 'bad-decision', (s) => (s.rules[0].decision = 'maybe')),
      field: 'spec.rules[0].decision',
    },
    {
      name: 'AccessPolicy with duplicate rule names',
      object: () => variant('AccessPolicy', 'dup-rules', (s) => (s.rules[1].name = s.rules[0].name)),
      field: 'spec.rules[1]',
      message: /Duplicate/,
    },
    {
      name: 'AccessPolicy approve rule without approval section',
      object: () => variant('AccessPolicy', 'no-approval', (s) => delete s.approval),
      field: 'spec.approval',
    },
    {
      name: 'AccessPolicy without resources',
      object: () => variant('AccessPolicy', 'no-resources', (s) => (s.resources = {})),
      field: 'spec.resources',
    },
    {
      name: 'AccessPolicy with an unknown statement kind',
      object: () => variant('AccessPolicy', 'bad-kind', (s) => (s.rules[0].match.sql.statementKinds = ['drop'])),
      field: 'spec.rules[0].match.sql.statementKinds[0]',
    },
    {
      name: 'AccessPolicy time window at 25:00',
      object: () => variant('AccessPolicy', 'bad-time', (s) => (s.rules[2].when.timeWindows[0].start = '25:00')),
      field: 'spec.rules[2].when.timeWindows[0].start',
    },
    {
      name: 'masking rule with neither columns nor detectors',
      object: () =>
        variant('AccessPolicy', 'empty-mask', (s) => (s.masking = [{ name: 'nothing', strategy: 'redact' }])),
      field: 'spec.masking[0]',
    },
    {
      name: 'AccessPolicy rule id that is not a DNS name',
      object: () => variant('AccessPolicy', 'bad-rule-name', (s) => (s.rules[0].name = 'Deny DDL')),
      field: 'spec.rules[0].name',
    },
    {
      name: 'Session record with a malformed hash',
      object: () => variant('Session', 'bad-hash', (s) => (s.records[0].hash = 'md5:abc')),
      field: 'spec.records[0].hash',
    },
    {
      name: 'Session records out of order',
      object: () => variant('Session', 'gap', (s) => (s.records[1].seq = 3)),
      field: 'spec.records',
      message: /no gaps/,
    },
    {
      name: 'Session records with a duplicate seq',
      object: () =>
        variant('Session', 'dup-seq', (s) => {
          const [a, b] = s.records;
          s.records = [a, { ...b, seq: 2 }, { ...b, seq: 2 }, { ...b, seq: 4 }];
        }),
      field: 'spec.records',
      message: /no gaps/,
    },
    {
      // The seqs still span size - 1 (1, 1, 3): only the duplicate check refuses it.
      name: 'Session records with a duplicate seq that keeps the range',
      object: () =>
        variant('Session', 'dup-range', (s) => {
          const [a, b] = s.records;
          s.records = [a, { ...b, seq: a.seq }, { ...b, seq: a.seq + 2 }];
        }),
      field: 'spec.records',
      message: /no gaps/,
    },
    {
      name: 'Session records with a repeated seq in the middle that keeps the range',
      object: () =>
        variant('Session', 'dup-middle', (s) => {
          const [a, b] = s.records;
          s.records = [a, b, { ...b, seq: b.seq }, { ...b, seq: b.seq + 2 }];
        }),
      field: 'spec.records',
      message: /no gaps/,
    },
    {
      name: 'Session records in descending order',
      object: () => variant('Session', 'descending', (s) => (s.records = [...s.records].reverse())),
      field: 'spec.records',
      message: /no gaps/,
    },
    {
      name: 'Session record after session.end',
      object: () =>
        variant('Session', 'end-middle', (s) => {
          const [a, b] = s.records;
          s.records = [a, { ...b, type: 'session.end' }, { ...b, seq: b.seq + 1 }];
        }),
      field: 'spec.records',
      message: /no record may follow session\.end/,
    },
    {
      name: 'Session with a second session.end',
      object: () =>
        variant('Session', 'end-twice', (s) => {
          const [a, b] = s.records;
          s.records = [a, { ...b, type: 'session.end' }, { ...b, seq: b.seq + 1, type: 'session.end' }];
        }),
      field: 'spec.records',
      message: /no record may follow session\.end/,
    },
    {
      name: 'Session record time without microseconds',
      object: () => variant('Session', 'bad-time', (s) => (s.records[0].time = '2026-11-27T10:00:00Z')),
      field: 'spec.records[0].time',
    },
    {
      name: 'ApprovalRequest needing zero approvals',
      object: () => variant('ApprovalRequest', 'zero', (s) => (s.requiredApprovals = 0)),
      field: 'spec.requiredApprovals',
    },
  ];
  for (const c of cases) {
    test(c.name, async (t) => {
      const ns = await createTestNamespace(t);
      await assertInvalid(create(ns, c.object()), c.field, c.message);
    });
  }
});

describe('transition rules', () => {
  test('ProtectedResource type is immutable', async (t) => {
    const ns = await createTestNamespace(t);
    const created = await create(
      ns,
      variant('ProtectedResource', 'pr', () => undefined),
    );
    (created.spec as Record<string, unknown>).type = 'http';
    await assertInvalid(replace(ns, created), 'spec.type', /immutable/);
  });

  test('Session records cannot be removed, edited or reordered; appending works', async (t) => {
    const ns = await createTestNamespace(t);
    const created = await create(
      ns,
      variant('Session', 'sess', () => undefined),
    );
    const records = () => (structuredClone(created) as { spec: { records: Record<string, any>[] } }).spec.records;

    const removed = structuredClone(created) as Obj & { spec: { records: unknown[] } };
    removed.spec.records = records().slice(1);
    await assertInvalid(replace(ns, removed), 'spec.records', /append-only/);

    const edited = structuredClone(created) as Obj & { spec: { records: Record<string, any>[] } };
    edited.spec.records = records();
    edited.spec.records[1]!.command.text = 'select 1';
    await assertInvalid(replace(ns, edited), 'spec.records', /append-only/);

    const swapped = structuredClone(created) as Obj & { spec: { records: Record<string, any>[] } };
    swapped.spec.records = records().reverse();
    await assertInvalid(replace(ns, swapped), 'spec.records', /append-only/);

    const identity = structuredClone(created) as Obj & { spec: { identity: { subject: string } } };
    identity.spec.identity.subject = 'someone-else';
    await assertInvalid(replace(ns, identity), 'spec.identity', /immutable/);

    const appended = structuredClone(created) as Obj & { spec: { records: Record<string, any>[] } };
    const last = records().at(-1)!;
    appended.spec.records = [...records(), { ...last, seq: last.seq + 1, prevHash: last.hash }];
    const updated = (await replace(ns, appended)) as { spec: { records: unknown[] } };
    assert.equal(updated.spec.records.length, 3);
  });

  test('Session appends keep seq order and a closed session stays closed', async (t) => {
    const ns = await createTestNamespace(t);
    const created = await create(
      ns,
      variant('Session', 'sess', () => undefined),
    );
    type Records = Obj & { spec: { records: Record<string, any>[] } };
    const withRecords = (base: Obj, extra: Record<string, any>[]): Records => {
      const o = structuredClone(base) as Records;
      o.spec.records = [...o.spec.records, ...extra];
      return o;
    };
    const last = (o: Obj) => (o as Records).spec.records.at(-1)!;
    const next = (o: Obj, seq: number, type?: string) => ({ ...last(o), seq, ...(type ? { type } : {}) });
    const top = last(created).seq as number;

    await assertInvalid(replace(ns, withRecords(created, [next(created, top + 2)])), 'spec.records', /no gaps/);
    await assertInvalid(replace(ns, withRecords(created, [next(created, top)])), 'spec.records', /no gaps/);
    await assertInvalid(
      replace(ns, withRecords(created, [next(created, top + 1), next(created, top + 1)])),
      'spec.records',
      /no gaps/,
    );
    await assertInvalid(
      replace(ns, withRecords(created, [next(created, top + 1, 'session.end'), next(created, top + 2)])),
      'spec.records',
      /no record may follow session\.end/,
    );

    // Two records at once, the last a session.end: accepted.
    const closed = await replace(
      ns,
      withRecords(created, [next(created, top + 1), next(created, top + 2, 'session.end')]),
    );
    assert.equal((closed as Records).spec.records.length, 4);
    await assertInvalid(
      replace(ns, withRecords(closed, [next(closed, top + 3, 'command.decision')])),
      'spec.records',
      /session\.end/,
    );
    await assertInvalid(
      replace(ns, withRecords(closed, [next(closed, top + 3, 'session.end')])),
      'spec.records',
      /no record may follow session\.end/,
    );
  });

  test('ApprovalRequest spec is immutable and decisions are append-only', async (t) => {
    const ns = await createTestNamespace(t);
    const created = await create(
      ns,
      variant('ApprovalRequest', 'areq', () => undefined),
    );
    const changed = structuredClone(created) as Obj & { spec: { requiredApprovals: number } };
    changed.spec.requiredApprovals = 2;
    await assertInvalid(replace(ns, changed), 'spec', /immutable/);

    const decision = { approver: { username: 'alice' }, decision: 'approve', time: '2026-11-27T10:01:00Z' };
    const withDecision = { ...structuredClone(created), status: { phase: 'Pending', decisions: [decision] } };
    const stored = await replace(ns, withDecision, 'status');
    const withdrawn = { ...stored, status: { phase: 'Pending', decisions: [] } };
    await assertInvalid(replace(ns, withdrawn, 'status'), 'status.decisions', /append-only/);
  });
});

test('kubectl shows printer columns and lists every kind under the chaperone category', async (t) => {
  const ns = await createTestNamespace(t);
  await create(
    ns,
    variant('ProtectedResource', 'orders-db', () => undefined),
  );
  await create(
    ns,
    variant('Session', 'sess-1', () => undefined),
  );
  await create(
    ns,
    variant('AccessPolicy', 'pol', () => undefined),
  );
  await create(
    ns,
    variant('ApprovalRequest', 'areq', () => undefined),
  );

  const sessions = await kubectl(['get', 'sessions', '-n', ns]);
  const header = sessions.split('\n')[0] ?? '';
  for (const column of ['IDENTITY', 'RESOURCE', 'COMMANDS', 'DENIED', 'PHASE', 'AGE']) {
    assert.match(header, new RegExp(`\\b${column}\\b`), `sessions table lacks ${column}: ${header}`);
  }
  for (const column of ['ACTOR']) assert.match(header, new RegExp(`\\b${column}\\b`));
  // The subject on whose behalf, then the current actor of the delegation chain.
  assert.match(
    sessions,
    /sess-1\s+system:serviceaccount:ci:nightly-report\s+chaperone:agent:report-writer\s+orders-db/,
  );

  const resources = await kubectl(['get', 'pres', '-n', ns]);
  assert.match(resources, /orders-db\s+postgres\s+orders-db\.databases\.svc\.cluster\.local\s+FailClosed/);

  const all = await kubectl(['get', 'chaperone', '-n', ns, '-o', 'name']);
  assert.deepEqual(all.trim().split('\n').sort(), [
    'accesspolicy.chaperone.dev/pol',
    'approvalrequest.chaperone.dev/areq',
    'protectedresource.chaperone.dev/orders-db',
    'session.chaperone.dev/sess-1',
  ]);
});
