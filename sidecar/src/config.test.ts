// What the sidecar configuration takes from the environment: the pod's identity (downward API) where the
// file leaves it empty, and the in-cluster API server for the durable audit trail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, eventLoopPlan, perLoopLimits, setLoopShares, validateConfig } from './config.ts';

const base = {
  listeners: [
    {
      name: 'orders-db',
      type: 'postgres',
      listen: '127.0.0.1:5432',
      upstream: {
        host: 'db',
        database: 'orders',
        usernameFile: '/etc/chaperone/credentials/username',
        passwordFile: '/etc/chaperone/credentials/password',
      },
      auditFailureMode: 'FailClosed',
    },
  ],
  policy: { bundleDir: '/etc/chaperone/policies' },
  identity: { issuers: [{ issuer: 'https://issuer', jwksFile: '/etc/chaperone/jwks.json' }] },
};
const durable = { ...base, audit: { spoolDir: '/var/lib/chaperone/audit' } };
const inCluster = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
const downward = { POD_NAME: 'job-x7k2p', POD_NAMESPACE: 'ci', POD_UID: 'uid-1' };

test('empty pod fields come from POD_NAME, POD_NAMESPACE and POD_UID; values in the file win', () => {
  assert.deepEqual(validateConfig(base, downward).pod, { namespace: 'ci', name: 'job-x7k2p', uid: 'uid-1' });
  const named = validateConfig({ ...base, pod: { namespace: 'ci', name: 'agent' } }, downward);
  assert.deepEqual(named.pod, { namespace: 'ci', name: 'agent', uid: 'uid-1' });
  assert.deepEqual(validateConfig(base).pod, { namespace: '', name: '', uid: '' });
});

test('the durable trail needs a pod name, a namespace and a way to the API server, and says where each comes from', () => {
  assert.throws(
    () => validateConfig(durable),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /\/audit\/kubernetes\/namespace: set it \(or pod\.namespace, or POD_NAMESPACE\)/);
      assert.match(err.message, /\/pod\/name: set it \(or POD_NAME\)/);
      assert.match(err.message, /\/audit\/kubernetes\/server: not set, and KUBERNETES_SERVICE_HOST/);
      return true;
    },
  );
  const config = validateConfig(durable, { ...downward, ...inCluster });
  assert.deepEqual(config.audit.kubernetes, {
    server: 'https://10.96.0.1:443',
    tokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token',
    caFile: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt',
  });
  const ipv6 = validateConfig(durable, {
    ...downward,
    KUBERNETES_SERVICE_HOST: 'fd00::1',
    KUBERNETES_SERVICE_PORT: '443',
  });
  assert.equal(ipv6.audit.kubernetes?.server, 'https://[fd00::1]:443');
});

test('explicit API access: server and files as given, or a kubeconfig alone', () => {
  const explicit = validateConfig(
    {
      ...durable,
      pod: { namespace: 'ci', name: 'agent' },
      audit: { ...durable.audit, kubernetes: { server: 'https://api:6443', tokenFile: '/run/token' } },
    },
    inCluster,
  );
  assert.deepEqual(explicit.audit.kubernetes, {
    server: 'https://api:6443',
    tokenFile: '/run/token',
    caFile: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt',
  });
  const kubeconfig = { ...durable, pod: { namespace: 'ci', name: 'agent' } };
  const fromFile = validateConfig({ ...kubeconfig, audit: { ...durable.audit, kubernetes: { kubeconfig: '/k' } } });
  assert.deepEqual(fromFile.audit.kubernetes, { kubeconfig: '/k' });
  assert.throws(
    () =>
      validateConfig({
        ...kubeconfig,
        audit: { ...durable.audit, kubernetes: { kubeconfig: '/k', server: 'https://api', caFile: '/ca' } },
      }),
    /\/audit\/kubernetes: kubeconfig excludes server, caFile/,
  );
});

test('eventLoops: unset by default, at most 16; more than one refuses what only one loop would see (fail closed)', () => {
  assert.equal(validateConfig(base).eventLoops, undefined);
  assert.equal(validateConfig({ ...base, eventLoops: 2 }).eventLoops, 2);
  for (const bad of [0, 17, 1.5]) {
    assert.throws(() => validateConfig({ ...base, eventLoops: bad }), /\/eventLoops: /);
  }
  const unsupported = {
    ...durable,
    eventLoops: 2,
    approvals: {},
    credentials: { dir: '/var/run/chaperone/credentials', url: 'https://operator', resources: ['orders-db'] },
  };
  assert.throws(
    () => validateConfig(unsupported, { ...downward, ...inCluster }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      for (const what of ['the durable audit spool', 'approvals', 'delivered credentials']) {
        assert.match(err.message, new RegExp(`/eventLoops: more than one event loop does not support ${what} yet`));
      }
      assert.match(err.message, /set eventLoops: 1/);
      return true;
    },
  );
  // The same configuration with one loop has none of these problems.
  assert.equal(validateConfig({ ...unsupported, eventLoops: 1 }, { ...downward, ...inCluster }).eventLoops, 1);
});

test('eventLoops: the bounds a loop counts alone (upstream reuse) are split into equal shares; each loop needs one', () => {
  const listener = base.listeners[0];
  const three = validateConfig({
    ...base,
    eventLoops: 3,
    listeners: [{ ...listener, maxUnauthenticatedPerSource: 16, upstreamReuse: { maxParkedPerKey: 10 } }],
  });
  const share = perLoopLimits(three).listeners[0];
  assert.equal(share?.type, 'postgres');
  assert.equal(share.upstreamReuse.maxParkedPerKey, 3);
  assert.equal(share.upstreamReuse.maxParked, 85);
  // maxConnections and maxUnauthenticatedPerSource are counted across the loops, not split.
  assert.equal(share.maxConnections, 256);
  assert.equal(share.maxUnauthenticatedPerSource, 16);
  const one = validateConfig({ ...base, eventLoops: 1 });
  assert.equal(perLoopLimits(one), one, 'one loop keeps the configuration as it is');
  assert.throws(
    () =>
      validateConfig({ ...base, eventLoops: 4, listeners: [{ ...listener, upstreamReuse: { maxParkedPerKey: 3 } }] }),
    /\/listeners\/0\/upstreamReuse\/maxParkedPerKey: at least eventLoops \(4\); every loop gets an equal share/,
  );
  // A per-source bound below the loops is whole on every loop: no share to be 0.
  const few = validateConfig({ ...base, eventLoops: 4, listeners: [{ ...listener, maxUnauthenticatedPerSource: 1 }] });
  const fewShare = perLoopLimits(few).listeners[0];
  assert.equal(fewShare?.type, 'postgres');
  assert.equal(fewShare.maxUnauthenticatedPerSource, 1);
  assert.equal(
    eventLoopPlan(validateConfig({ ...base, listeners: [{ ...listener, maxUnauthenticatedPerSource: 1 }] })).max,
    2,
  );
});

test('lazy event loops: the default where a second loop is allowed; eventLoops pins; off where a loop is refused', () => {
  assert.deepEqual(eventLoopPlan(validateConfig(base)), { eager: 1, max: 2, lazyOffBecause: [] });
  assert.deepEqual(eventLoopPlan(validateConfig({ ...base, eventLoops: 1 })), { eager: 1, max: 1, lazyOffBecause: [] });
  assert.deepEqual(eventLoopPlan(validateConfig({ ...base, eventLoops: 3 })), { eager: 3, max: 3, lazyOffBecause: [] });
  assert.equal(eventLoopPlan(validateConfig({ ...base, lazyEventLoops: { max: 4 } })).max, 4);
  assert.equal(eventLoopPlan(validateConfig({ ...base, lazyEventLoops: { max: 1 } })).max, 1);
  // The durable spool (and approvals, ...) keep the sidecar on one loop, without a configuration error.
  const spool = eventLoopPlan(validateConfig(durable, { ...downward, ...inCluster }));
  assert.equal(spool.max, 1);
  assert.match(spool.lazyOffBecause.join('\n'), /the durable audit spool/);
  // A bound too small to share keeps one loop too.
  const listener = base.listeners[0];
  const small = validateConfig({ ...base, listeners: [{ ...listener, upstreamReuse: { maxParked: 1 } }] });
  assert.equal(eventLoopPlan(small).max, 1);
  assert.throws(
    () => validateConfig({ ...base, lazyEventLoops: { busyUtilisation: 2 } }),
    /\/lazyEventLoops\/busyUtilisation/,
  );
});

test('lazy event loops: the main loop has the whole bounds alone and its share while more loops run', () => {
  const config = validateConfig(base);
  const live = structuredClone(config);
  const bounds = () => {
    const l = live.listeners[0];
    assert.equal(l?.type, 'postgres');
    return [l.upstreamReuse.maxParkedPerKey, l.upstreamReuse.maxParked];
  };
  const perSource = () => (live.listeners[0]?.type === 'postgres' ? live.listeners[0].maxUnauthenticatedPerSource : 0);
  const whole = bounds();
  setLoopShares(live, config, 2);
  assert.deepEqual(
    bounds(),
    whole.map((v) => Math.floor(v / 2)),
  );
  // The per-source bound is counted across loops (core/source-counts.ts): whole while a second loop starts.
  assert.equal(perSource(), 16);
  setLoopShares(live, config, 1);
  assert.deepEqual(bounds(), whole);
  assert.equal(perSource(), 16);
  // The workers' shares (perLoopLimits at the most loops) are left as configured by it.
  const workers = perLoopLimits(config).listeners[0];
  assert.equal(workers?.type, 'postgres');
  assert.equal(workers.upstreamReuse.maxParkedPerKey, Math.floor((whole[0] ?? 0) / 2));
  assert.equal(workers.maxUnauthenticatedPerSource, 16);
});
