// The mutating and validating pod webhooks against the real API server: what the stored pods look like
// after admission (Pods, Deployments, Jobs), re-invocation, opt-out, kube-system, and strict mode.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { controlPlaneEnv } from '../harness/env.ts';
import { toolPath } from '../harness/tools.ts';
import {
  ANNOTATION_INJECTED,
  ANNOTATION_SIDECAR_CONFIG,
  LABEL_INJECTION,
  SIDECAR_CONTAINER,
  VOLUME_AGENT_IDENTITY,
  VOLUME_AUDIT,
  VOLUME_CREDENTIALS,
  VOLUME_SIDECAR_API_ACCESS,
} from '../../operator/src/injection/constants.ts';
import { agentContainers, carriesApiServerToken } from '../../operator/src/injection/inspect-pod.ts';
import { startAdmissionServer } from '../../operator/src/webhooks/admission-server.ts';
import { allowWithPatch } from '../../operator/src/webhooks/admission-review.ts';
import { silentLogger } from '../../operator/src/observability/logger.ts';
import { statusOf } from '../harness/kube.ts';
import {
  CREDENTIAL_SECRET,
  INSTANCE_LABEL,
  agentPod,
  createPostgresResource,
  startWebhookFixture,
  waitForPods,
  type WebhookFixture,
} from './injection-fixture.ts';

const execFileAsync = promisify(execFile);

let fx: WebhookFixture;
before(async () => {
  fx = await startWebhookFixture();
});
after(async () => {
  await fx.stop();
});

const LISTEN_PORT = 15432;

/** Every property the injection promises, checked on a pod as the API server stored it. */
function assertInjected(pod: k8s.V1Pod, expectedAgents: string[]): void {
  const spec = pod.spec;
  assert.ok(spec);
  const sidecars = [...(spec.initContainers ?? []), ...spec.containers].filter((c) => c.name === SIDECAR_CONTAINER);
  assert.equal(sidecars.length, 1, 'exactly one sidecar');
  const sidecar = sidecars[0];
  assert.ok(sidecar);
  assert.equal(spec.initContainers?.[0]?.name, SIDECAR_CONTAINER, 'the sidecar is the first init container');
  assert.equal(sidecar.restartPolicy, 'Always', 'native sidecar');
  assert.deepEqual(sidecar.args, ['--config', '/etc/chaperone/sidecar.yaml']);
  assert.equal(sidecar.securityContext?.runAsNonRoot, true);
  assert.equal(sidecar.securityContext.readOnlyRootFilesystem, true);
  assert.deepEqual(sidecar.securityContext.capabilities?.drop, ['ALL']);
  assert.equal(sidecar.readinessProbe?.httpGet?.path, '/healthz');
  assert.equal(spec.automountServiceAccountToken, false, 'no automounted API token');
  assert.ok(pod.metadata?.annotations?.[ANNOTATION_INJECTED]);
  assert.ok(pod.metadata.annotations[ANNOTATION_SIDECAR_CONFIG]?.includes('orders-db'));

  const volumes = new Map((spec.volumes ?? []).map((v) => [v.name, v]));
  assert.ok(!(spec.volumes ?? []).some((v) => v.name.startsWith('kube-api-access-')), 'automount volume removed');
  const credentials = volumes.get(VOLUME_CREDENTIALS);
  assert.ok(credentials?.projected?.sources?.some((s) => s.secret?.name === CREDENTIAL_SECRET));
  assert.ok(sidecar.volumeMounts?.some((m) => m.name === VOLUME_CREDENTIALS));
  assert.ok(sidecar.volumeMounts?.some((m) => m.name === VOLUME_SIDECAR_API_ACCESS));
  assert.ok(carriesApiServerToken(volumes.get(VOLUME_SIDECAR_API_ACCESS) ?? { name: '' }));
  assert.ok(volumes.get(VOLUME_AUDIT)?.emptyDir?.sizeLimit, 'the audit spool is a bounded emptyDir');
  assert.ok(sidecar.volumeMounts?.some((m) => m.name === VOLUME_AUDIT && m.readOnly !== true));
  assert.deepEqual(
    (sidecar.env ?? []).map((e) => `${e.name}=${e.valueFrom?.fieldRef?.fieldPath ?? ''}`),
    ['POD_NAME=metadata.name', 'POD_NAMESPACE=metadata.namespace', 'POD_UID=metadata.uid'],
    'the sidecar learns its pod from the downward API',
  );
  const identity = volumes.get(VOLUME_AGENT_IDENTITY);
  assert.equal(identity?.projected?.sources?.[0]?.serviceAccountToken?.audience, 'chaperone');

  const agents = agentContainers(pod);
  assert.deepEqual(agents.map((a) => a.container.name).sort(), [...expectedAgents].sort());
  for (const { container } of agents) {
    const env = Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value]));
    assert.equal(env.PGHOST, '127.0.0.1', `${container.name} PGHOST`);
    assert.equal(env.PGPORT, String(LISTEN_PORT), `${container.name} PGPORT`);
    assert.equal(env.PGSSLMODE, 'disable');
    assert.equal(env.CHAPERONE_TOKEN_FILE, '/var/run/secrets/chaperone/token');
    for (const mount of container.volumeMounts ?? []) {
      assert.notEqual(mount.name, VOLUME_CREDENTIALS, `${container.name} must not mount credentials`);
      assert.notEqual(mount.name, VOLUME_SIDECAR_API_ACCESS, `${container.name} must not mount the sidecar token`);
      assert.notEqual(mount.name, VOLUME_AUDIT, `${container.name} must not mount the audit spool`);
      const volume = volumes.get(mount.name);
      assert.ok(volume === undefined || !carriesApiServerToken(volume), `${container.name} has no API-server token`);
      assert.ok(
        !JSON.stringify(volume ?? {}).includes(CREDENTIAL_SECRET),
        `${container.name} has no credential Secret`,
      );
    }
    assert.ok(container.volumeMounts?.some((m) => m.name === VOLUME_AGENT_IDENTITY));
    assert.ok(!(container.envFrom ?? []).some((e) => e.secretRef !== undefined));
  }
}

async function kubectlWithStderr(args: string[], input: string): Promise<{ stdout: string; stderr: string }> {
  const child = execFileAsync(toolPath('kubectl'), ['--kubeconfig', controlPlaneEnv().kubeconfig, ...args], {
    encoding: 'utf8',
  });
  child.child.stdin?.end(input);
  return child;
}

async function createPod(ns: string, pod: k8s.V1Pod): Promise<k8s.V1Pod> {
  return fx.core.createNamespacedPod({ namespace: ns, body: pod });
}

async function rejection(promise: Promise<unknown>): Promise<k8s.V1Status> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err !== undefined, 'expected the API server to refuse');
  const status = statusOf(err);
  assert.ok(status, `expected a Status, got ${err instanceof Error ? err.message : JSON.stringify(err)}`);
  return status;
}

describe('mutating webhook', () => {
  test('an annotated Pod gets exactly one native sidecar and agent-only identity', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    await createPod(ns, agentPod('agent', 'orders-db'));
    const stored = await fx.core.readNamespacedPod({ namespace: ns, name: 'agent' });
    assertInjected(stored, ['agent']);
  });

  test('init containers and every container are agents; the sidecar starts first', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    const pod = agentPod('multi', 'orders-db', {
      initContainers: [{ name: 'migrate', image: 'postgres:17', command: ['true'] }],
    });
    pod.spec?.containers.push({
      name: 'helper',
      image: 'busybox',
      env: [{ name: 'PGHOST', value: 'db.example.com' }],
    });
    await createPod(ns, pod);
    const stored = await fx.core.readNamespacedPod({ namespace: ns, name: 'multi' });
    assertInjected(stored, ['migrate', 'agent', 'helper']);
    assert.deepEqual(
      stored.spec?.initContainers?.map((c) => c.name),
      [SIDECAR_CONTAINER, 'migrate'],
    );
  });

  test('a generateName Pod is injected (the config names no pod; its tokens do)', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    const pod = agentPod('ignored', 'orders-db');
    pod.metadata = { labels: pod.metadata?.labels, annotations: pod.metadata?.annotations, generateName: 'agent-' };
    const created = await createPod(ns, pod);
    assert.match(created.metadata?.name ?? '', /^agent-/);
    assertInjected(created, ['agent']);
  });

  test('a Deployment: the ReplicaSet controller creates injected pods', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    const template = agentPod('worker', 'orders-db');
    await fx.apps.createNamespacedDeployment({
      namespace: ns,
      body: {
        metadata: { name: 'worker' },
        spec: {
          replicas: 2,
          selector: { matchLabels: { app: 'worker' } },
          template: {
            metadata: { labels: { app: 'worker' }, annotations: template.metadata?.annotations ?? {} },
            spec: template.spec ?? { containers: [] },
          },
        },
      },
    });
    const pods = await waitForPods(fx.core, ns, 'app=worker', 2);
    for (const pod of pods) assertInjected(pod, ['agent']);
  });

  test('a Job: the Job controller creates injected pods', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    const template = agentPod('report', 'orders-db', { restartPolicy: 'Never' });
    await fx.batch.createNamespacedJob({
      namespace: ns,
      body: {
        metadata: { name: 'report' },
        spec: {
          backoffLimit: 0,
          template: {
            metadata: { labels: { app: 'report' }, annotations: template.metadata?.annotations ?? {} },
            spec: template.spec ?? { containers: [] },
          },
        },
      },
    });
    const [pod] = await waitForPods(fx.core, ns, 'app=report');
    assert.ok(pod);
    assertInjected(pod, ['agent']);
  });

  test('re-invocation after a later webhook adds a container: still one sidecar, the new container is an agent', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    // A second webhook that runs after ours (configurations are called in name order) and adds a container.
    const material = fx.webhooks.certificates.current();
    let lateCalls = 0;
    const late = await startAdmissionServer({
      host: '127.0.0.1',
      port: 0,
      certPem: material.certPem,
      keyPem: material.keyPem,
      logger: silentLogger,
      handlers: {
        '/add-container': (request) => {
          lateCalls++;
          const pod = request.object as k8s.V1Pod;
          if (pod.spec?.containers.some((c) => c.name === 'late') === true) return allowWithPatch(request.uid, []);
          return allowWithPatch(request.uid, [
            { op: 'add', path: '/spec/containers/-', value: { name: 'late', image: 'busybox' } },
          ]);
        },
      },
    });
    const admission = fx.kc.makeApiClient(k8s.AdmissionregistrationV1Api);
    const name = `zz-late-${fx.instance}`;
    await admission.createMutatingWebhookConfiguration({
      body: {
        metadata: { name },
        webhooks: [
          {
            name: 'late.test.chaperone.dev',
            clientConfig: {
              url: late.url('/add-container'),
              caBundle: Buffer.from(material.caBundlePem).toString('base64'),
            },
            rules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'] }],
            namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': ns } },
            failurePolicy: 'Fail',
            sideEffects: 'None',
            admissionReviewVersions: ['v1'],
            reinvocationPolicy: 'IfNeeded',
            timeoutSeconds: 5,
          },
        ],
      },
    });
    t.after(async () => {
      await admission.deleteMutatingWebhookConfiguration({ name }).catch(() => undefined);
      await late.close();
    });
    await createPod(ns, agentPod('reinvoked', 'orders-db'));
    const stored = await fx.core.readNamespacedPod({ namespace: ns, name: 'reinvoked' });
    assert.ok(lateCalls >= 1);
    assertInjected(stored, ['agent', 'late']);
  });

  test('a pod without the annotation is untouched', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    await createPod(ns, { metadata: { name: 'plain' }, spec: { containers: [{ name: 'app', image: 'busybox' }] } });
    const stored = await fx.core.readNamespacedPod({ namespace: ns, name: 'plain' });
    assert.equal(stored.spec?.initContainers, undefined);
    assert.equal(stored.metadata?.annotations?.[ANNOTATION_INJECTED], undefined);
    assert.equal(stored.spec?.containers[0]?.env, undefined);
    // The ordinary automounted token is still there: nothing was changed.
    assert.ok(stored.spec?.volumes?.some((v) => v.name.startsWith('kube-api-access-')));
  });

  test('a namespace without the injection label is untouched', async (t) => {
    const ns = await fx.namespace(t, { injection: false });
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    await createPod(ns, agentPod('not-opted-in', 'orders-db'));
    const stored = await fx.core.readNamespacedPod({ namespace: ns, name: 'not-opted-in' });
    assert.equal(stored.spec?.initContainers, undefined);
  });

  test('kube-system is never injected, even when labelled for injection', async (t) => {
    const labels = { [LABEL_INJECTION]: 'enabled', [INSTANCE_LABEL]: fx.instance };
    const patchLabels = (value: Record<string, string | null>) =>
      fx.core.patchNamespace(
        { name: 'kube-system', body: { metadata: { labels: value } } },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
    await patchLabels(labels);
    const name = `chaperone-test-${fx.instance}`;
    t.after(async () => {
      await fx.core.deleteNamespacedPod({ namespace: 'kube-system', name }).catch(() => undefined);
      await patchLabels({ [LABEL_INJECTION]: null, [INSTANCE_LABEL]: null });
    });
    await createPod('kube-system', agentPod(name, 'orders-db'));
    const stored = await fx.core.readNamespacedPod({ namespace: 'kube-system', name });
    assert.equal(stored.spec?.initContainers, undefined);
    assert.equal(stored.metadata?.annotations?.[ANNOTATION_INJECTED], undefined);
  });

  test('a missing ProtectedResource is refused with its name', async (t) => {
    const ns = await fx.namespace(t);
    const status = await rejection(createPod(ns, agentPod('lost', 'no-such-db')));
    assert.match(status.message ?? '', /ProtectedResource no-such-db not found in namespace/);
  });

  test('outside strict mode an agent mounting the credential Secret is injected with a warning', async (t) => {
    const ns = await fx.namespace(t);
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    const pod = agentPod('leaky', 'orders-db', {
      volumes: [{ name: 'creds', secret: { secretName: CREDENTIAL_SECRET } }],
    });
    const c = pod.spec?.containers[0];
    assert.ok(c);
    c.volumeMounts = [{ name: 'creds', mountPath: '/creds' }];
    // Warnings travel as HTTP Warning headers, which kubectl prints on stderr.
    const { stderr } = await kubectlWithStderr(
      ['create', '-n', ns, '-f', '-'],
      JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: pod.metadata, spec: pod.spec }),
    );
    assert.match(
      stderr,
      /Warning: chaperone: container agent mounts volume creds with credential Secret orders-db-credentials/,
    );
    const stored = await fx.core.readNamespacedPod({ namespace: ns, name: 'leaky' });
    assert.equal(stored.spec?.initContainers?.[0]?.name, SIDECAR_CONTAINER);
  });
});

describe('strict mode', () => {
  for (const [field, spec, pattern] of [
    ['hostNetwork', { hostNetwork: true }, /hostNetwork is true/],
    ['shareProcessNamespace', { shareProcessNamespace: true }, /shareProcessNamespace is true/],
    ['hostPID', { hostPID: true }, /hostPID is true/],
  ] as const) {
    test(`refuses ${field} with a clear message`, async (t) => {
      const ns = await fx.namespace(t, { strict: true });
      await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
      const status = await rejection(createPod(ns, agentPod('bad', 'orders-db', { ...spec })));
      assert.equal(status.code, 403);
      assert.match(status.message ?? '', /chaperone strict mode/);
      assert.match(status.message ?? '', pattern);
    });
  }

  test('refuses an agent container that mounts the credential Secret', async (t) => {
    const ns = await fx.namespace(t, { strict: true });
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    const pod = agentPod('leaky', 'orders-db', {
      volumes: [{ name: 'creds', secret: { secretName: CREDENTIAL_SECRET } }],
    });
    const c = pod.spec?.containers[0];
    assert.ok(c);
    c.volumeMounts = [{ name: 'creds', mountPath: '/creds' }];
    const status = await rejection(createPod(ns, pod));
    assert.match(
      status.message ?? '',
      /container agent mounts volume creds with credential Secret orders-db-credentials/,
    );
  });

  test('an injected pod passes the validating webhook', async (t) => {
    const ns = await fx.namespace(t, { strict: true });
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    await createPod(ns, agentPod('good', 'orders-db'));
    assertInjected(await fx.core.readNamespacedPod({ namespace: ns, name: 'good' }), ['agent']);
  });

  test('the validating webhook refuses a sidecar-less pod that names ProtectedResources', async (t) => {
    // Strict but not opted in to injection: only the validating webhook sees the pod.
    const ns = await fx.namespace(t, { strict: true, injection: false });
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    const status = await rejection(createPod(ns, agentPod('bypass', 'orders-db')));
    assert.equal(status.code, 403);
    assert.match(status.message ?? '', /names ProtectedResources \(orders-db\) but has no chaperone-sidecar/);
  });

  test('the validating webhook refuses the injector annotation being edited', async (t) => {
    const ns = await fx.namespace(t, { strict: true });
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    await createPod(ns, agentPod('edited', 'orders-db'));
    const status = await rejection(
      fx.core.patchNamespacedPod(
        {
          namespace: ns,
          name: 'edited',
          body: { metadata: { annotations: { [ANNOTATION_SIDECAR_CONFIG]: 'listeners: []' } } },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      ),
    );
    assert.match(status.message ?? '', /cannot change/);
  });

  test('the validating webhook refuses ephemeral containers targeting the sidecar or mounting its volumes', async (t) => {
    const ns = await fx.namespace(t, { strict: true });
    await createPostgresResource(fx, ns, { listenPort: LISTEN_PORT });
    await createPod(ns, agentPod('debugged', 'orders-db'));
    const pod = await fx.core.readNamespacedPod({ namespace: ns, name: 'debugged' });
    assert.ok(pod.spec);
    pod.spec.ephemeralContainers = [
      { name: 'debugger', image: 'busybox', targetContainerName: SIDECAR_CONTAINER },
      // The audit volume holds the sidecar's signing key.
      { name: 'snooper', image: 'busybox', volumeMounts: [{ name: VOLUME_AUDIT, mountPath: '/spool' }] },
    ];
    const status = await rejection(
      fx.core.replaceNamespacedPodEphemeralcontainers({ namespace: ns, name: 'debugged', body: pod }),
    );
    assert.match(status.message ?? '', /ephemeral container debugger targets chaperone-sidecar/);
    assert.match(status.message ?? '', /ephemeral container snooper mounts chaperone-audit/);
  });
});
