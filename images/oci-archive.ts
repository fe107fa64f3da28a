// Packs file trees into image layers and layers into an image archive, reproducibly and without a
// registry or a container engine: GNU tar with sorted names, one fixed time and root ownership makes
// the same tree give the same bytes, so the same inputs give the same image digest.
//
// The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/…) that also carries
// Docker's manifest.json, like `docker save` writes since Docker 25: `ctr images import` (containerd; the
// local node imports every image that way) reads it, and so, by format, do `kind load image-archive`,
// `docker load` and `skopeo copy oci-archive:` (not run on these machines).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  readSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import type { ImageConfig } from './dockerfile.ts';

/** Every file in a layer and the archive gets this time: the epoch, so nothing depends on when it was built. */
export const SOURCE_DATE = '1970-01-01T00:00:00Z';

export const MEDIA_TYPES = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
} as const;

export interface Blob {
  readonly digest: string;
  readonly size: number;
}

export interface Layer extends Blob {
  /** The uncompressed layer tar (layers are not compressed, so the digest is also the diff ID). */
  readonly path: string;
  readonly name: string;
}

// Reproducible tar, as reproducible-builds.org describes for GNU tar.
const TAR_FLAGS = [
  '--sort=name',
  '--format=posix',
  '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime',
  `--mtime=@0`,
  '--owner=0',
  '--group=0',
  '--numeric-owner',
  '--no-acls',
  '--no-xattrs',
  '--no-selinux',
];

function sha256File(path: string): Blob {
  const hash = createHash('sha256');
  const fd = openSync(path, 'r');
  const buffer = Buffer.allocUnsafe(1 << 20);
  let size = 0;
  try {
    for (let n = readSync(fd, buffer); n > 0; n = readSync(fd, buffer)) {
      hash.update(buffer.subarray(0, n));
      size += n;
    }
  } finally {
    closeSync(fd);
  }
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

/** Tars the tree at `dir` (its entries, without a leading `./`) into `out`. */
export function packLayer(name: string, dir: string, out: string): Layer {
  mkdirSync(dirname(out), { recursive: true });
  const entries = readdirSync(dir).sort();
  execFileSync('tar', [...TAR_FLAGS, '-C', dir, '-cf', out, '--', ...entries], { stdio: ['ignore', 'ignore', 'pipe'] });
  return { name, path: out, ...sha256File(out) };
}

/** The Go/OCI name of this machine's architecture. */
export function ociArchitecture(): string {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x' };
  return arch[process.arch] ?? process.arch;
}

export interface ImageArchive {
  /** Full reference, e.g. ghcr.io/chaperone/chaperone-operator:0.1.0. */
  readonly ref: string;
  readonly path: string;
  /** Digest of the image manifest (what a registry would report as the image digest). */
  readonly manifestDigest: string;
  /** Digest of the configuration (the image ID containerd and Docker show). */
  readonly configDigest: string;
}

/** Writes an image archive for `ref` with `layers` (base first) and `config` to `out`. */
export function writeImageArchive(options: {
  ref: string;
  layers: readonly Layer[];
  config: ImageConfig;
  out: string;
  staging: string;
}): ImageArchive {
  const { ref, layers, config, out, staging } = options;
  rmSync(staging, { recursive: true, force: true });
  const blobs = join(staging, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const putJson = (value: unknown): Blob => {
    const bytes = Buffer.from(JSON.stringify(value));
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    writeFileSync(join(blobs, digest.slice('sha256:'.length)), bytes);
    return { digest, size: bytes.length };
  };
  for (const layer of layers) {
    // A hard link, not a copy: layers are hundreds of megabytes.
    const blob = join(blobs, layer.digest.slice('sha256:'.length));
    rmSync(blob, { force: true });
    linkSync(layer.path, blob);
  }
  const platform = { architecture: ociArchitecture(), os: 'linux' };
  const configBlob = putJson({
    ...platform,
    created: SOURCE_DATE,
    config,
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
    history: layers.map((l) => ({ created: SOURCE_DATE, created_by: `images/rootfs.ts ${l.name}` })),
  });
  const manifestBlob = putJson({
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.manifest,
    config: { mediaType: MEDIA_TYPES.config, ...configBlob },
    layers: layers.map((l) => ({ mediaType: MEDIA_TYPES.layer, digest: l.digest, size: l.size })),
  });
  const tag = ref.slice(ref.lastIndexOf(':') + 1);
  writeFileSync(join(staging, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(staging, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.index,
      manifests: [
        {
          mediaType: MEDIA_TYPES.manifest,
          ...manifestBlob,
          platform,
          annotations: { 'io.containerd.image.name': ref, 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
  writeFileSync(
    join(staging, 'manifest.json'),
    JSON.stringify([
      {
        Config: `blobs/sha256/${configBlob.digest.slice('sha256:'.length)}`,
        RepoTags: [ref],
        Layers: layers.map((l) => `blobs/sha256/${l.digest.slice('sha256:'.length)}`),
      },
    ]),
  );
  const tmp = `${out}.tmp`;
  execFileSync(
    'tar',
    [...TAR_FLAGS, '-C', staging, '-cf', tmp, '--', 'blobs', 'index.json', 'manifest.json', 'oci-layout'],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  renameSync(tmp, out);
  rmSync(staging, { recursive: true, force: true });
  return { ref, path: out, manifestDigest: manifestBlob.digest, configDigest: configBlob.digest };
}
