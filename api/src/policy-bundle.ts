// The compiled policy bundle as the operator publishes it and the sidecar loads it: a WebAssembly module
// plus a manifest, identified by a digest over both. On disk (a mounted ConfigMap) one bundle is a
// directory holding BUNDLE_WASM_FILE and BUNDLE_MANIFEST_FILE.
import { createHash } from 'node:crypto';

export const BUNDLE_WASM_FILE = 'policy.wasm';
export const BUNDLE_MANIFEST_FILE = 'manifest.json';

export interface BundleManifest {
  /** IANA zones the rules' time windows use, sorted, without duplicates. */
  readonly timeZones: readonly string[];
  /** namespace/name of the AccessPolicy. */
  readonly policy: string;
  readonly entrypoint: string;
  /** True when the policy carries raw Rego, which may read any input field (the sidecar then skips its decision cache). */
  readonly rawRego: boolean;
}

/** The manifest file: the manifest and the digest the operator computed (and put in the policy's status). */
export interface BundleManifestFile {
  readonly manifest: BundleManifest;
  readonly digest: string;
}

export function canonicalManifest(manifest: BundleManifest): string {
  return JSON.stringify({
    entrypoint: manifest.entrypoint,
    policy: manifest.policy,
    rawRego: manifest.rawRego,
    timeZones: [...manifest.timeZones],
  });
}

/** sha256:<hex> over the canonical manifest, a NUL byte and the wasm bytes. */
export function bundleDigest(wasm: Uint8Array, manifest: BundleManifest): string {
  return `sha256:${createHash('sha256').update(canonicalManifest(manifest)).update('\u0000').update(wasm).digest('hex')}`;
}
