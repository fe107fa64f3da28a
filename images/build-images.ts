#!/usr/bin/env node
// `make images`: builds Chaperone's images without a registry or a container engine, reproducibly, into
// .images/ — one archive per image (OCI layout + docker manifest.json) and .images/images.json listing
// each image's reference, archive and digests. The layers come from images/rootfs.ts, the configuration
// from the final stages of images/Dockerfile (images/dockerfile.ts), so the result matches what
// `docker build -f images/Dockerfile --target NAME` produces for a registry.
//
// An image whose inputs (sources, package-lock.json, binaries, builder) are unchanged since the last
// build is not rebuilt. The same inputs give the same bytes (sorted tar entries, one fixed time, root
// ownership), so the digests say whether anything changed.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { imageStage, type ImageConfig } from './dockerfile.ts';
import { packLayer, writeImageArchive, type ImageArchive, type Layer } from './oci-archive.ts';
import { assembleLayer, defaultSources, sharedLibraries, type LayerName, type RootfsSources } from './rootfs.ts';
import { buildSidecarBundle } from '../sidecar/scripts/build.ts';
import { buildOperatorBundle } from '../operator/scripts/build.ts';

const REPO = join(import.meta.dirname, '..');

/** The images `make images` builds; `pause` is the local node's sandbox image, not a product image. */
export const IMAGES = ['operator', 'sidecar', 'agent', 'pause'] as const;
export type ImageName = (typeof IMAGES)[number];

export interface BuiltImage extends ImageArchive {
  readonly image: ImageName;
  /** Whether this run built it (false: its inputs were unchanged and the archive was kept). */
  readonly rebuilt: boolean;
}

/** The chart's default repositories (charts/chaperone/values.yaml), so `helm install` finds local images as they are. */
export const DEFAULT_REGISTRY = 'ghcr.io/chaperone';

/** Tag of the product images: the chart's appVersion. */
export function appVersion(): string {
  const chart = readFileSync(join(REPO, 'charts', 'chaperone', 'Chart.yaml'), 'utf8');
  const match = /^appVersion:\s*['"]?([^'"\s]+)/m.exec(chart);
  if (match?.[1] === undefined) throw new Error('charts/chaperone/Chart.yaml has no appVersion');
  return match[1];
}

export function imageRef(image: ImageName, registry = DEFAULT_REGISTRY, tag = appVersion()): string {
  return image === 'pause' ? 'localhost/chaperone-pause:1' : `${registry}/chaperone-${image}:${tag}`;
}

/** Layers and configuration of an image: product images from images/Dockerfile, pause from here. */
function definition(image: ImageName): { layers: LayerName[]; config: ImageConfig } {
  if (image === 'pause') {
    return {
      layers: ['pause'],
      config: {
        User: '65535:65535',
        Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        Entrypoint: ['/pause'],
        Labels: { 'org.opencontainers.image.title': 'chaperone-pause' },
        ExposedPorts: {},
      },
    };
  }
  const stage = imageStage(readFileSync(join(REPO, 'images', 'Dockerfile'), 'utf8'), image);
  return { layers: stage.layers as LayerName[], config: stage.config };
}

function hashTree(hash: ReturnType<typeof createHash>, root: string): void {
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else {
        hash.update(`${relative(root, path)}\0`);
        hash.update(readFileSync(path));
      }
    }
  };
  walk(root);
}

/** A binary as an input: where it really is, its size and time, and the libraries it links. */
function binaryIdentity(path: string): string {
  const real = realpathSync(path);
  const st = statSync(real);
  return `${real} ${st.size} ${st.mtimeMs} ${sharedLibraries(real).join(',')}`;
}

/** Everything an image's bytes depend on; equal fingerprints mean the archive can be kept. */
function fingerprint(image: ImageName, ref: string, layers: LayerName[], sources: RootfsSources): string {
  const hash = createHash('sha256');
  hash.update(`${ref}\n${layers.join(',')}\n${process.arch}\n`);
  hashTree(hash, join(REPO, 'images'));
  if (image === 'operator' || image === 'sidecar') {
    hash.update(readFileSync(join(REPO, 'package-lock.json')));
    for (const pkg of ['api', image]) {
      hash.update(readFileSync(join(REPO, pkg, 'package.json')));
      hashTree(hash, join(REPO, pkg, 'src'));
    }
    // Both run as bundles: their build scripts and the bundler are inputs too.
    hashTree(hash, join(REPO, image, 'scripts'));
    hash.update(readFileSync(join(REPO, 'scripts', 'bundle.ts')));
  }
  const binaries: Record<ImageName, string[]> = {
    operator: [sources.node, sources.opa],
    sidecar: [sources.node],
    agent: [sources.shell, sources.psql, sources.kubectl, ...sources.coreutils],
    // The pause binary is rebuilt every time; its source (images/pause, hashed above) is what identifies it.
    pause: [],
  };
  for (const binary of binaries[image]) hash.update(`${binaryIdentity(binary)}\n`);
  if (image !== 'pause') hash.update(readFileSync(sources.caBundle));
  return hash.digest('hex');
}

/** Builds images/pause statically (reproducible: -trimpath, no VCS stamp, no cgo). */
function buildPause(out: string): string {
  mkdirSync(out, { recursive: true });
  const binary = join(out, 'pause');
  execFileSync('go', ['build', '-trimpath', '-buildvcs=false', '-ldflags=-s -w', '-o', binary, '.'], {
    cwd: join(REPO, 'images', 'pause'),
    env: { ...process.env, CGO_ENABLED: '0', GOFLAGS: '' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  return binary;
}

export interface BuildOptions {
  readonly out?: string;
  readonly images?: readonly ImageName[];
  readonly registry?: string;
  readonly tag?: string;
  readonly log?: (line: string) => void;
}

export function buildImages(options: BuildOptions = {}): BuiltImage[] {
  const out = options.out ?? join(REPO, '.images');
  const work = join(out, '.build');
  const log = options.log ?? (() => undefined);
  const images = options.images ?? IMAGES;
  mkdirSync(out, { recursive: true });
  const sources: RootfsSources = {
    ...defaultSources(REPO),
    ...(images.includes('pause') ? { pause: buildPause(join(work, 'bin')) } : {}),
  };
  const packed = new Map<LayerName, Layer>();
  const built: BuiltImage[] = [];
  for (const image of images) {
    const ref = imageRef(image, options.registry, options.tag);
    const { layers, config } = definition(image);
    const archivePath = join(out, `${image}.tar`);
    const stampPath = join(out, `${image}.inputs`);
    const stamp = fingerprint(image, ref, layers, sources);
    const previous = readRecord(out).find((r) => r.image === image);
    if (previous !== undefined && existsSync(archivePath) && readIfExists(stampPath) === stamp) {
      log(`images: ${image} unchanged (${previous.manifestDigest})`);
      built.push({ ...previous, rebuilt: false });
      continue;
    }
    const started = Date.now();
    const layerBlobs = layers.map((name) => {
      let layer = packed.get(name);
      if (layer === undefined) {
        const tree = join(work, 'rootfs', name);
        rmSync(tree, { recursive: true, force: true });
        let layerSources = sources;
        // The operator and sidecar layers ship their bundles, built here from this run's sources (never a stale dist/).
        if (name === 'sidecar') {
          const bundleDir = join(work, 'sidecar-bundle');
          buildSidecarBundle(bundleDir);
          layerSources = { ...sources, sidecarBundle: bundleDir };
        } else if (name === 'operator') {
          const bundleDir = join(work, 'operator-bundle');
          buildOperatorBundle(bundleDir);
          layerSources = { ...sources, operatorBundle: bundleDir };
        }
        assembleLayer(name, tree, layerSources);
        layer = packLayer(name, tree, join(work, 'layers', `${name}.tar`));
        rmSync(tree, { recursive: true, force: true });
        packed.set(name, layer);
      }
      return layer;
    });
    const archive = writeImageArchive({
      ref,
      layers: layerBlobs,
      config,
      out: archivePath,
      staging: join(work, 'staging'),
    });
    writeFileSync(stampPath, stamp);
    const size = layerBlobs.reduce((n, l) => n + l.size, 0);
    log(
      `images: ${image} ${ref} ${archive.manifestDigest} (${(size / 1048576).toFixed(0)} MiB, ${Date.now() - started} ms)`,
    );
    built.push({ ...archive, image, rebuilt: true });
  }
  rmSync(join(work, 'layers'), { recursive: true, force: true });
  rmSync(join(work, 'rootfs'), { recursive: true, force: true });
  rmSync(join(work, 'sidecar-bundle'), { recursive: true, force: true });
  rmSync(join(work, 'operator-bundle'), { recursive: true, force: true });
  const record = [...readRecord(out).filter((r) => !built.some((b) => b.image === r.image)), ...built]
    .map(({ image, ref, path, manifestDigest, configDigest }) => ({ image, ref, path, manifestDigest, configDigest }))
    .sort((a, b) => a.image.localeCompare(b.image));
  writeFileSync(join(out, 'images.json'), `${JSON.stringify(record, null, 2)}\n`);
  return built;
}

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

type ImageRecord = Omit<BuiltImage, 'rebuilt'>;

/** .images/images.json of an earlier build (empty when there is none). */
export function readRecord(out = join(REPO, '.images')): ImageRecord[] {
  const text = readIfExists(join(out, 'images.json'));
  return text === undefined ? [] : (JSON.parse(text) as ImageRecord[]);
}

function main(): void {
  const { values, positionals } = parseArgs({
    options: {
      out: { type: 'string' },
      registry: { type: 'string' },
      tag: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
  });
  if (values.help === true) {
    console.log(`Usage: node images/build-images.ts [--out DIR] [--registry REGISTRY] [--tag TAG] [IMAGE...]

Builds ${IMAGES.join(', ')} (default: all) into DIR (default .images/) as image archives for
\`ctr images import\`, \`kind load image-archive\` or \`docker load\`, named REGISTRY/chaperone-IMAGE:TAG
(default ${DEFAULT_REGISTRY}, the chart's appVersion). Unchanged images are kept.`);
    return;
  }
  const unknown = positionals.filter((p) => !(IMAGES as readonly string[]).includes(p));
  if (unknown.length > 0) {
    console.error(`images: unknown image ${unknown.join(', ')} (${IMAGES.join(', ')})`);
    process.exit(2);
  }
  buildImages({
    ...(values.out === undefined ? {} : { out: values.out }),
    ...(values.registry === undefined ? {} : { registry: values.registry }),
    ...(values.tag === undefined ? {} : { tag: values.tag }),
    ...(positionals.length === 0 ? {} : { images: positionals as ImageName[] }),
    log: (line) => console.log(line),
  });
}

if (runAsProgram()) main();

/** Whether this file is the program node was started with (not a module imported by another). */
function runAsProgram(): boolean {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(import.meta.filename);
  } catch {
    // argv[1] is not a path (a glob given to node --test, for example)
    return false;
  }
}
