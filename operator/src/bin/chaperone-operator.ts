#!/usr/bin/env node
// chaperone-operator: compiles AccessPolicies into WebAssembly bundles and publishes them to sidecars,
// prunes expired Sessions, and (with --enable-webhooks) serves the sidecar-injection webhooks.
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { SIGNER_CERTIFICATION_PATH } from '@chaperone/api';
import { LABEL_INJECTION } from '../injection/constants.ts';
import { InjectionSettingsError, validateInjectionSettings, type InjectionSettings } from '../injection/settings.ts';
import { readEvidenceStoreConfig } from '../injection/evidence-store-config.ts';
import { createLogger, isLogLevel } from '../observability/logger.ts';
import { startOperator, type OperatorOptions } from '../operator.ts';
import { DEFAULT_MUTATING_NAME, DEFAULT_VALIDATING_NAME } from '../webhooks/webhook-registration.ts';

const HELP = `Usage: chaperone-operator [options]

Watches AccessPolicy objects, compiles each with OPA into a WebAssembly bundle and publishes it as the
ConfigMap chaperone-policy-<name> that sidecars mount, and reports the result in the policy's status;
deletes Session objects past their ProtectedResource's audit retention. Both run only on the leader.
With --enable-webhooks every replica also serves the admission webhooks that inject the sidecar into pods
annotated chaperone.dev/inject=true in namespaces labelled ${LABEL_INJECTION}=enabled (docs/operator.md,
docs/injection.md).

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
      --retention-interval SECONDS    prune expired Sessions of each namespace this often; sooner when a
                                      session expires earlier, at most every hour (default: 300)
      --log-level LEVEL               debug, info, warn or error (default: info)
  -h, --help                          show this help

Admission webhooks:
      --enable-webhooks               serve the pod injection and validation webhooks (every replica)
      --sidecar-image IMAGE           image of the injected sidecar (required with --enable-webhooks)
      --sidecar-image-pull-policy P   Always, IfNotPresent or Never (default: IfNotPresent)
      --sidecar-resources JSON        the injected sidecar's resources, e.g.
                                      '{"requests":{"cpu":"50m","memory":"96Mi"},"limits":{"memory":"256Mi"}}'
                                      (that is the default; docs/injection.md, "Resources")
      --service-account-issuer URL    the API server's --service-account-issuer, trusted by sidecars
                                      (default: https://kubernetes.default.svc.cluster.local)
      --webhook-host HOST             address the webhook server binds (default: 0.0.0.0)
      --webhook-port PORT             port of the webhook server (default: 9443)
      --webhook-cert-dir DIR          serve tls.crt/tls.key from this mounted directory (re-read when it
                                      changes; ca.crt goes to sidecars) instead of managing a CA and the
                                      Secret chaperone-webhook-tls: cert-manager owns the certificate and
                                      its CA injector writes caBundle
      --webhook-service-name NAME     Service in front of the webhooks; names the serving certificate
                                      <name>.<operator namespace>.svc (default: chaperone-webhook)
      --operator-namespace NS         namespace the operator runs in: holds the webhook certificate Secret,
                                      is never injected (default: $POD_NAMESPACE, else chaperone-system)
      --webhook-url BASE              local development: register the webhook configurations by this URL
                                      (for example https://127.0.0.1:9443) instead of expecting Helm-rendered
                                      ones; with --namespace they select only that namespace
      --mutating-webhook-configuration NAME    (default: ${DEFAULT_MUTATING_NAME})
      --validating-webhook-configuration NAME  (default: ${DEFAULT_VALIDATING_NAME})
                                      names of the webhook configurations whose caBundle the operator keeps
                                      in step (and which it registers with --webhook-url)

Audit authority (docs/audit.md, Trust model):
      --enable-audit-authority        keep an Ed25519 authority key (Secret chaperone-audit-authority, public
                                      JWKS in the ConfigMap of the same name); with --enable-webhooks, certify
                                      sidecar signing keys at ${SIGNER_CERTIFICATION_PATH} after a TokenReview
                                      of the pod-bound token; on the leader, sign checkpoints of every
                                      Session head (ConfigMap chaperone-audit-checkpoint, and the log)
      --audit-namespace NS            where the authority Secret and ConfigMaps live (default:
                                      --operator-namespace, else $POD_NAMESPACE, else chaperone-system)
      --checkpoint-interval SECONDS   time between checkpoints; none is written when nothing changed
                                      (default: 300)

Token exchange (docs/identity.md):
      --enable-token-exchange         serve the RFC 8693 token exchange on the webhook server (every replica;
                                      needs --enable-webhooks): POST <url>/identity/v1/token, its JWKS and
                                      discovery document; signing keys in the Secret
                                      chaperone-token-exchange-keys, rotated daily; evidence in
                                      TokenExchangeLog objects
      --token-exchange-namespace NS   where TrustedIssuers, DelegationPolicies, keys and logs live; only
                                      objects there count (default: --operator-namespace)
      --token-exchange-url URL        https base URL clients and sidecars use; the issuer is
                                      <url>/identity/v1 (default: --webhook-url, else
                                      https://<webhook service>.<operator namespace>.svc)
      --token-exchange-max-lifetime SECONDS
                                      longest lifetime of any issued token (default: 3600)

Evidence and credentials out of the agents' editors' reach (docs/audit.md, docs/injection.md; need
--enable-webhooks):
      --audit-session-namespace NS    keep Sessions in NS (labelled chaperone.dev/audit-namespace=true):
                                      injected sidecars hand their records to the operator, which attests
                                      them and writes the Sessions there; sidecars get no right on Sessions
                                      (default: each sidecar writes Sessions in its own namespace)
      --credential-namespace NS       deliver the credentials of ProtectedResources whose
                                      credentialSecretRef names a Secret of NS (annotated
                                      chaperone.dev/allowed-namespaces) to attested sidecars in strict
                                      namespaces, instead of mounting Secrets (default: off)
      --evidence-store-config DIR     keep injected sidecars' records in the evidence store described by
                                      DIR (the chart's <release>-evidence-store ConfigMap, mounted: host,
                                      port, database, writerUser, passwordSecret, caSecret, batchRecords,
                                      headIntervalMs; docs/evidence-store.md); its Secrets are in
                                      --credential-namespace, which it needs (default: records in Session
                                      objects)

Approval notifications (docs/approvals.md, "Notifications"; sent by the leader only):
      --approval-webhook-url URL      POST every new ApprovalRequest and its resolution here as JSON, signed
                                      with X-Chaperone-Signature (HMAC-SHA256 over timestamp.body)
      --approval-webhook-secret NAME  Secret holding the HMAC key, in --operator-namespace, else
                                      $POD_NAMESPACE, else chaperone-system (required with the URL)
      --approval-webhook-secret-key KEY
                                      key of that Secret's data (default: key)

Signals: SIGTERM and SIGINT stop the reconcilers and the webhook server, release the Lease and exit 0.
Losing the Lease exits 1.`;

function fail(message: string): never {
  console.error(`chaperone-operator: ${message}\n\n${HELP}`);
  process.exit(2);
}

/** A flag whose value is a JSON object (validated further by whoever uses it). */
function parseJsonFlag(flag: string, raw: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    fail(`--${flag} must be a JSON object, not ${raw}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`--${flag} must be a JSON object`);
  return value as Record<string, unknown>;
}

const parse = () =>
  parseArgs({
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
      'retention-interval': { type: 'string' },
      'log-level': { type: 'string' },
      'enable-webhooks': { type: 'boolean' },
      'sidecar-image': { type: 'string' },
      'sidecar-image-pull-policy': { type: 'string' },
      'sidecar-resources': { type: 'string' },
      'service-account-issuer': { type: 'string' },
      'webhook-host': { type: 'string' },
      'webhook-port': { type: 'string' },
      'webhook-service-name': { type: 'string' },
      'webhook-cert-dir': { type: 'string' },
      'operator-namespace': { type: 'string' },
      'webhook-url': { type: 'string' },
      'mutating-webhook-configuration': { type: 'string' },
      'validating-webhook-configuration': { type: 'string' },
      'enable-audit-authority': { type: 'boolean' },
      'audit-namespace': { type: 'string' },
      'checkpoint-interval': { type: 'string' },
      'enable-token-exchange': { type: 'boolean' },
      'token-exchange-namespace': { type: 'string' },
      'token-exchange-url': { type: 'string' },
      'token-exchange-max-lifetime': { type: 'string' },
      'audit-session-namespace': { type: 'string' },
      'credential-namespace': { type: 'string' },
      'evidence-store-config': { type: 'string' },
      'approval-webhook-url': { type: 'string' },
      'approval-webhook-secret': { type: 'string' },
      'approval-webhook-secret-key': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
let values: ReturnType<typeof parse>['values'];
try {
  ({ values } = parse());
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
const retentionSeconds = positiveInt('retention-interval', values['retention-interval']);
const checkpointSeconds = positiveInt('checkpoint-interval', values['checkpoint-interval']);
if (values['enable-audit-authority'] !== true) {
  const stray = (['audit-namespace', 'checkpoint-interval'] as const).filter((flag) => values[flag] !== undefined);
  if (stray.length > 0) fail(`${stray.map((f) => `--${f}`).join(', ')} need --enable-audit-authority`);
}
const audit: OperatorOptions['audit'] =
  values['enable-audit-authority'] === true
    ? {
        namespace:
          values['audit-namespace'] ?? values['operator-namespace'] ?? process.env.POD_NAMESPACE ?? 'chaperone-system',
        ...(checkpointSeconds === undefined ? {} : { checkpointIntervalMs: checkpointSeconds * 1000 }),
      }
    : undefined;

const WEBHOOK_ONLY = [
  'sidecar-image',
  'sidecar-image-pull-policy',
  'sidecar-resources',
  'service-account-issuer',
  'webhook-host',
  'webhook-port',
  'webhook-service-name',
  'webhook-cert-dir',
  'operator-namespace',
  'webhook-url',
  'mutating-webhook-configuration',
  'validating-webhook-configuration',
  'audit-session-namespace',
  'credential-namespace',
  'evidence-store-config',
] as const;

/** The webhook options from the flags, or undefined without --enable-webhooks. Exits 2 on a bad combination. */
function webhookOptions(): OperatorOptions['webhooks'] {
  if (values['enable-webhooks'] !== true) {
    const stray = WEBHOOK_ONLY.filter((flag) => values[flag] !== undefined);
    if (stray.length > 0) {
      fail(`${stray.map((f) => `--${f}`).join(', ')} ${stray.length === 1 ? 'needs' : 'need'} --enable-webhooks`);
    }
    return undefined;
  }
  const image = values['sidecar-image'];
  if (image === undefined || image.trim() === '') fail('--enable-webhooks needs --sidecar-image');
  const port = values['webhook-port'] === undefined ? 9443 : Number(values['webhook-port']);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail('--webhook-port must be a port number (1..65535)');
  const operatorNamespace = values['operator-namespace'] ?? process.env.POD_NAMESPACE ?? 'chaperone-system';
  if (values.namespace !== undefined && values.namespace === operatorNamespace) {
    fail(`--namespace ${values.namespace} is the operator namespace, which is never injected; use another one`);
  }
  let settings;
  try {
    settings = validateInjectionSettings({
      image,
      operatorNamespace,
      ...(values['service-account-issuer'] === undefined ? {} : { issuer: values['service-account-issuer'] }),
      ...(values['sidecar-image-pull-policy'] === undefined
        ? {}
        : { imagePullPolicy: values['sidecar-image-pull-policy'] as InjectionSettings['imagePullPolicy'] }),
      ...(values['sidecar-resources'] === undefined
        ? {}
        : { resources: parseJsonFlag('sidecar-resources', values['sidecar-resources']) }),
    });
  } catch (err) {
    if (err instanceof InjectionSettingsError) fail(err.message);
    throw err;
  }
  const service = values['webhook-service-name'] ?? 'chaperone-webhook';
  const dnsNames = [`${service}.${operatorNamespace}.svc`, `${service}.${operatorNamespace}.svc.cluster.local`];
  const ipAddresses: string[] = [];
  const names = {
    mutating: values['mutating-webhook-configuration'] ?? DEFAULT_MUTATING_NAME,
    validating: values['validating-webhook-configuration'] ?? DEFAULT_VALIDATING_NAME,
  };
  let registration: NonNullable<OperatorOptions['webhooks']>['registration'];
  const url = values['webhook-url'];
  if (url !== undefined) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      fail(`--webhook-url ${url} is not a URL`);
    }
    if (parsed.protocol !== 'https:') fail('--webhook-url must be an https:// URL (the API server requires TLS)');
    // The serving certificate must name the host the API server dials.
    const host = parsed.hostname.replace(/^\[|\]$/g, '');
    if (isIP(host) === 0) dnsNames.push(host);
    else ipAddresses.push(host);
    registration = {
      endpoint: { url: url.replace(/\/$/, '') },
      mutatingName: names.mutating,
      validatingName: names.validating,
      ...(values.namespace === undefined
        ? {}
        : {
            extraNamespaceSelector: [
              { key: 'kubernetes.io/metadata.name', operator: 'In', values: [values.namespace] },
            ],
          }),
    };
  }
  return {
    settings,
    host: values['webhook-host'] ?? '0.0.0.0',
    port,
    certificates: {
      namespace: operatorNamespace,
      dnsNames,
      ...(ipAddresses.length > 0 ? { ipAddresses } : {}),
      ...(values['webhook-cert-dir'] === undefined ? {} : { dir: values['webhook-cert-dir'] }),
    },
    ...(registration === undefined ? { webhookConfigurationNames: names } : { registration }),
  };
}
const webhooks = webhookOptions();

/** The token exchange options from the flags, or undefined without --enable-token-exchange. */
function tokenExchangeOptions(): OperatorOptions['tokenExchange'] {
  const flags = ['token-exchange-namespace', 'token-exchange-url', 'token-exchange-max-lifetime'] as const;
  if (values['enable-token-exchange'] !== true) {
    const stray = flags.filter((flag) => values[flag] !== undefined);
    if (stray.length > 0) fail(`${stray.map((f) => `--${f}`).join(', ')} need --enable-token-exchange`);
    return undefined;
  }
  if (webhooks === undefined)
    fail('--enable-token-exchange needs --enable-webhooks (it is served on the webhook server)');
  const operatorNamespace = values['operator-namespace'] ?? process.env.POD_NAMESPACE ?? 'chaperone-system';
  const service = values['webhook-service-name'] ?? 'chaperone-webhook';
  const url = values['token-exchange-url'] ?? values['webhook-url'] ?? `https://${service}.${operatorNamespace}.svc`;
  if (!url.startsWith('https://') || !URL.canParse(url)) fail('--token-exchange-url must be an https:// URL');
  const maxLifetime = positiveInt('token-exchange-max-lifetime', values['token-exchange-max-lifetime']);
  return {
    namespace: values['token-exchange-namespace'] ?? operatorNamespace,
    url,
    ...(maxLifetime === undefined ? {} : { maxLifetimeMs: maxLifetime * 1000 }),
  };
}
const tokenExchange = tokenExchangeOptions();

/** The approval webhook from the flags, or undefined without --approval-webhook-url. */
function approvalWebhookOptions(): OperatorOptions['approvalWebhook'] {
  const url = values['approval-webhook-url'];
  if (url === undefined) {
    const stray = (['approval-webhook-secret', 'approval-webhook-secret-key'] as const).filter(
      (flag) => values[flag] !== undefined,
    );
    if (stray.length > 0) fail(`${stray.map((f) => `--${f}`).join(', ')} need --approval-webhook-url`);
    return undefined;
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    fail(`--approval-webhook-url ${url} is not a URL`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') fail('--approval-webhook-url must be http(s)');
  const name = values['approval-webhook-secret'];
  if (name === undefined || name === '') fail('--approval-webhook-url needs --approval-webhook-secret');
  return {
    url,
    secret: {
      namespace: values['operator-namespace'] ?? process.env.POD_NAMESPACE ?? 'chaperone-system',
      name,
      key: values['approval-webhook-secret-key'] ?? 'key',
    },
  };
}
const approvalWebhook = approvalWebhookOptions();

const logger = createLogger({ level, base: { component: 'chaperone-operator' } });
const kubeConfig = new KubeConfig();
try {
  if (values.kubeconfig === undefined) kubeConfig.loadFromDefault();
  else kubeConfig.loadFromFile(values.kubeconfig);
} catch (err) {
  console.error(`chaperone-operator: cannot load kubeconfig: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}

const evidenceStore = (() => {
  const dir = values['evidence-store-config'];
  if (dir === undefined) return undefined;
  const credentialNamespace = values['credential-namespace'];
  if (credentialNamespace === undefined) fail('--evidence-store-config needs --credential-namespace');
  try {
    return readEvidenceStoreConfig(dir, credentialNamespace);
  } catch (err) {
    return fail(`--evidence-store-config ${dir}: ${err instanceof Error ? err.message : String(err)}`);
  }
})();

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
    ...(retentionSeconds === undefined ? {} : { retentionIntervalMs: retentionSeconds * 1000 }),
    ...(webhooks === undefined ? {} : { webhooks }),
    ...(audit === undefined ? {} : { audit }),
    ...(approvalWebhook === undefined ? {} : { approvalWebhook }),
    ...(tokenExchange === undefined ? {} : { tokenExchange }),
    ...(values['audit-session-namespace'] === undefined
      ? {}
      : { sessions: { auditNamespace: values['audit-session-namespace'] } }),
    ...(values['credential-namespace'] === undefined
      ? {}
      : { credentials: { namespace: values['credential-namespace'] } }),
    ...(evidenceStore === undefined ? {} : { evidenceStore }),
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
