// D-4 to D-7 of issue 17, against the real API server with the operator's webhooks: what the injector
// rendered stays as it rendered it (create, update by every client, ephemeral containers), other
// containers cannot reach the sidecar, and agents carry only the Chaperone audience. The attacker is a real
// user bound to the built-in `edit` role, and one who may also add ephemeral containers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { SIGNER_CERTIFICATION_PATH } from '@chaperone/api';
import { LABEL_INJECTION, LABEL_INJECTION_ENABLED } from '../../operator/src/injection/constants.ts';
import { sealProblems } from '../../operator/src/injection/sealed-pod.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { kubeletToken } from '../harness/identities.ts';
import { api, certify, kubectlAs, refusal, startTrustFixture, type TrustFixture } from './trust-fixture.ts';
import type { TestIdentity } from '../harness/identities.ts';

const SIDECAR = 'chaperone-sidecar';

function agentPod(name: string, spec: Partial<k8s.V1PodSpec> = {}, agent: Partial<k8s.V1Container> = {}): k8s.V1Pod {
  return {
    metadata: { name, annotations: { 'chaperone.dev/inject': 'true', 'chaperone.dev/resources': 'orders-db' } },
    spec: { containers: [{ name: 'agent', image: 'postgres:17', ...agent }], ...spec },
  };
}

async function createAs(identity: TestIdentity, namespace: string, body: k8s.V1Pod): Promise<k8s.V1Status> {
  return refusal(api(identity, k8s.CoreV1Api).createNamespacedPod({ namespace, body }));
}

/** A pod as stored, made into a body a user could create again under another name. */
function copyOf(pod: k8s.V1Pod, name: string): k8s.V1Pod {
  const copy = structuredClone(pod);
  copy.metadata = {
    name,
    ...(pod.metadata?.annotations === undefined ? {} : { annotations: { ...pod.metadata.annotations } }),
  };
  delete copy.status;
  return copy;
}

async function expectRefused(what: string, r: Promise<{ code: number; stderr: string }>, pattern: RegExp) {
  const result = await r;
  assert.notEqual(result.code, 0, `${what} was admitted`);
  assert.match(result.stderr, pattern, what);
}

test('sealed pods: create, update and ephemeral containers as an editor and a debugger', async (t) => {
  const fx: TrustFixture = await startTrustFixture(t);
  const { ns, core } = fx;
  const genuine = await fx.injectedPod(ns, 'agent');
  const keys = fx.operator.authority?.publicKeys ?? [];
  assert.deepEqual(sealProblems(genuine, ns, keys), [], 'the stored pod matches its seal');

  await t.test(
    'D-4: own containers named or posing as the sidecar, and pre-made sidecar volumes, are refused',
    async () => {
      const credentials = { name: 'creds', secret: { secretName: 'orders-db-credentials' } };
      const cases: [string, k8s.V1Pod, RegExp][] = [
        [
          'a container named chaperone-sidecar with the credential',
          agentPod('own-1', { volumes: [credentials] }, {}),
          /only the injector may set/,
        ],
        [
          'a renamed sidecar with the credential',
          agentPod(
            'own-2',
            { volumes: [credentials] },
            { name: 'chaperone-sidecar-2', volumeMounts: [{ name: 'creds', mountPath: '/c' }] },
          ),
          /mounts volume creds with credential Secret orders-db-credentials/,
        ],
        [
          'an init container named chaperone-sidecar without the injection annotation',
          {
            metadata: { name: 'own-3' },
            spec: {
              initContainers: [{ name: SIDECAR, image: 'attacker.example/sidecar:1', restartPolicy: 'Always' }],
              containers: [{ name: 'agent', image: 'postgres:17' }],
            },
          },
          /only the injector may set/,
        ],
        [
          'a pre-made chaperone-audit volume shared with the agent',
          agentPod(
            'own-4',
            { volumes: [{ name: 'chaperone-audit', emptyDir: {} }] },
            { volumeMounts: [{ name: 'chaperone-audit', mountPath: '/spool' }] },
          ),
          /volume chaperone-audit, which only the injector may set/,
        ],
      ];
      const named = cases[0];
      assert.ok(named);
      const container = named[1].spec?.containers[0];
      assert.ok(container);
      container.name = SIDECAR;
      container.volumeMounts = [{ name: 'creds', mountPath: '/c' }];
      for (const [what, body, pattern] of cases) {
        const status = await createAs(fx.editor, ns, body);
        assert.equal(status.code, 403, what);
        assert.match(status.message ?? '', pattern, what);
      }
    },
  );

  await t.test('D-4: a copy of a sealed pod is admitted as is, and refused once anything sealed differs', async () => {
    const exact = copyOf(genuine, 'copy-exact');
    await api(fx.editor, k8s.CoreV1Api).createNamespacedPod({ namespace: ns, body: exact });
    const stored = await core.readNamespacedPod({ namespace: ns, name: 'copy-exact' });
    assert.deepEqual(sealProblems(stored, ns, keys), []);
    const variants: [string, (p: k8s.V1Pod) => void, RegExp][] = [
      [
        'image by digest',
        (p) => {
          p.spec!.initContainers![0]!.image = 'ghcr.io/chaperone/chaperone-sidecar@sha256:' + 'a'.repeat(64);
        },
        /differ from what the operator rendered/,
      ],
      [
        'another config file',
        (p) => {
          p.spec!.initContainers![0]!.args = ['--config', '/tmp/mine.yaml'];
        },
        /differ from what the operator rendered/,
      ],
      [
        'a lifecycle hook',
        (p) => {
          p.spec!.initContainers![0]!.lifecycle = {
            postStart: { exec: { command: ['sh', '-c', 'cp /var/lib/chaperone/audit/signing-key.jwk /tmp'] } },
          };
        },
        /differ from what the operator rendered/,
      ],
      [
        'the config annotation',
        (p) => {
          p.metadata!.annotations!['chaperone.dev/sidecar-config'] += '# mine\n';
        },
        /differ from what the operator rendered/,
      ],
      [
        'an agent mounting the spool',
        (p) => {
          p.spec!.containers[0]!.volumeMounts!.push({ name: 'chaperone-audit', mountPath: '/spool' });
        },
        /container agent mounts chaperone-audit, a volume of chaperone-sidecar/,
      ],
      [
        'the sidecar moved into containers',
        (p) => {
          const s = p.spec!.initContainers!.shift()!;
          p.spec!.containers.push(s);
        },
        /chaperone-sidecar is not an init container|differ/,
      ],
      [
        'shared process namespace',
        (p) => {
          p.spec!.shareProcessNamespace = true;
        },
        /shareProcessNamespace is true/,
      ],
    ];
    for (const [what, change, pattern] of variants) {
      const body = copyOf(genuine, `copy-${what.replace(/[^a-z]+/g, '-')}`.slice(0, 60).replace(/-+$/, ''));
      change(body);
      const status = await createAs(fx.editor, ns, body);
      assert.equal(status.code, 403, what);
      assert.match(status.message ?? '', pattern, what);
    }
  });

  await t.test("D-5: the sidecar's image and the injector's annotations cannot change, by any client", async () => {
    const image = 'attacker.example/chaperone-sidecar:evil';
    const digest = `ghcr.io/chaperone/chaperone-sidecar@sha256:${'b'.repeat(64)}`;
    const sealed = /sealed by the operator|set by the injector and cannot change/;
    await expectRefused(
      'kubectl set image',
      kubectlAs(fx.editor, ['set', 'image', 'pod/agent', `${SIDECAR}=${image}`, '-n', ns]),
      sealed,
    );
    await expectRefused(
      'JSON patch',
      kubectlAs(fx.editor, [
        'patch',
        'pod',
        'agent',
        '-n',
        ns,
        '--type=json',
        '-p',
        JSON.stringify([{ op: 'replace', path: '/spec/initContainers/0/image', value: digest }]),
      ]),
      sealed,
    );
    await expectRefused(
      'strategic merge patch',
      kubectlAs(fx.editor, [
        'patch',
        'pod',
        'agent',
        '-n',
        ns,
        '-p',
        JSON.stringify({ spec: { initContainers: [{ name: SIDECAR, image }] } }),
      ]),
      sealed,
    );
    await expectRefused(
      'merge patch',
      kubectlAs(fx.editor, [
        'patch',
        'pod',
        'agent',
        '-n',
        ns,
        '--type=merge',
        '-p',
        JSON.stringify({ metadata: { annotations: { 'chaperone.dev/seal': null } } }),
      ]),
      sealed,
    );
    const current = await core.readNamespacedPod({ namespace: ns, name: 'agent' });
    const replaced = structuredClone(current);
    replaced.spec!.initContainers![0]!.image = image;
    await expectRefused(
      'kubectl replace',
      kubectlAs(fx.editor, ['replace', '-f', '-'], JSON.stringify(replaced)),
      sealed,
    );
    const applied = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'agent', namespace: ns },
      spec: { initContainers: [{ name: SIDECAR, image }] },
    };
    await expectRefused(
      'server-side apply',
      kubectlAs(
        fx.editor,
        ['apply', '--server-side', '--force-conflicts', '--field-manager=mallory', '-f', '-'],
        JSON.stringify(applied),
      ),
      sealed,
    );
    await expectRefused(
      'removing the seal',
      kubectlAs(fx.editor, ['annotate', 'pod', 'agent', '-n', ns, 'chaperone.dev/seal-']),
      sealed,
    );
    await expectRefused(
      'editing the sidecar configuration',
      kubectlAs(fx.editor, [
        'annotate',
        '--overwrite',
        'pod',
        'agent',
        '-n',
        ns,
        'chaperone.dev/sidecar-config=listeners: []',
      ]),
      sealed,
    );
    // The agent's own image may change, and so may labels: only what the injector sealed is frozen.
    const ok = await kubectlAs(fx.editor, ['set', 'image', 'pod/agent', 'agent=postgres:17.1', '-n', ns]);
    assert.equal(ok.code, 0, ok.stderr);
    const labelled = await kubectlAs(fx.editor, ['label', 'pod', 'agent', '-n', ns, 'team=reports']);
    assert.equal(labelled.code, 0, labelled.stderr);
    assert.deepEqual(sealProblems(await core.readNamespacedPod({ namespace: ns, name: 'agent' }), ns, keys), []);
  });

  await t.test('D-6: strict mode refuses ephemeral containers in pods with the sidecar, in every shape', async () => {
    const shapes: [string, k8s.V1EphemeralContainer][] = [
      ['plain', { name: 'dbg-plain', image: 'busybox' }],
      ['privileged', { name: 'dbg-priv', image: 'busybox', securityContext: { privileged: true } }],
      [
        'SYS_PTRACE',
        { name: 'dbg-ptrace', image: 'busybox', securityContext: { capabilities: { add: ['SYS_PTRACE'] } } },
      ],
      ['targeting the sidecar', { name: 'dbg-target', image: 'busybox', targetContainerName: SIDECAR }],
      [
        'mounting the spool',
        { name: 'dbg-spool', image: 'busybox', volumeMounts: [{ name: 'chaperone-audit', mountPath: '/s' }] },
      ],
    ];
    for (const [what, container] of shapes) {
      const pod = await core.readNamespacedPod({ namespace: ns, name: 'agent' });
      pod.spec!.ephemeralContainers = [...(pod.spec?.ephemeralContainers ?? []), container];
      const status = await refusal(
        api(fx.debugger, k8s.CoreV1Api).replaceNamespacedPodEphemeralcontainers({
          namespace: ns,
          name: 'agent',
          body: pod,
        }),
      );
      assert.equal(status.code, 403, what);
      // Both webhooks refuse it (strict mode: any; the seal: this shape); the API server reports the first.
      assert.match(
        status.message ?? '',
        /ephemeral containers are refused in pods with the Chaperone sidecar in strict mode|sealed by the operator: ephemeral container/,
        what,
      );
    }
    await expectRefused(
      'kubectl debug --target',
      kubectlAs(fx.debugger, [
        'debug',
        'agent',
        '-n',
        ns,
        '--image=busybox',
        `--target=${SIDECAR}`,
        '--profile=general',
      ]),
      /ephemeral containers are refused|targets chaperone-sidecar/,
    );
    await expectRefused(
      'JSON patch on the subresource',
      kubectlAs(fx.debugger, [
        'patch',
        'pod',
        'agent',
        '-n',
        ns,
        '--subresource=ephemeralcontainers',
        '--type=json',
        '-p',
        JSON.stringify([
          {
            op: 'add',
            path: '/spec/ephemeralContainers',
            value: [{ name: 'dbg-json', image: 'busybox', securityContext: { privileged: true } }],
          },
        ]),
      ]),
      // Both validating webhooks refuse this one (strict mode: any; the seal: a privileged one); the API
      // server calls them in parallel and reports whichever refusal it has first.
      /ephemeral containers are refused|sealed by the operator: ephemeral container dbg-json is privileged/,
    );
    // The plain editor has no right to ephemeral containers at all.
    const pod = await core.readNamespacedPod({ namespace: ns, name: 'agent' });
    pod.spec!.ephemeralContainers = [{ name: 'dbg-editor', image: 'busybox' }];
    const rbac = await refusal(
      api(fx.editor, k8s.CoreV1Api).replaceNamespacedPodEphemeralcontainers({
        namespace: ns,
        name: 'agent',
        body: pod,
      }),
    );
    assert.equal(rbac.code, 403);
    assert.match(rbac.message ?? '', /cannot update resource "pods\/ephemeralcontainers"/);
  });

  await t.test(
    'outside strict mode a sealed sidecar stays sealed, and ephemeral containers must keep away from it',
    async (t2) => {
      const loose = await fx.namespace(t2, { [LABEL_INJECTION]: LABEL_INJECTION_ENABLED });
      const { createPostgresResource } = await import('../injection/injection-fixture.ts');
      await createPostgresResource({ core, custom: fx.custom }, loose);
      const pod = await fx.injectedPod(loose, 'agent');
      await expectRefused(
        'an image change outside strict mode',
        kubectlAs(fx.editor, ['set', 'image', 'pod/agent', `${SIDECAR}=attacker.example/sidecar:1`, '-n', loose]),
        /sealed by the operator/,
      );
      const refusedShapes: [string, k8s.V1EphemeralContainer, RegExp][] = [
        ['privileged', { name: 'l-priv', image: 'busybox', securityContext: { privileged: true } }, /is privileged/],
        [
          'SYS_PTRACE',
          { name: 'l-ptrace', image: 'busybox', securityContext: { capabilities: { add: ['SYS_PTRACE'] } } },
          /adds capability SYS_PTRACE/,
        ],
        [
          'CAP_SYS_ADMIN',
          { name: 'l-admin', image: 'busybox', securityContext: { capabilities: { add: ['CAP_SYS_ADMIN'] } } },
          /adds capability CAP_SYS_ADMIN/,
        ],
        [
          'targeting the sidecar',
          { name: 'l-target', image: 'busybox', targetContainerName: SIDECAR },
          /targets chaperone-sidecar/,
        ],
        [
          'mounting the API token',
          {
            name: 'l-token',
            image: 'busybox',
            volumeMounts: [{ name: 'chaperone-sidecar-api-access', mountPath: '/t' }],
          },
          /mounts chaperone-sidecar-api-access/,
        ],
      ];
      for (const [what, container, pattern] of refusedShapes) {
        const current = await core.readNamespacedPod({ namespace: loose, name: 'agent' });
        current.spec!.ephemeralContainers = [...(current.spec?.ephemeralContainers ?? []), container];
        const status = await refusal(
          api(fx.debugger, k8s.CoreV1Api).replaceNamespacedPodEphemeralcontainers({
            namespace: loose,
            name: 'agent',
            body: current,
          }),
        );
        assert.equal(status.code, 403, what);
        assert.match(status.message ?? '', pattern, what);
      }
      // A debug container that keeps away from the sidecar is the documented safe shape outside strict mode.
      const current = await core.readNamespacedPod({ namespace: loose, name: 'agent' });
      current.spec!.ephemeralContainers = [
        {
          name: 'l-ok',
          image: 'busybox',
          targetContainerName: 'agent',
          securityContext: { capabilities: { add: ['NET_BIND_SERVICE'] } },
        },
      ];
      await api(fx.debugger, k8s.CoreV1Api).replaceNamespacedPodEphemeralcontainers({
        namespace: loose,
        name: 'agent',
        body: current,
      });
      assert.ok(pod.metadata?.uid);
    },
  );

  await t.test(
    'D-7: agents carry only the "chaperone" audience: strict mode refuses, elsewhere the sidecar is not certified',
    async (t2) => {
      const tokenVolume = (audience: string | undefined): k8s.V1Volume => ({
        name: 'extra-token',
        projected: {
          sources: [{ serviceAccountToken: { path: 'token', ...(audience === undefined ? {} : { audience }) } }],
        },
      });
      const mount = { volumeMounts: [{ name: 'extra-token', mountPath: '/var/run/extra' }] };
      for (const audience of [controlPlaneEnv().issuer, 'https://kubernetes.default.svc', 'vault', '', undefined]) {
        const status = await createAs(
          fx.editor,
          ns,
          agentPod(`aud-${String(Math.random()).slice(2, 8)}`, { volumes: [tokenVolume(audience)] }, mount),
        );
        assert.equal(status.code, 403, `audience ${String(audience)}`);
        assert.match(
          status.message ?? '',
          /agents (may hold|get) only the (audience )?"chaperone" token/,
          `audience ${String(audience)}`,
        );
      }
      await api(fx.editor, k8s.CoreV1Api).createNamespacedPod({
        namespace: ns,
        body: agentPod('aud-ok', { volumes: [tokenVolume('chaperone')] }, mount),
      });
      // Outside strict mode the pod is admitted with a warning, but its sidecar is not attested.
      const loose = await fx.namespace(t2, { [LABEL_INJECTION]: LABEL_INJECTION_ENABLED });
      const { createPostgresResource } = await import('../injection/injection-fixture.ts');
      await createPostgresResource({ core, custom: fx.custom }, loose);
      const issuerToken = await fx.injectedPod(loose, 'aud-issuer', {
        spec: {
          volumes: [tokenVolume(controlPlaneEnv().issuer)],
          containers: [{ name: 'agent', image: 'postgres:17', ...mount }],
        },
      });
      const webhooks = fx.operator.webhooks;
      assert.ok(webhooks);
      const refused = await certify(
        webhooks.server.url(SIGNER_CERTIFICATION_PATH),
        webhooks.certificates.current().caBundlePem,
        await kubeletToken(issuerToken, undefined),
      );
      assert.equal(refused.status, 403);
      assert.match(refused.message, /agents may hold only the "chaperone" token/);
    },
  );

  await t.test(
    'agents that could reach the sidecar are refused: privileged, ptrace, host namespaces and paths',
    async () => {
      const cases: [string, k8s.V1Pod, RegExp][] = [
        [
          'privileged',
          agentPod('p-priv', {}, { securityContext: { privileged: true } }),
          /container agent is privileged/,
        ],
        [
          'ALL capabilities',
          agentPod('p-all', {}, { securityContext: { capabilities: { add: ['ALL'] } } }),
          /adds capability ALL/,
        ],
        [
          'lower-case sys_ptrace',
          agentPod('p-ptrace', {}, { securityContext: { capabilities: { add: ['sys_ptrace'] } } }),
          /adds capability sys_ptrace/,
        ],
        ['hostPID', agentPod('p-pid', { hostPID: true }), /hostPID is true/],
        [
          'hostPath',
          agentPod('p-path', { volumes: [{ name: 'node', hostPath: { path: '/var/lib/kubelet' } }] }),
          /volume node is a hostPath/,
        ],
        [
          'unmasked /proc',
          agentPod('p-proc', { hostUsers: false }, { securityContext: { procMount: 'Unmasked' } }),
          /procMount Unmasked/,
        ],
        [
          'an init agent with SYS_ADMIN',
          agentPod('p-init', {
            initContainers: [
              { name: 'setup', image: 'busybox', securityContext: { capabilities: { add: ['SYS_ADMIN'] } } },
            ],
          }),
          /container setup adds capability SYS_ADMIN/,
        ],
      ];
      for (const [what, body, pattern] of cases) {
        const status = await createAs(fx.editor, ns, body);
        assert.equal(status.code, 403, what);
        assert.match(status.message ?? '', pattern, what);
      }
    },
  );
});
