// The V8 flags the sidecar runs with, wherever it runs: the image's ENTRYPOINT, the test harness and the
// benchmarks pass them to `node` (V8 reads them only at start; setting them from inside is too late).
//
// --liftoff-only: WebAssembly stays on V8's baseline compiler. Without it V8 tiers libpg-query's parser
// (one very large function) up with TurboFan in the background after the first statements: a transient
// of ~500 MB of compiler memory that the process keeps as RSS afterwards, and seconds of CPU. The baseline
// code parses fast enough for statements that miss the analysis cache (measured: 20,000 distinct
// statements 2.2 s against 4.6 s with the tier-up running, peak RSS 68 MB against 588 MB).
export const SIDECAR_NODE_FLAGS: readonly string[] = ['--liftoff-only'];
