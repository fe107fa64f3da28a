// V8 flags for running the sidecar (V8 reads them only at start; setting them from inside is too late).
//
// --liftoff-only: WebAssembly stays on V8's baseline compiler. Without it V8 tiers libpg-query's parser
// (one very large function) up with TurboFan in the background after the first statements: a transient
// of ~500 MB of compiler memory that the process keeps as RSS afterwards, and seconds of CPU (measured:
// 20,000 distinct statements 2.2 s against 4.6 s with the tier-up running, peak RSS 68 MB against 588 MB).
//
// The test harness passes these flags when CHAPERONE_SIDECAR_BIN names what to run (e2e/harness/
// sidecar-process.ts; the image's form: the bundle with these flags), and the real-node story runs the image.
// An earlier session saw e2e/audit/durability-restart.test.ts time out with --liftoff-only (no record
// acknowledged within 120 s, three runs of three); the seventh session did not reproduce it in ten runs,
// with the bundle and with the sources, at load averages of 5 to 23 (bench/README.md, "Footprint"). By
// default the harness still runs the sources without flags.
//
// --max-semi-space-size=8: V8's young generation grows to at most 2 × 8 MiB. By default it grows much
// larger under load, and the pages it grew into stayed resident after the load (measured: RSS 262 MiB at the
// end of a prepared pgbench load and 258 MiB 30 s later, against 192 MiB with the flag; V8's own heap
// total had shrunk back to ~25 MiB in both). In interleaved runs of the same load the flag cost no CPU per
// transaction (72 µs both); 1 MiB cost +27 %, 4 MiB +7 % (bench/README.md, "Footprint").
export const SIDECAR_NODE_FLAGS: readonly string[] = ['--liftoff-only', '--max-semi-space-size=8'];
