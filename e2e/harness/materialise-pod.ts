// Turns a stored, injected pod spec into a running local sidecar, the way a kubelet would: every volume
// the sidecar container mounts is filled from the API server (Secrets, ConfigMaps, downward API fields,
// TokenRequest tokens bound to the pod) into a temporary root that mirrors the mount paths, the config's
// paths are rewritten under that root, and `node sidecar/src/bin/chaperone-sidecar.ts --config` starts
// with the container's env (downward-API fields resolved) and KUBERNETES_SERVICE_HOST/PORT naming the
// API server, as the kubelet sets them. Only these rewrites differ from a cluster: paths under the root,
// the JWKS URL (no in-cluster DNS here), and port 0 for metrics.
//
// Volumes are written like the kubelet's atomic writer does: the files go into a fresh hidden directory
// `..<timestamp>`, the symlink `..data` is swapped to it with a rename, and each top-level entry is a
// symlink through `..data`. So refreshVolume (what the kubelet does when a ConfigMap or Secret changes)
// replaces a volume's content atomically under a reader that is polling it, as a policy bundle directory is.
// Used by the injection tests and by `make demo`.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  createWriteStream,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import type * as k8s from '@kubernetes/client-node';
import { parse, stringify } from 'yaml';
import { SIDECAR_CONTAINER } from '../../operator/src/injection/constants.ts';
import { controlPlaneEnv } from './env.ts';
import { kubeletToken } from './identities.ts';
import { stopProcess } from './processes.ts';
import { SIDECAR_BIN } from './sidecar.ts';

export interface MaterialisedSidecar {
  readonly root: string;
  readonly configFile: string;
  readonly process: ChildProcess;
  readonly logFile: string;
  /** Port of the sidecar's /metrics on 127.0.0.1 (from its ready line). */
  readonly metricsPort: number;
  stop(): Promise<void>;
}

/**
 * A TokenRequest token bound to the pod, as a projected serviceAccountToken source would hold it. For a
 * pod bound to a node it is requested as that node's kubelet (what config/admission/sidecar-identity.yaml
 * requires of pod-bound tokens); for an unscheduled pod, as the test's administrator.
 */
export async function podToken(core: k8s.CoreV1Api, pod: k8s.V1Pod, audience: string | undefined): Promise<string> {
  if (pod.spec?.nodeName !== undefined && pod.spec.nodeName !== '') return kubeletToken(pod, audience);
  const token = await core.createNamespacedServiceAccountToken({
    namespace: pod.metadata?.namespace ?? '',
    name: pod.spec?.serviceAccountName ?? 'default',
    body: {
      spec: {
        ...(audience === undefined || audience === '' ? { audiences: [] } : { audiences: [audience] }),
        expirationSeconds: 3600,
        boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: pod.metadata?.name ?? '', uid: pod.metadata?.uid ?? '' },
      },
    },
  });
  const value = token.status?.token;
  if (value === undefined) throw new Error('TokenRequest returned no token');
  return value;
}

function fieldOf(pod: k8s.V1Pod, fieldPath: string): string {
  const annotation = /^metadata\.annotations\['(.+)'\]$/.exec(fieldPath);
  if (annotation?.[1] !== undefined) return pod.metadata?.annotations?.[annotation[1]] ?? '';
  if (fieldPath === 'metadata.namespace') return pod.metadata?.namespace ?? '';
  if (fieldPath === 'metadata.name') return pod.metadata?.name ?? '';
  if (fieldPath === 'metadata.uid') return pod.metadata?.uid ?? '';
  throw new Error(`materialiser does not know field ${fieldPath}`);
}

function write(path: string, content: string | Buffer): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, content);
}

/** A container's environment as the kubelet sets it: its env entries, and the in-cluster API server address. */
export function containerEnv(pod: k8s.V1Pod, container: k8s.V1Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of container.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef !== undefined) env[e.name] = fieldOf(pod, e.valueFrom.fieldRef.fieldPath);
    else throw new Error(`materialiser does not know the source of env ${e.name}`);
  }
  // The kubelet gives every container the address of the kubernetes Service; here, the local API server.
  const server = new URL(controlPlaneEnv().server);
  env.KUBERNETES_SERVICE_HOST = server.hostname.replace(/^\[|\]$/g, '');
  env.KUBERNETES_SERVICE_PORT = server.port === '' ? '443' : server.port;
  return env;
}

/**
 * A container's environment with every source resolved as the kubelet resolves it: literal values,
 * downward-API fields, Secret and ConfigMap keys, and envFrom. Unlike containerEnv (what the sidecar is
 * started with), nothing is refused: this is what a container would see, for tests that look at it.
 */
export async function resolvedContainerEnv(
  core: k8s.CoreV1Api,
  pod: k8s.V1Pod,
  container: k8s.V1Container,
): Promise<Record<string, string>> {
  const namespace = pod.metadata?.namespace ?? '';
  const env: Record<string, string> = {};
  const secretData = async (name: string) =>
    Object.fromEntries(
      Object.entries((await core.readNamespacedSecret({ namespace, name })).data ?? {}).map(([k, v]) => [
        k,
        Buffer.from(v, 'base64').toString('utf8'),
      ]),
    );
  const configMapData = async (name: string) => (await core.readNamespacedConfigMap({ namespace, name })).data ?? {};
  for (const from of container.envFrom ?? []) {
    const prefix = from.prefix ?? '';
    const data =
      from.secretRef !== undefined
        ? await secretData(from.secretRef.name ?? '')
        : from.configMapRef !== undefined
          ? await configMapData(from.configMapRef.name ?? '')
          : {};
    for (const [k, v] of Object.entries(data)) env[`${prefix}${k}`] = v;
  }
  for (const e of container.env ?? []) {
    const source = e.valueFrom;
    if (source?.secretKeyRef !== undefined) {
      env[e.name] = (await secretData(source.secretKeyRef.name ?? ''))[source.secretKeyRef.key] ?? '';
    } else if (source?.configMapKeyRef !== undefined) {
      env[e.name] = (await configMapData(source.configMapKeyRef.name ?? ''))[source.configMapKeyRef.key] ?? '';
    } else if (source?.fieldRef !== undefined) {
      env[e.name] = fieldOf(pod, source.fieldRef.fieldPath);
    } else {
      env[e.name] = e.value ?? '';
    }
  }
  const server = new URL(controlPlaneEnv().server);
  env.KUBERNETES_SERVICE_HOST = server.hostname.replace(/^\[|\]$/g, '');
  env.KUBERNETES_SERVICE_PORT = server.port === '' ? '443' : server.port;
  return env;
}

/**
 * Fills one volume into `dir` (the mount path under the root), the way the kubelet's atomic writer would:
 * content in a new `..<timestamp>` directory, `..data` swapped to it by rename, entries linked through it.
 */
async function fillVolume(core: k8s.CoreV1Api, pod: k8s.V1Pod, volume: k8s.V1Volume, dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  if (volume.emptyDir !== undefined) return;
  const stamp = `..${new Date().toISOString().replace(/[:.]/g, '_')}.${randomBytes(4).toString('hex')}`;
  const staging = join(dir, stamp);
  try {
    await fillContent(core, pod, volume, staging);
  } catch (err) {
    rmSync(staging, { recursive: true, force: true });
    throw err;
  }
  const tmp = join(dir, '..data_tmp');
  rmSync(tmp, { force: true });
  symlinkSync(stamp, tmp);
  renameSync(tmp, join(dir, '..data'));
  const entries = new Set(readdirSync(staging));
  for (const entry of entries) {
    const link = join(dir, entry);
    let exists = true;
    try {
      lstatSync(link);
    } catch {
      exists = false;
    }
    if (!exists) symlinkSync(join('..data', entry), link);
  }
  for (const entry of readdirSync(dir)) {
    if (entry.startsWith('..') && entry !== '..data' && entry !== stamp) {
      rmSync(join(dir, entry), { recursive: true, force: true });
    } else if (!entry.startsWith('.') && !entries.has(entry)) {
      rmSync(join(dir, entry), { force: true });
    }
  }
}

/** Writes a volume's files into `dir` (a fresh directory). */
async function fillContent(core: k8s.CoreV1Api, pod: k8s.V1Pod, volume: k8s.V1Volume, dir: string): Promise<void> {
  const namespace = pod.metadata?.namespace ?? '';
  mkdirSync(dir, { recursive: true });
  const downward = (items: k8s.V1DownwardAPIVolumeFile[]) => {
    for (const item of items) write(join(dir, item.path), fieldOf(pod, item.fieldRef?.fieldPath ?? ''));
  };
  if (volume.downwardAPI !== undefined) {
    downward(volume.downwardAPI.items ?? []);
    return;
  }
  // Whole Secret and ConfigMap volumes: every key as a file unless items pick some.
  if (volume.secret !== undefined) {
    const secret = await core.readNamespacedSecret({ namespace, name: volume.secret.secretName ?? '' });
    const data = secret.data ?? {};
    const items = volume.secret.items ?? Object.keys(data).map((key) => ({ key, path: key }));
    for (const item of items) write(join(dir, item.path), Buffer.from(data[item.key] ?? '', 'base64'));
    return;
  }
  if (volume.configMap !== undefined) {
    const cm = await core.readNamespacedConfigMap({ namespace, name: volume.configMap.name ?? '' });
    const keys = [...Object.keys(cm.data ?? {}), ...Object.keys(cm.binaryData ?? {})];
    for (const item of volume.configMap.items ?? keys.map((key) => ({ key, path: key }))) {
      const text = cm.data?.[item.key];
      write(join(dir, item.path), text ?? Buffer.from(cm.binaryData?.[item.key] ?? '', 'base64'));
    }
    return;
  }
  for (const source of volume.projected?.sources ?? []) {
    if (source.secret !== undefined) {
      const secret = await core.readNamespacedSecret({ namespace, name: source.secret.name ?? '' });
      for (const item of source.secret.items ?? []) {
        const value = secret.data?.[item.key];
        if (value === undefined) throw new Error(`Secret ${source.secret.name ?? ''} has no key ${item.key}`);
        write(join(dir, item.path), Buffer.from(value, 'base64'));
      }
    } else if (source.configMap !== undefined) {
      let cm: k8s.V1ConfigMap | undefined;
      try {
        cm = await core.readNamespacedConfigMap({ namespace, name: source.configMap.name ?? '' });
      } catch (err) {
        if (source.configMap.name === 'kube-root-ca.crt') {
          // Published by kube-controller-manager; stand in with the API server CA when it has not yet.
          for (const item of source.configMap.items ?? [])
            write(join(dir, item.path), readFileSync(controlPlaneEnv().caFile));
          continue;
        }
        if (source.configMap.optional === true) continue;
        throw err;
      }
      for (const item of source.configMap.items ?? []) {
        const text = cm.data?.[item.key];
        const binary = cm.binaryData?.[item.key];
        if (text !== undefined) write(join(dir, item.path), text);
        else if (binary !== undefined) write(join(dir, item.path), Buffer.from(binary, 'base64'));
      }
    } else if (source.downwardAPI !== undefined) {
      downward(source.downwardAPI.items ?? []);
    } else if (source.serviceAccountToken !== undefined) {
      write(join(dir, source.serviceAccountToken.path), await podToken(core, pod, source.serviceAccountToken.audience));
    }
  }
}

/** Re-roots every absolute path in the config that lies under one of the container's mounts. */
function reroot(value: unknown, root: string, mountPaths: readonly string[]): unknown {
  if (typeof value === 'string') {
    return mountPaths.some((m) => value === m || value.startsWith(`${m}/`)) ? join(root, value) : value;
  }
  if (Array.isArray(value)) return value.map((v: unknown) => reroot(v, root, mountPaths));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, reroot(v, root, mountPaths)]));
  }
  return value;
}

export async function materialiseVolumes(
  core: k8s.CoreV1Api,
  pod: k8s.V1Pod,
  containerName: string,
  root: string,
): Promise<k8s.V1Container> {
  const container = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find(
    (c) => c.name === containerName,
  );
  if (container === undefined) throw new Error(`pod has no container ${containerName}`);
  const volumes = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
  for (const mount of container.volumeMounts ?? []) {
    const volume = volumes.get(mount.name);
    if (volume === undefined) throw new Error(`mount ${mount.name} has no volume`);
    if (mount.subPath !== undefined) {
      const staging = join(root, '.volumes', mount.name);
      await fillVolume(core, pod, volume, staging);
      write(join(root, mount.mountPath), readFileSync(join(staging, mount.subPath)));
    } else {
      await fillVolume(core, pod, volume, join(root, mount.mountPath));
    }
  }
  return container;
}

/**
 * Re-reads one volume of a container from the API server and swaps it in atomically, as the kubelet does
 * when a projected ConfigMap or Secret changes (subPath mounts are never updated, as in a cluster).
 */
export async function refreshVolume(
  core: k8s.CoreV1Api,
  pod: k8s.V1Pod,
  containerName: string,
  volumeName: string,
  root: string,
): Promise<void> {
  const container = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find(
    (c) => c.name === containerName,
  );
  const mount = container?.volumeMounts?.find((m) => m.name === volumeName && m.subPath === undefined);
  const volume = pod.spec?.volumes?.find((v) => v.name === volumeName);
  if (mount === undefined || volume === undefined) {
    throw new Error(`container ${containerName} has no whole-volume mount of ${volumeName}`);
  }
  await fillVolume(core, pod, volume, join(root, mount.mountPath));
}

/** Materialises the sidecar's volumes under `root`; call `start` after adding anything else (policy bundles). */
export async function materialiseSidecar(
  core: k8s.CoreV1Api,
  pod: k8s.V1Pod,
  root: string,
): Promise<{ config: Record<string, unknown>; configFile: string; start(): Promise<MaterialisedSidecar> }> {
  const sidecar = await materialiseVolumes(core, pod, SIDECAR_CONTAINER, root);
  const args = sidecar.args ?? [];
  const configPath = args[args.indexOf('--config') + 1];
  if (configPath === undefined) throw new Error('sidecar has no --config argument');
  const mountPaths = (sidecar.volumeMounts ?? []).map((m) => m.mountPath);
  const config = reroot(parse(readFileSync(join(root, configPath), 'utf8')), root, mountPaths) as Record<
    string,
    unknown
  >;
  const identity = config.identity as { issuers: { jwksUrl?: string; tokenExchange?: boolean }[] };
  for (const issuer of identity.issuers) {
    // The cluster's issuer is reached at the API server here; the token exchange's URL is already local.
    if (issuer.jwksUrl !== undefined && issuer.tokenExchange !== true) {
      issuer.jwksUrl = new URL('/openid/v1/jwks', controlPlaneEnv().server).toString();
    }
  }
  config.metrics = { listen: '127.0.0.1:0' };
  config.log = { level: 'debug' };
  const configFile = join(root, 'materialised-sidecar.yaml');
  writeFileSync(configFile, stringify(config));
  return {
    config,
    configFile,
    async start() {
      const logFile = join(root, 'sidecar.log');
      const log = createWriteStream(logFile);
      const child = spawn(process.execPath, [SIDECAR_BIN, '--config', configFile], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...containerEnv(pod, sidecar) },
      });
      child.stdout.pipe(log, { end: false });
      // 'close' comes after the exit and after every byte of stdout and stderr was read (and written to the log).
      const outputRead = new Promise<void>((resolve) => child.once('close', () => resolve()));
      let metricsPort: number;
      try {
        metricsPort = await new Promise<number>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`sidecar not ready in 30 s; see ${logFile}`)), 30_000);
          createInterface({ input: child.stderr }).on('line', (line) => {
            log.write(`${line}\n`);
            if (line.includes('"msg":"ready"')) {
              clearTimeout(timer);
              resolve((JSON.parse(line) as { metrics: { port: number } }).metrics.port);
            }
          });
          child.once('exit', (code) => {
            clearTimeout(timer);
            reject(new Error(`sidecar exited with ${String(code)}: ${readFileSync(logFile, 'utf8')}`));
          });
        });
      } catch (err) {
        await stopProcess(child, 5_000).catch(() => undefined);
        log.end();
        throw err;
      }
      return {
        root,
        configFile,
        process: child,
        logFile,
        metricsPort,
        /** Stops the process; resolves once its whole output is in the log file. */
        async stop() {
          await stopProcess(child, 10_000);
          await outputRead;
          if (!log.writableEnded) await new Promise<void>((resolve) => log.end(resolve));
        },
      };
    },
  };
}
