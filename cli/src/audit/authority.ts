// The operator's audit authority as the verifying commands see it: its public keys (pinned from a file,
// or read from the authority ConfigMap in the operator's namespace) and its checkpoints (from files of
// compact JWS lines, e.g. shipped operator logs, or the newest one from the checkpoint ConfigMap).
// Keys read from the cluster are only as trustworthy as the cluster; the report says which it was.
import { readFile } from 'node:fs/promises';
import * as k8s from '@kubernetes/client-node';
import {
  AUDIT_AUTHORITY_JWKS_KEY,
  AUDIT_AUTHORITY_NAME,
  AUDIT_CHECKPOINT_KEY,
  AUDIT_CHECKPOINT_NAME,
} from '@chaperone/api';
import type { JWK } from 'jose';
import type { Cluster } from './cluster.ts';
import { loadTrustedKeys } from './trusted-keys.ts';

/** parseArgs option descriptors of the authority flags. */
export const AUTHORITY_OPTIONS = {
  'authority-keys': { type: 'string' },
  'authority-namespace': { type: 'string' },
  checkpoint: { type: 'string', multiple: true },
} as const;

/** parseArgs option descriptors of the flags that say what an uncertified signer key is. */
export const UNCERTIFIED_OPTIONS = {
  'allow-uncertified': { type: 'boolean' },
  'require-certified': { type: 'boolean' },
} as const;

export const UNCERTIFIED_USAGE = `  --allow-uncertified     a signer key without the operator's certificate for its pod is a warning, not an
                          error (for sidecars that wrote while the operator was unreachable; the report
                          names each key and part). Without it such a part fails, unless another part of
                          the same pod carries a valid certificate for the same key
  --require-certified     deprecated: refusing uncertified keys is the default (an error with --allow-uncertified)
`;

/**
 * Whether uncertified signer keys are refused (the default: an auditor accepts self-asserted keys only by
 * saying so), or a usage error (exit 2) when the flags contradict each other.
 */
export function refuseUncertified(
  values: { readonly 'allow-uncertified'?: boolean | undefined; readonly 'require-certified'?: boolean | undefined },
  io: { readonly stderr: { write(text: string): unknown } },
): boolean | 2 {
  if (values['allow-uncertified'] === true && values['require-certified'] === true) {
    io.stderr.write('error: --allow-uncertified and --require-certified contradict each other\n');
    return 2;
  }
  if (values['require-certified'] === true) {
    io.stderr.write('warning: --require-certified is deprecated: refusing uncertified keys is the default\n');
  }
  return values['allow-uncertified'] !== true;
}

export const AUTHORITY_USAGE = `  --authority-keys FILE   JWKS of the operator's audit authority to pin (default: read from the cluster)
  --authority-namespace NS  the operator's namespace, where the authority and checkpoint ConfigMaps are
                          (default chaperone-system)
  --checkpoint FILE       operator checkpoints (compact JWS, one per line; repeatable) in place of the
                          newest one in the cluster
`;

export interface AuthorityFlags {
  readonly 'authority-keys'?: string | undefined;
  readonly 'authority-namespace'?: string | undefined;
  readonly checkpoint?: string[] | undefined;
}

export interface Authority {
  readonly keys: (JWK & { kid?: string })[] | undefined;
  readonly checkpoints: string[];
  /** Where the keys came from: a pinned file, the cluster, or nowhere. */
  readonly source: 'pinned' | 'cluster' | 'none';
}

function status(err: unknown): number | undefined {
  return err instanceof k8s.ApiException ? err.code : undefined;
}

/** Reads a ConfigMap key, or undefined when the ConfigMap is absent or not readable by the caller. */
async function readConfigMapKey(core: k8s.CoreV1Api, namespace: string, name: string, key: string) {
  try {
    return (await core.readNamespacedConfigMap({ namespace, name })).data?.[key];
  } catch (err) {
    const code = status(err);
    if (code === 404 || code === 403) return undefined;
    throw err;
  }
}

export async function loadCheckpointFile(path: string): Promise<string[]> {
  const lines = (await readFile(path, 'utf8')).split('\n').map((l) => l.trim());
  const jws = lines.filter((l) => /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(l));
  if (jws.length === 0) throw new Error(`${path}: no compact JWS checkpoint in it`);
  return jws;
}

/** The authority keys and checkpoints the flags ask for; the cluster is read only for what is not given. */
export async function loadAuthority(flags: AuthorityFlags, cluster: Cluster | undefined): Promise<Authority> {
  const files = flags.checkpoint ?? [];
  const fromFiles = (await Promise.all(files.map(loadCheckpointFile))).flat();
  const pinned = flags['authority-keys'];
  if (pinned !== undefined || cluster === undefined) {
    return {
      keys: pinned === undefined ? undefined : await loadTrustedKeys(pinned),
      checkpoints: fromFiles,
      source: pinned === undefined ? 'none' : 'pinned',
    };
  }
  const core = cluster.kc.makeApiClient(k8s.CoreV1Api);
  const namespace = flags['authority-namespace'] ?? 'chaperone-system';
  const jwks = await readConfigMapKey(core, namespace, AUDIT_AUTHORITY_NAME, AUDIT_AUTHORITY_JWKS_KEY);
  const keys = jwks === undefined ? undefined : ((JSON.parse(jwks) as { keys?: JWK[] }).keys ?? []);
  let checkpoints = fromFiles;
  if (files.length === 0 && keys !== undefined) {
    const newest = await readConfigMapKey(core, namespace, AUDIT_CHECKPOINT_NAME, AUDIT_CHECKPOINT_KEY);
    checkpoints = newest === undefined ? [] : [newest.trim()];
  }
  return { keys, checkpoints, source: keys === undefined ? 'none' : 'cluster' };
}
