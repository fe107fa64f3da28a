// V8 flags for running the sidecar (V8 reads them only at start; setting them from inside is too late).
//
// --liftoff-only: WebAssembly stays on V8's baseline compiler. Without it V8 tiers libpg-query's parser
// (one very large function) up with TurboFan in the background after the first statements: a transient
// of ~500 MB of compiler memory that the process keeps as RSS afterwards, and seconds of CPU (measured:
// 20,000 distinct statements 2.2 s against 4.6 s with the tier-up running, peak RSS 68 MB against 588 MB).
//
// Not yet the default of the test harness: with it, e2e/audit/durability-restart.test.ts saw statements
// flow but the durable trail's Session writer never acknowledge a record within 120 s (three runs; it
// passes without the flag). Until that is understood, bench/footprint.ts and the JSON-lines benchmarks
// pass it explicitly (measured there) and the durable trail runs without it. See bench/README.md.
//
// --max-semi-space-size=8: V8's young generation grows to at most 2 × 8 MiB. By default it grows much
// larger under load, and the pages it grew into stayed resident after the load (measured: RSS 262 MiB at the
// end of a prepared pgbench load and 258 MiB 30 s later, against 192 MiB with the flag; V8's own heap
// total had shrunk back to ~25 MiB in both). In interleaved runs of the same load the flag cost no CPU per
// transaction (72 µs both); 1 MiB cost +27 %, 4 MiB +7 % (bench/README.md, "Footprint").
export const SIDECAR_NODE_FLAGS: readonly string[] = ['--liftoff-only', '--max-semi-space-size=8'];
