// The AccessPolicy controller against the real API server (with kube-controller-manager's garbage
// collector): compile → ConfigMap + status; idempotent re-reconcile; compile errors with line numbers, an
// Event and the last good bundle kept; recovery; garbage collection; the bundle loads in the sidecar's
// engine; and the chaperone-operator binary with leader election across two replicas.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import * as k8s from '@kubernetes/client-node';
import { bundleDigest, GROUP, VERSION, type AccessPolicy, type BundleManifestFile } from '@chaperone/api';
import { createLogger } from '../../operator/src/observability/logger.ts';
import { startOperator } from '../../operator/src/operator.ts';
import { PolicyEngine } from '../../sidecar/src/core/policy/policy-engine.ts';
import { readBundleDirectory } from '../../sidecar/src/core/policy/bundle-directory.ts';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { createTestNamespace, kubeConfig, statusOf } from '../harness/kube.ts';
import { stopProcess } from '../harness/processes.ts';
import { REPO_ROOT } from '../harness/tools.ts';

/** A new policy must be Ready within this (about 1 s on the 2-core development machine). */
const READY_DEADLINE_MS = 5_000;
/** Generous deadline for every other wait: shared CI machines are not idle. */
const DEADLINE_MS = 30_000;
const GC_DEADLINE_MS = 120_000;
const PLURAL = 'accesspolicies';

const kc = kubeConfig();
const custom = kc.makeApiClient(k8s.CustomObjectsApi);
const core = kc.makeApiClient(k8s.CoreV1Api);
const coordination = kc.makeApiClient(k8s.CoordinationV1Api);

function policyBody(name: string, rego?: string): AccessPolicy {
  return {
    apiVersion: `${GROUP}/${VERSION}`,
    kind: 'AccessPolicy',
    metadata: { name },
    spec: {
      resources: { names: ['orders-db'] },
      rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
      defaultDecision: 'deny',
      ...(rego === undefined ? {} : { rego }),
    },
  };
}

const GOOD_REGO = [
  'package chaperone.custom',
  '',
  'deny contains "no pg_sleep" if {',
  '\tinput.command.type == "sql"',
  '\tsome s in input.command.statements',
  '\t"pg_catalog.pg_sleep" in s.functions',
  '}',
  '',
].join('\n');
// Line 5 ends after `==`, so the parser meets the `}` of line 6, column 1, where an operand should be.
const BROKEN_REGO = [
  'package chaperone.custom',
  '',
  'deny contains msg if {',
  '\tmsg := "x"',
  '\tinput.a ==',
  '}',
  '',
].join('\n');

async function getPolicy(namespace: string, name: string): Promise<AccessPolicy> {
  return (await custom.getNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: PLURAL,
    name,
  })) as AccessPolicy;
}

async function createPolicy(namespace: string, body: AccessPolicy): Promise<AccessPolicy> {
  return (await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: PLURAL,
    body,
  })) as AccessPolicy;
}

async function mergePatchPolicy(namespace: string, name: string, patch: unknown): Promise<AccessPolicy> {
  return (await custom.patchNamespacedCustomObject(
    { group: GROUP, version: VERSION, namespace, plural: PLURAL, name, body: patch },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
  )) as AccessPolicy;
}

const ready = (p: AccessPolicy) => p.status?.conditions?.find((c) => c.type === 'Ready');

/** Waits until the policy's status covers its current generation with the wanted Ready status. */
function waitForReady(
  namespace: string,
  name: string,
  status: 'True' | 'False',
  deadlineMs = DEADLINE_MS,
): Promise<AccessPolicy> {
  return poll(
    `${namespace}/${name} Ready=${status}`,
    async () => {
      const p = await getPolicy(namespace, name);
      const c = ready(p);
      return p.status?.observedGeneration === p.metadata.generation && c?.status === status ? p : undefined;
    },
    deadlineMs,
  );
}

async function readConfigMap(namespace: string, name: string): Promise<k8s.V1ConfigMap | undefined> {
  try {
    return await core.readNamespacedConfigMap({ namespace, name });
  } catch (err) {
    if (statusOf(err)?.code === 404) return undefined;
    throw err;
  }
}

function captureLogs(): { lines: string[]; logger: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  return { lines, logger: createLogger({ level: 'debug', write: (l) => lines.push(l) }) };
}

test('AccessPolicy controller compiles, publishes, reports errors, recovers and is garbage-collected', async (t) => {
  const namespace = await createTestNamespace(t);
  const { lines, logger } = captureLogs();
  const operator = await startOperator({
    kubeConfig: kc,
    namespace,
    logger,
    metricsBindAddress: '127.0.0.1:0',
    identity: 'e2e-in-process',
  });
  t.after(async () => {
    await operator.stop();
  });
  let completed = false;
  t.after(() => {
    if (!completed || process.env.CHAPERONE_TEST_VERBOSE !== undefined)
      console.log(`operator logs:\n${lines.join('')}`);
  });

  const started = Date.now();
  await createPolicy(namespace, policyBody('orders', GOOD_REGO));
  const orders = await waitForReady(namespace, 'orders', 'True', READY_DEADLINE_MS);
  t.diagnostic(`Ready=True after ${Date.now() - started} ms`);
  const condition = ready(orders);
  assert.equal(condition?.reason, 'Compiled');
  assert.equal(condition.observedGeneration, orders.metadata.generation);
  const bundle = orders.status?.bundle;
  assert.ok(bundle !== undefined);
  assert.match(bundle.digest, /^sha256:[0-9a-f]{64}$/);
  assert.equal(bundle.configMapName, 'chaperone-policy-orders');
  assert.ok(bundle.sizeBytes > 1000);
  assert.ok(!Number.isNaN(Date.parse(bundle.compiledTime)));
  assert.equal(orders.status?.errors, undefined);

  await t.test('the ConfigMap holds the bundle, is owned by the policy and loads in the sidecar engine', async () => {
    const cm = await readConfigMap(namespace, 'chaperone-policy-orders');
    assert.ok(cm !== undefined);
    const owner = cm.metadata?.ownerReferences?.[0];
    assert.equal(owner?.kind, 'AccessPolicy');
    assert.equal(owner.uid, orders.metadata.uid);
    assert.equal(owner.controller, true);
    const wasm = Buffer.from(cm.binaryData?.['policy.wasm'] ?? '', 'base64');
    const file = JSON.parse(cm.data?.['manifest.json'] ?? '{}') as BundleManifestFile;
    assert.equal(file.digest, bundle.digest);
    assert.equal(file.manifest.policy, `${namespace}/orders`);
    assert.equal(file.manifest.rawRego, true);
    assert.equal(bundleDigest(wasm, file.manifest), bundle.digest, 'digest covers exactly the published bytes');
    assert.equal(bundle.sizeBytes, wasm.length + Buffer.byteLength(cm.data?.['manifest.json'] ?? ''));

    // Lay the ConfigMap out as the kubelet would mount it (one subdirectory per policy) and load it.
    const dir = join(testDir(t), 'bundles');
    mkdirSync(join(dir, 'orders'), { recursive: true });
    writeFileSync(join(dir, 'orders', 'policy.wasm'), wasm);
    writeFileSync(join(dir, 'orders', 'manifest.json'), cm.data?.['manifest.json'] ?? '');
    const { bundles, errors } = readBundleDirectory(dir);
    assert.deepEqual(errors, []);
    const engine = new PolicyEngine();
    await engine.replaceBundles(bundles);
    assert.deepEqual(engine.bundles(), [{ policy: `${namespace}/orders`, digest: bundle.digest }]);
    const decision = engine.decide({
      identity: { subject: 'a', issuer: 'i', groups: [], actor: { subject: 'a', issuer: 'i' }, chain: [], depth: 0 },
      resource: { name: 'orders-db', namespace, type: 'postgres', labels: {} },
      command: {
        type: 'sql',
        statements: [{ kind: 'select', relations: ['public.orders'], functions: [], sideEffects: false }],
      },
      session: { id: 's', applicationName: 'psql', clientAddress: '127.0.0.1', inTransaction: false },
    });
    assert.equal(decision.decision, 'allow');
    assert.equal(decision.rule, 'reads');
  });

  await t.test('re-reconciling an unchanged policy writes nothing', async () => {
    const cmBefore = await readConfigMap(namespace, 'chaperone-policy-orders');
    // The controller logs each finished reconcile of a key (after any write it made).
    const reconciles = () =>
      lines.filter((l) => l.includes('"msg":"reconciled') && l.includes(`"key":"${namespace}/orders"`)).length;
    const before = reconciles();
    // An annotation does not bump the generation, but the watch event makes the controller reconcile.
    const annotated = await mergePatchPolicy(namespace, 'orders', { metadata: { annotations: { touched: 'yes' } } });
    await poll('a reconcile of the policy after the annotation', () =>
      Promise.resolve(reconciles() > before ? true : undefined),
    );
    const after = await getPolicy(namespace, 'orders');
    assert.equal(after.metadata.resourceVersion, annotated.metadata.resourceVersion, 'no status write');
    const cmAfter = await readConfigMap(namespace, 'chaperone-policy-orders');
    assert.equal(cmAfter?.metadata?.resourceVersion, cmBefore?.metadata?.resourceVersion, 'no ConfigMap write');
  });

  await t.test('a ConfigMap deleted by hand is put back', async () => {
    await core.deleteNamespacedConfigMap({ namespace, name: 'chaperone-policy-orders' });
    const cm = await poll('the ConfigMap to return', () => readConfigMap(namespace, 'chaperone-policy-orders'));
    assert.equal(cm.metadata?.annotations?.['chaperone.dev/bundle-digest'], bundle.digest);
  });

  await t.test('a policy with a Rego syntax error is Ready=False with the line, errors and an Event', async () => {
    await createPolicy(namespace, policyBody('broken', BROKEN_REGO));
    const broken = await waitForReady(namespace, 'broken', 'False');
    const c = ready(broken);
    assert.equal(c?.reason, 'CompileFailed');
    assert.match(c.message, /line 6, column 1: rego_parse_error: unexpected \} token/);
    assert.match(c.message, /no bundle is published/);
    const first = broken.status?.errors?.[0];
    assert.equal(first?.line, 6);
    assert.equal(first.column, 1);
    assert.equal(first.code, 'rego_parse_error');
    assert.equal(broken.status?.bundle, undefined);
    assert.equal(await readConfigMap(namespace, 'chaperone-policy-broken'), undefined);
    const event = await poll('a CompileFailed event', async () => {
      const list = await core.listNamespacedEvent({
        namespace,
        fieldSelector: `involvedObject.name=broken,reason=CompileFailed`,
      });
      return list.items[0];
    });
    assert.equal(event.type, 'Warning');
    assert.equal(event.involvedObject.kind, 'AccessPolicy');
    assert.equal(event.involvedObject.uid, broken.metadata.uid);
    assert.match(event.message ?? '', /line 6, column 1/);

    // Fixing it recovers: Ready=True, a digest, the errors gone, a new transition time.
    await mergePatchPolicy(namespace, 'broken', { spec: { rego: GOOD_REGO } });
    const fixed = await waitForReady(namespace, 'broken', 'True');
    assert.match(fixed.status?.bundle?.digest ?? '', /^sha256:/);
    assert.equal(fixed.status?.errors, undefined);
    assert.ok(await readConfigMap(namespace, 'chaperone-policy-broken'));
  });

  await t.test(
    'breaking a published policy keeps its last good ConfigMap; fixing it publishes a new digest',
    async () => {
      const cmBefore = await readConfigMap(namespace, 'chaperone-policy-orders');
      await mergePatchPolicy(namespace, 'orders', { spec: { rego: BROKEN_REGO } });
      const broken = await waitForReady(namespace, 'orders', 'False');
      assert.equal(broken.status?.bundle?.digest, bundle.digest, 'status.bundle still names the published bundle');
      assert.match(
        ready(broken)?.message ?? '',
        new RegExp(`line 6, column 1: .*sidecars keep the last good bundle ${bundle.digest}`),
      );
      const cmDuring = await readConfigMap(namespace, 'chaperone-policy-orders');
      assert.equal(
        cmDuring?.metadata?.resourceVersion,
        cmBefore?.metadata?.resourceVersion,
        'last good ConfigMap untouched',
      );

      const rego = GOOD_REGO.replace('no pg_sleep', 'pg_sleep is not allowed');
      await mergePatchPolicy(namespace, 'orders', { spec: { rego } });
      const recovered = await waitForReady(namespace, 'orders', 'True');
      const digest = recovered.status?.bundle?.digest;
      assert.match(digest ?? '', /^sha256:/);
      assert.notEqual(digest, bundle.digest, 'a new digest');
      assert.notEqual(ready(recovered)?.lastTransitionTime, undefined);
      const cm = await poll('the new bundle in the ConfigMap', async () => {
        const c = await readConfigMap(namespace, 'chaperone-policy-orders');
        return c?.metadata?.annotations?.['chaperone.dev/bundle-digest'] === digest ? c : undefined;
      });
      assert.equal((JSON.parse(cm.data?.['manifest.json'] ?? '{}') as BundleManifestFile).digest, digest);
    },
  );

  await t.test('metrics are served with reconcile counts by result and queue depth', async () => {
    const res = await fetch(`http://${operator.metricsAddress ?? ''}/metrics`);
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.match(text, /chaperone_controller_reconcile_total\{controller="accesspolicy",result="success"\} [1-9]/);
    assert.match(
      text,
      /chaperone_controller_reconcile_total\{controller="accesspolicy",result="terminal_error"\} [1-9]/,
    );
    assert.match(text, /chaperone_workqueue_depth\{name="accesspolicy"\} \d/);
    assert.match(text, /chaperone_controller_reconcile_duration_seconds_bucket/);
    assert.equal((await fetch(`http://${operator.metricsAddress ?? ''}/readyz`)).status, 200);
  });

  await t.test('reconcile logs are JSON lines with a reconcile id', () => {
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const compiled = parsed.find((l) => l.msg === 'policy compiled');
    assert.ok(compiled !== undefined);
    assert.equal(compiled.controller, 'accesspolicy');
    assert.equal(compiled.key, `${namespace}/orders`);
    assert.match(String(compiled.reconcileID), /^[0-9a-f-]{36}$/);
  });
  await t.test('deleting the policy garbage-collects its ConfigMap', async (t) => {
    await custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      name: 'orders',
    });
    // The garbage collector only watches a CRD's kind after its next discovery sync (every 30 s), and
    // the harness installs the CRDs just before the tests: allow for that, not just for the deletion.
    const deleted = Date.now();
    await poll(
      'the ConfigMap to be garbage-collected',
      async () => ((await readConfigMap(namespace, 'chaperone-policy-orders')) === undefined ? true : undefined),
      GC_DEADLINE_MS,
    );
    t.diagnostic(`garbage-collected ${Date.now() - deleted} ms after the policy was deleted`);
  });

  completed = true;
});

interface OperatorProcess {
  readonly child: ChildProcess;
  readonly logs: string[];
  identity: string | undefined;
}

function spawnOperator(namespace: string): OperatorProcess {
  const child = spawn(
    process.execPath,
    [
      join(REPO_ROOT, 'operator/src/bin/chaperone-operator.ts'),
      '--kubeconfig',
      controlPlaneEnv().kubeconfig,
      '--namespace',
      namespace,
      '--leader-elect',
      '--metrics-bind-address',
      '127.0.0.1:0',
      '--log-level',
      'debug',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const proc: OperatorProcess = { child, logs: [], identity: undefined };
  createInterface({ input: child.stderr }).on('line', (line) => {
    proc.logs.push(line);
    try {
      const parsed = JSON.parse(line) as { msg?: string; identity?: string };
      if (parsed.msg === 'operator started') proc.identity = parsed.identity;
    } catch {
      // not a log line
    }
  });
  return proc;
}

async function leaseHolder(namespace: string): Promise<string | undefined> {
  try {
    const lease = await coordination.readNamespacedLease({ namespace, name: 'chaperone-operator' });
    return lease.spec?.holderIdentity ?? '';
  } catch (err) {
    if (statusOf(err)?.code === 404) return undefined;
    throw err;
  }
}

test('chaperone-operator binary: two replicas, one leader, failover on SIGTERM', async (t) => {
  const namespace = await createTestNamespace(t);
  const a = spawnOperator(namespace);
  const b = spawnOperator(namespace);
  let completed = false;
  t.after(async () => {
    await Promise.all([stopProcess(a.child), stopProcess(b.child)]);
    if (!completed) console.log(`replica logs:\n${[...a.logs, ...b.logs].join('\n')}`);
  });
  await poll('both replicas to start', () =>
    Promise.resolve(a.identity !== undefined && b.identity !== undefined ? true : undefined),
  );
  const holder = await poll('a leader', async () => {
    const h = await leaseHolder(namespace);
    return h === undefined || h === '' ? undefined : h;
  });
  const [leader, standby] = holder === a.identity ? [a, b] : [b, a];
  assert.equal(leader.identity, holder);

  await createPolicy(namespace, policyBody('first'));
  await waitForReady(namespace, 'first', 'True');
  const reconciledBy = (p: OperatorProcess) => p.logs.some((l) => l.includes('"msg":"policy compiled"'));
  assert.equal(reconciledBy(leader), true, 'the leader reconciles');
  assert.equal(reconciledBy(standby), false, 'the standby does not');

  // SIGTERM: the leader stops its reconcilers, releases the Lease and exits 0; the standby takes over
  // without waiting for the Lease to expire.
  leader.child.kill('SIGTERM');
  const code = await new Promise<number | null>((resolve) => leader.child.once('exit', resolve));
  assert.equal(code, 0);
  await poll('the standby to lead', async () =>
    (await leaseHolder(namespace)) === standby.identity ? true : undefined,
  );
  await createPolicy(namespace, policyBody('second'));
  await waitForReady(namespace, 'second', 'True');
  assert.equal(reconciledBy(standby), true, 'the new leader reconciles');
  completed = true;
});
