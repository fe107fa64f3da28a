// The row rewriter in process: the bytes of `bench/masking.ts`'s query (10 columns in text format, email
// and ssn masked) cut into 16 KiB chunks as a TLS socket delivers them, through the same scanner, response
// tracker and outbound collector the connection uses, into a sink that only counts bytes. Each chunk is
// copied first (as a socket read allocates it), in both the masked and the `pass` run. Sidecar CPU per
// row without the sockets, TLS and PostgreSQL, so the rewriter's own cost shows apart from the noise of a
// shared machine.
//
//   node bench/masking-rows.ts [--baseline DIR] [--rounds N] [--rows N] [--strategy redact-partial|hash|pass]
//
// With --baseline, the same checkout's code and another's (its root directory, e.g. /work/main) run
// interleaved, round by round; each line is the minimum and median of process CPU (user + system) per row.
import { createHash, type Hash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const { values: args } = parseArgs({
  options: {
    baseline: { type: 'string' },
    rounds: { type: 'string', default: '15' },
    rows: { type: 'string', default: '200000' },
    strategy: { type: 'string', default: 'redact-partial' },
  },
});
const ROWS = Number(args.rows);
const ROUNDS = Number(args.rounds);
const CHUNK = 16 * 1024;
const KEY = Buffer.alloc(32, 7);

/** A DataRow of the bench table's row `i`, as PostgreSQL sends it in text format. */
function dataRow(i: number): Buffer {
  const md5ish = (n: number): string => (n * 2654435761).toString(16).padStart(32, '0').slice(0, 32);
  const values = [
    String(i),
    `user${String(i)}@example.com`,
    String(i).padStart(9, '0'),
    md5ish(i),
    md5ish(i + 1),
    String(i * 7),
    `name ${String(i)}`,
    '2026-12-05',
    md5ish(i + 2),
    String(i % 100),
  ].map((v) => Buffer.from(v));
  const body = 2 + values.reduce((n, v) => n + 4 + v.length, 0);
  const out = Buffer.alloc(1 + 4 + body);
  out[0] = 0x44;
  out.writeInt32BE(4 + body, 1);
  out.writeInt16BE(values.length, 5);
  let at = 7;
  for (const v of values) {
    at = out.writeInt32BE(v.length, at);
    at += v.copy(out, at);
  }
  return out;
}

function rowDescription(): Buffer {
  const names = ['id', 'email', 'ssn', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9', 'c10'];
  const types = [23, 25, 25, 25, 25, 23, 25, 1082, 25, 23];
  const fields = names.map((n, i) => {
    const f = Buffer.alloc(n.length + 1 + 18);
    f.write(n, 0);
    let at = n.length + 1;
    at = f.writeUInt32BE(16384, at);
    at = f.writeInt16BE(i + 1, at);
    at = f.writeUInt32BE(types[i] ?? 25, at);
    at = f.writeInt16BE(-1, at);
    at = f.writeInt32BE(-1, at);
    f.writeInt16BE(0, at);
    return f;
  });
  const body = Buffer.concat([Buffer.from([0, fields.length]), ...fields]);
  const head = Buffer.alloc(5);
  head[0] = 0x54;
  head.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([head, body]);
}

function commandComplete(rows: number): Buffer {
  const tag = Buffer.from(`SELECT ${String(rows)}\0`);
  const head = Buffer.alloc(5);
  head[0] = 0x43;
  head.writeInt32BE(4 + tag.length, 1);
  return Buffer.concat([head, tag, Buffer.from([0x5a, 0, 0, 0, 5, 0x49])]);
}

/** The response of one `select *`, cut as a TLS socket delivers it. */
function responseChunks(): Buffer[] {
  const all = Buffer.concat([
    rowDescription(),
    ...Array.from({ length: ROWS }, (_, i) => dataRow(i + 1)),
    commandComplete(ROWS),
  ]);
  const chunks: Buffer[] = [];
  for (let at = 0; at < all.length; at += CHUNK) chunks.push(Buffer.from(all.subarray(at, at + CHUNK)));
  return chunks;
}

interface Pipeline {
  /** Bytes sent to the client; with `digest`, their SHA-256 too (the warm-up round compares the outputs). */
  run(chunks: readonly Buffer[], digest?: Hash): number;
}

async function pipeline(root: string): Promise<Pipeline> {
  const load = async (path: string): Promise<Record<string, unknown>> =>
    (await import(pathToFileURL(join(root, path)).href)) as Record<string, unknown>;
  const { BackendScanner } = (await load('sidecar/src/engines/postgres/protocol/backend-scanner.ts')) as {
    BackendScanner: new (o: object) => {
      setInterested(c: number, on: boolean): void;
      push(b: Buffer): void;
      next(): { kind: 'raw'; bytes: Buffer } | { kind: 'frame'; code: number; frame: Buffer } | null;
    };
  };
  const { ResponseTracker, TRACKED_FRAMES } = (await load('sidecar/src/engines/postgres/response-tracker.ts')) as {
    ResponseTracker: new (o: object) => {
      expect(kind: string, command?: object, denial?: undefined, rows?: object): void;
      onFrame(code: number, frame: Buffer): Buffer;
    };
    TRACKED_FRAMES: number[];
  };
  const { OutboundBytes } = (await load('sidecar/src/engines/postgres/outbound-bytes.ts')) as {
    OutboundBytes: new () => {
      push(b: Buffer): void;
      flushTo(s: { write(b: Buffer): boolean; cork(): void; uncork(): void }): boolean;
    };
  };
  const { RowMasker } = (await load('sidecar/src/engines/postgres/masking/row-masker.ts')) as {
    RowMasker: new (o: object) => object;
  };
  const mask = (strategy: string): object => ({
    kind: 'mask',
    strategy,
    keepLast: 4,
    value: '',
    rule: 'bench/masked/rule',
    source: 'public.masking_bench.x',
  });
  const pass = { kind: 'pass' };
  // `pass`: a rewriter that masks nothing (the cost of looking at the rows at all).
  const [first, second] =
    args.strategy === 'hash'
      ? [mask('hash'), mask('hash')]
      : args.strategy === 'pass'
        ? [pass, pass]
        : [mask('redact'), mask('partial')];
  const plan = {
    kind: 'mask',
    columns: [pass, first, second, pass, pass, pass, pass, pass, pass, pass],
    fallback: mask('redact'),
    typeRules: new Map(),
    detect: undefined,
    sensitive: true,
  };
  let bytes = 0;
  let hashing: Hash | undefined;
  const sink = {
    write: (b: Buffer): boolean => {
      bytes += b.length;
      hashing?.update(b);
      return true;
    },
    cork: (): void => undefined,
    uncork: (): void => undefined,
  };
  return {
    run(chunks, digest) {
      bytes = 0;
      hashing = digest;
      const scanner = new BackendScanner({ interest: TRACKED_FRAMES, dataRowRuns: true });
      const tracker = new ResponseTracker({ onOutcome: () => undefined });
      tracker.expect('query', { id: 1 }, undefined, new RowMasker({ plans: [plan], hashKey: KEY }));
      const out = new OutboundBytes();
      // As postgres-connection.ts's onUpstreamData.
      for (const stored of chunks) {
        // A fresh copy, as a socket read delivers: in cache, as the bytes TLS just decrypted are (the stored
        // 40 MB are not, and reading them cold would be most of what is measured).
        const chunk = Buffer.from(stored);
        scanner.setInterested(0x44, true);
        scanner.setInterested(0x4e, true);
        scanner.push(chunk);
        for (let seg = scanner.next(); seg !== null; seg = scanner.next()) {
          if (seg.kind === 'raw') out.push(seg.bytes);
          else out.push(tracker.onFrame(seg.code, seg.frame));
        }
        out.flushTo(sink);
      }
      return bytes;
    },
  };
}

function cpuNs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
}

const stats = (xs: number[]): string => {
  const s = [...xs].sort((a, b) => a - b);
  return `min ${(s[0] ?? NaN).toFixed(0)} ns/row, median ${(s[Math.floor(s.length / 2)] ?? NaN).toFixed(0)} ns/row`;
};

const chunks = responseChunks();
const targets: [string, Pipeline][] = [['this checkout', await pipeline(resolve(import.meta.dirname, '..'))]];
if (args.baseline !== undefined) targets.push([`baseline ${args.baseline}`, await pipeline(resolve(args.baseline))]);
const perRow = new Map<string, number[]>(targets.map(([name]) => [name, []]));
const sizes = new Map<string, string>();
for (const [name, p] of targets) {
  const digest = createHash('sha256');
  const bytes = p.run(chunks, digest); // warm-up
  sizes.set(name, `${String(bytes)} bytes out, sha256 ${digest.digest('hex').slice(0, 12)}`);
}
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, p] of round % 2 === 0 ? targets : [...targets].reverse()) {
    const before = cpuNs();
    p.run(chunks);
    perRow.get(name)?.push((cpuNs() - before) / ROWS);
  }
}
console.log(
  `row rewriter in process, ${String(ROWS)} rows × 10 columns, ${args.strategy}, ${String(ROUNDS)} rounds (load ${(
    await import('node:os')
  )
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}):`,
);
for (const [name] of targets) console.log(`  ${name}: ${stats(perRow.get(name) ?? [])} (${sizes.get(name) ?? ''})`);
