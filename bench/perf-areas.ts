// Splits a `perf record -g` recording of the sidecar (or PgBouncer, or the byte pipe) by area — kernel, V8,
// OpenSSL, Node, the sidecar's own JavaScript… — in µs per transaction, the table bench/README.md keeps for
// 150 clients. Self time (no children), by thread. Needs the process to have run with --perf-basic-prof
// (its /tmp/perf-PID.map still there) for JavaScript frames to have names.
//
//   node bench/perf-areas.ts FILE.data --tps 4510 --seconds 6 [--frequency 999] [--top 25]
//
// `--tps` and `--seconds`: the run's transactions per second and how long perf recorded, to turn samples
// into µs per transaction (samples ÷ frequency = CPU seconds).
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';

/** A JavaScript function's name in a --perf-basic-prof map (`JS:*'name file:line`, `*` optimised, `~` not). */
const JS_FRAME = /^(JS|LazyCompile|Function|Script):/;

/** The area a sample's symbol belongs to. Order matters: the first that matches wins. */
const AREAS: readonly { readonly area: string; readonly test: (dso: string, sym: string) => boolean }[] = [
  { area: 'kernel (sockets, scheduler, wake-ups)', test: (dso) => dso.includes('kernel') },
  {
    area: 'OpenSSL and TLSWrap (upstream TLS, record hash)',
    test: (dso, sym) =>
      /libssl|libcrypto/.test(dso) ||
      /TLSWrap|SSL_|ssl3_|tls1_|tls_|ossl_|OPENSSL|EVP_|BIO_|NodeBIO|aes|gcm|sha256|sha512|SHA256|SHA512|CRYPTO_|ERR_|ghash|poly1305|chacha|bn_|BN_|crypto::/i.test(
        sym,
      ),
  },
  {
    area: 'malloc/free/memmove',
    test: (dso, sym) =>
      /libc|ld-linux/.test(dso) && /malloc|free|memmove|memcpy|memset|memcmp|realloc|calloc|cfree|_int_/.test(sym),
  },
  { area: 'libc (other: system call wrappers, locks)', test: (dso) => /libc|libpthread|ld-linux/.test(dso) },
  {
    area: 'garbage collection',
    test: (_dso, sym) =>
      /Scaveng|MarkCompact|Heap::|GCTracer|MinorMS|Sweeper|Evacuat|MarkingVisitor|ConcurrentMarking|MemoryAllocator|PagedSpace|NewSpace|SemiSpace|RememberedSet|SlotSet|HeapObject.*Visit|LocalHeap|Marking/.test(
        sym,
      ),
  },
  {
    area: 'V8 builtins (ICs, strings, calls)',
    test: (_dso, sym) => /^(Builtin:|BytecodeHandler:|Builtins_|Stub:|RegExp:)/.test(sym),
  },
  {
    area: "the sidecar's JavaScript",
    test: (_dso, sym) => JS_FRAME.test(sym) && /sidecar-bundle|\/sidecar\/src\/|\/api\//.test(sym),
  },
  {
    area: 'libraries’ JavaScript (node_modules)',
    test: (_dso, sym) => JS_FRAME.test(sym) && sym.includes('node_modules'),
  },
  {
    area: "Node's JavaScript (streams, timers, ticks)",
    test: (_dso, sym) => JS_FRAME.test(sym),
  },
  { area: "Node's C++ (streams, libuv)", test: (_dso, sym) => /^(node::|uv_|uv__)/.test(sym) },
  { area: 'V8 runtime and API glue', test: (_dso, sym) => /^(v8::|v8_|Runtime_|cppgc::)/.test(sym) },
  {
    area: 'unnamed (JIT code without a map, stripped binaries)',
    test: (dso, sym) =>
      dso.includes('perf-') || dso.includes('[JIT]') || sym.startsWith('[unknown]') || sym.startsWith('0x'),
  },
];

const OTHER = 'other (node binary, other libraries)';

export interface AreaSplit {
  /** Samples by thread name, then by area. */
  readonly byThread: Readonly<Record<string, Readonly<Record<string, number>>>>;
  /** The heaviest symbols: samples, thread, dso, symbol. */
  readonly top: readonly { samples: number; thread: string; dso: string; sym: string }[];
  readonly samples: number;
}

export function areaOf(dso: string, sym: string): string {
  return AREAS.find((a) => a.test(dso, sym))?.area ?? OTHER;
}

/** Reads `perf report` (self samples per thread, dso and symbol) and sums them by area. */
export function splitByArea(file: string): AreaSplit {
  const text = execFileSync(
    'perf',
    [
      'report',
      '-i',
      file,
      '--stdio',
      '--no-children',
      '-g',
      'none',
      '--sort',
      'comm,dso,sym',
      '-F',
      'sample,comm,dso,sym',
      '--percent-limit',
      '0',
      '-t',
      '|',
    ],
    { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const byThread: Record<string, Record<string, number>> = {};
  const top: { samples: number; thread: string; dso: string; sym: string }[] = [];
  let samples = 0;
  for (const line of text.split('\n')) {
    // "1234  |MainThread  |[JIT] tid 30070  |[.] JS:*'drain file:///…"  ([k] for a kernel symbol)
    const fields = line.split('|');
    if (line.startsWith('#') || fields.length < 4) continue;
    const n = Number(fields[0]);
    if (!Number.isFinite(n) || n === 0) continue;
    const thread = (fields[1] ?? '').trim();
    const symField = fields.slice(3).join('|').trim();
    const dso = symField.startsWith('[k]') ? '[kernel.kallsyms]' : (fields[2] ?? '').trim();
    const sym = symField.slice(4).trim();
    samples += n;
    const area = areaOf(dso, sym);
    const t = (byThread[thread] ??= {});
    t[area] = (t[area] ?? 0) + n;
    top.push({ samples: n, thread, dso, sym });
  }
  top.sort((a, b) => b.samples - a.samples);
  return { byThread, top, samples };
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    options: {
      tps: { type: 'string' },
      seconds: { type: 'string' },
      frequency: { type: 'string', default: '999' },
      top: { type: 'string', default: '25' },
    },
    allowPositionals: true,
  });
  const file = positionals[0];
  if (file === undefined || values.tps === undefined || values.seconds === undefined) {
    throw new Error('usage: node bench/perf-areas.ts FILE.data --tps N --seconds S [--frequency 999] [--top 25]');
  }
  const transactions = Number(values.tps) * Number(values.seconds);
  const usPerTxn = (n: number) => ((n / Number(values.frequency)) * 1e6) / transactions;
  const split = splitByArea(file);
  const areas = new Map<string, number>();
  for (const t of Object.values(split.byThread))
    for (const [a, n] of Object.entries(t)) areas.set(a, (areas.get(a) ?? 0) + n);
  const threads = Object.entries(split.byThread).map(
    ([name, t]) => [name, Object.values(t).reduce((x, y) => x + y, 0)] as const,
  );
  threads.sort((a, b) => b[1] - a[1]);
  const main = threads[0]?.[0];
  console.log(`${file}: ${String(split.samples)} samples, ${usPerTxn(split.samples).toFixed(1)} µs/txn (all threads)`);
  console.log(`threads: ${threads.map(([n, s]) => `${n} ${usPerTxn(s).toFixed(1)}`).join(', ')}`);
  console.log(`\n${'area'.padEnd(50)} ${'all threads'.padStart(11)} ${(main ?? 'main').padStart(12)}`);
  for (const [area, n] of [...areas].sort((a, b) => b[1] - a[1])) {
    const m = main === undefined ? 0 : (split.byThread[main]?.[area] ?? 0);
    console.log(`${area.padEnd(50)} ${usPerTxn(n).toFixed(1).padStart(11)} ${usPerTxn(m).toFixed(1).padStart(12)}`);
  }
  console.log(`\ntop ${values.top} symbols (µs/txn, thread, symbol):`);
  for (const s of split.top.slice(0, Number(values.top))) {
    console.log(
      `${usPerTxn(s.samples).toFixed(2).padStart(7)}  ${s.thread.padEnd(14)} ${areaOf(s.dso, s.sym).slice(0, 18).padEnd(18)} ${s.sym.slice(0, 110)}`,
    );
  }
}
