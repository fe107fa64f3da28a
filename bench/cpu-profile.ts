// A flat summary of a V8 .cpuprofile (what `node --cpu-prof` writes): self and inclusive time per function
// and self time per area (sidecar file, npm package, node: module, native, GC, idle).
// Run on its own: node bench/cpu-profile.ts FILE.cpuprofile [top]
import { readFileSync } from 'node:fs';
import { join, sep } from 'node:path';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
  readonly startTime: number;
  readonly endTime: number;
}

export interface ProfileEntry {
  readonly name: string;
  readonly ms: number;
  /** Share of the busy time (everything but idle), percent. */
  readonly pct: number;
}

export interface ProfileSummary {
  readonly file: string;
  readonly totalMs: number;
  readonly idleMs: number;
  readonly busyMs: number;
  readonly samples: number;
  readonly selfByFunction: readonly ProfileEntry[];
  readonly inclusiveByFunction: readonly ProfileEntry[];
  readonly selfByArea: readonly ProfileEntry[];
}

const REPO_MARKER = join(import.meta.dirname, '..') + sep;

function shortUrl(url: string): string {
  if (url === '') return '';
  let u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) return u.slice(nm + '/node_modules/'.length);
  if (u.startsWith(REPO_MARKER)) u = u.slice(REPO_MARKER.length);
  const src = u.search(/(sidecar|api|operator|e2e|bench)\/src\//);
  return src >= 0 ? u.slice(src) : u;
}

function functionKey(frame: CallFrame): string {
  const name = frame.functionName === '' ? '(anonymous)' : frame.functionName;
  const url = shortUrl(frame.url);
  return url === '' ? name : `${name} ${url}:${frame.lineNumber + 1}`;
}

function areaOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === '') {
    if (functionName.startsWith('(')) return functionName; // (idle), (program), (garbage collector), (root)
    return '(native: C++ builtins, syscalls)';
  }
  if (url.startsWith('node:'))
    return url
      .replace(/^node:internal\//, 'node:internal/')
      .split('/')
      .slice(0, 2)
      .join('/');
  if (url.startsWith('wasm://')) return 'wasm (OPA policy / libpg-query)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return `npm:${rest[0]?.startsWith('@') === true ? `${rest[0]}/${rest[1] ?? ''}` : (rest[0] ?? '')}`;
  }
  return shortUrl(url);
}

function top(map: Map<string, number>, busy: number, n: number): ProfileEntry[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([name, us]) => ({ name, ms: us / 1000, pct: busy > 0 ? (100 * us) / busy : 0 }));
}

const NOT_WORK = new Set(['(idle)', '(root)', '(program)']);

export function summariseProfile(file: string, n = 25): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const area = new Map<string, number>();
  let idle = 0;
  let total = 0;
  const { samples, timeDeltas } = profile;
  for (let i = 0; i < samples.length; i++) {
    // The delta *after* a sample is the time attributed to it.
    const dt = timeDeltas[i + 1] ?? 0;
    const id = samples[i];
    if (id === undefined || dt <= 0) continue;
    const node = byId.get(id);
    if (node === undefined) continue;
    total += dt;
    if (node.callFrame.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    const key = functionKey(node.callFrame);
    self.set(key, (self.get(key) ?? 0) + dt);
    const a = areaOf(node.callFrame);
    area.set(a, (area.get(a) ?? 0) + dt);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const frame = byId.get(cur)?.callFrame;
      if (frame === undefined || NOT_WORK.has(frame.functionName)) continue;
      const k = functionKey(frame);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + dt);
    }
  }
  const busy = total - idle;
  return {
    file,
    totalMs: total / 1000,
    idleMs: idle / 1000,
    busyMs: busy / 1000,
    samples: samples.length,
    selfByFunction: top(self, busy, n),
    inclusiveByFunction: top(inclusive, busy, n),
    selfByArea: top(area, busy, n),
  };
}

export function formatProfileSummary(s: ProfileSummary): string {
  const lines: string[] = [];
  lines.push(
    `${s.file}: ${s.samples} samples, ${s.totalMs.toFixed(0)} ms profiled, busy ${s.busyMs.toFixed(0)} ms, idle ${s.idleMs.toFixed(0)} ms`,
  );
  const section = (title: string, entries: readonly ProfileEntry[]) => {
    lines.push('', `${title} (ms, % of busy)`);
    for (const e of entries) lines.push(`${e.ms.toFixed(0).padStart(8)} ${e.pct.toFixed(1).padStart(5)}%  ${e.name}`);
  };
  section('self time by area', s.selfByArea);
  section('self time by function', s.selfByFunction);
  section('inclusive time by function', s.inclusiveByFunction);
  return lines.join('\n');
}

if (import.meta.main) {
  const [file, n] = process.argv.slice(2);
  if (file === undefined) {
    console.error('usage: node bench/cpu-profile.ts FILE.cpuprofile [top]');
    process.exit(2);
  }
  console.log(formatProfileSummary(summariseProfile(file, n === undefined ? 25 : Number(n))));
}
