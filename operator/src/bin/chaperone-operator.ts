#!/usr/bin/env node
// chaperone-operator: compiles AccessPolicies into WebAssembly bundles and publishes them to sidecars.
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { createLogger, isLogLevel } from '../observability/logger.ts';
import { startOperator } from '../operator.ts';

const HELP = `Usage: chaperone-operator [options]

Watches AccessPolicy objects, compiles each with OPA into a WebAssembly bundle and publishes it as the
ConfigMap chaperone-policy-<name> that sidecars mount; reports the result in the policy's status
(docs/operator.md).

Options:
      --kubeconfig FILE               kubeconfig to use (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)
      --namespace NS                  watch only this namespace (default: all namespaces)
      --leader-elect                  run reconcilers only while holding the leader Lease (use with >1 replica)
      --leader-election-namespace NS  namespace of the Lease (default: --namespace, else $POD_NAMESPACE,
                                      else chaperone-system)
      --leader-election-id NAME       name of the Lease (default: chaperone-operator)
      --metrics-bind-address ADDR     host:port for /metrics, /healthz, /readyz; "0" disables (default: :8080)
      --workers N                     concurrent reconciles (default: 2)
      --resync-period SECONDS         revisit every policy this often (default: 600)
      --opa PATH                      opa binary (default: $CHAPERONE_OPA, else .tools/bin/opa)
      --log-level LEVEL               debug, info, warn or error (default: info)
  -h, --help                          show this help

Signals: SIGTERM and SIGINT stop the reconcilers, release the Lease and exit 0. Losing the Lease exits 1.`;

function fail(message: string): never {
  console.error(`chaperone-operator: ${message}\n\n${HELP}`);
  process.exit(2);
}

let values;
try {
  ({ values } = parseArgs({
    options: {
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'leader-elect': { type: 'boolean' },
      'leader-election-namespace': { type: 'string' },
      'leader-election-id': { type: 'string' },
      'metrics-bind-address': { type: 'string' },
      workers: { type: 'string' },
      'resync-period': { type: 'string' },
      opa: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  fail(err instanceof Error ? err.message : String(err));
}

if (values.help === true) {
  console.log(HELP);
  process.exit(0);
}

const level = values['log-level'] ?? 'info';
if (!isLogLevel(level)) fail(`--log-level must be debug, info, warn or error, not ${level}`);
const positiveInt = (flag: string, raw: string | undefined): number | undefined => {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) fail(`--${flag} must be a positive integer`);
  return n;
};
const workers = positiveInt('workers', values.workers);
const resyncSeconds = positiveInt('resync-period', values['resync-period']);

const logger = createLogger({ level, base: { component: 'chaperone-operator' } });
const kubeConfig = new KubeConfig();
try {
  if (values.kubeconfig === undefined) kubeConfig.loadFromDefault();
  else kubeConfig.loadFromFile(values.kubeconfig);
} catch (err) {
  console.error(`chaperone-operator: cannot load kubeconfig: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}

try {
  const operator = await startOperator({
    kubeConfig,
    logger,
    leaderElect: values['leader-elect'] === true,
    ...(values.namespace === undefined ? {} : { namespace: values.namespace }),
    ...(values['leader-election-namespace'] === undefined
      ? {}
      : { leaderElectionNamespace: values['leader-election-namespace'] }),
    ...(values['leader-election-id'] === undefined ? {} : { leaderElectionId: values['leader-election-id'] }),
    ...(values['metrics-bind-address'] === undefined ? {} : { metricsBindAddress: values['metrics-bind-address'] }),
    ...(workers === undefined ? {} : { workers }),
    ...(resyncSeconds === undefined ? {} : { resyncPeriodMs: resyncSeconds * 1000 }),
    ...(values.opa === undefined ? {} : { compileOptions: { opaPath: values.opa } }),
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    void operator.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  void operator.done.then(() => {
    logger.error('leadership lost; exiting so a fresh replica can campaign again');
    void operator.stop().finally(() => process.exit(1));
  });
} catch (err) {
  logger.error('operator failed to start', { error: err });
  process.exit(1);
}
