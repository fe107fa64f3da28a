// Summarises a V8 heap snapshot (`node bench/evidence-heap-summary.ts FILE [TOP]`): the largest groups
// of objects by constructor (self size and count), and by node type, so that what holds a thread's heap
// under load can be named (bench/evidence-memory-probe.ts takes the snapshots; bench/README.md, issue 18).
import { readFileSync } from 'node:fs';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

const file = process.argv[2];
if (file === undefined) throw new Error('usage: node bench/evidence-heap-summary.ts FILE [TOP]');
const top = Number(process.argv[3] ?? 20);
const snap = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
const fields = snap.snapshot.meta.node_fields;
const types = snap.snapshot.meta.node_types[0];
const width = fields.length;
const typeAt = fields.indexOf('type');
const nameAt = fields.indexOf('name');
const sizeAt = fields.indexOf('self_size');
const byName = new Map<string, { size: number; count: number }>();
const byType = new Map<string, { size: number; count: number }>();
let total = 0;
const add = (map: Map<string, { size: number; count: number }>, key: string, size: number) => {
  const e = map.get(key) ?? { size: 0, count: 0 };
  e.size += size;
  e.count += 1;
  map.set(key, e);
};
for (let i = 0; i < snap.nodes.length; i += width) {
  const type = types[snap.nodes[i + typeAt] as number] ?? '?';
  const size = snap.nodes[i + sizeAt] as number;
  total += size;
  add(byType, type, size);
  // Objects by constructor; strings, code and arrays by their type (their names are their contents).
  const name =
    type === 'object' || type === 'closure'
      ? `${type} ${snap.strings[snap.nodes[i + nameAt] as number] ?? '?'}`
      : `(${type})`;
  add(byName, name, size);
}
const MiB = 1024 * 1024;
const print = (title: string, map: Map<string, { size: number; count: number }>) => {
  console.log(title);
  for (const [k, v] of [...map].sort((a, b) => b[1].size - a[1].size).slice(0, top)) {
    console.log(`  ${(v.size / MiB).toFixed(2).padStart(8)} MiB ${String(v.count).padStart(9)}  ${k.slice(0, 100)}`);
  }
};
console.log(`${file}: ${(total / MiB).toFixed(1)} MiB in ${String(snap.nodes.length / width)} nodes`);
print('by type:', byType);
print('by constructor:', byName);
