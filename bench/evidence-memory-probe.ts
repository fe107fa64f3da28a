// A preload (`node --import bench/evidence-memory-probe.ts`) for finding what holds the evidence store
// sidecar's memory under load (bench/README.md, issue 18, fifteenth session): in every thread it loads in
// (the main thread and, through the inherited execArgv, the audit worker), it appends the thread's
// memory once a second to `$CHAPERONE_MEMORY_PROBE_DIR/memory-<pid>-<thread>.jsonl`, and writes a heap
// snapshot of the thread when the file `snapshot` appears in that directory (its text names the snapshot;
// each thread writes one per name): no inspector, no signal, so the worker thread can be snapshotted too.
// Summarise a snapshot with `node bench/evidence-heap-summary.ts FILE`. Not part of the sidecar.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { getHeapStatistics, writeHeapSnapshot } from 'node:v8';
import { isMainThread, threadId } from 'node:worker_threads';

const dir = process.env.CHAPERONE_MEMORY_PROBE_DIR;
if (dir !== undefined && dir !== '') {
  const thread = isMainThread ? 'main' : `worker${String(threadId)}`;
  const out = join(dir, `memory-${String(process.pid)}-${thread}.jsonl`);
  const trigger = join(dir, 'snapshot');
  const taken = new Set<string>();
  const MiB = 1024 * 1024;
  const mib = (n: number) => Math.round((n / MiB) * 10) / 10;
  setInterval(() => {
    const m = process.memoryUsage();
    const h = getHeapStatistics();
    const line = {
      t: Date.now(),
      rss: mib(m.rss),
      heapTotal: mib(m.heapTotal),
      heapUsed: mib(m.heapUsed),
      external: mib(m.external),
      arrayBuffers: mib(m.arrayBuffers),
      malloced: mib(h.malloced_memory),
      peakMalloced: mib(h.peak_malloced_memory),
      physical: mib(h.total_physical_size),
    };
    appendFileSync(out, `${JSON.stringify(line)}\n`);
    if (!existsSync(trigger)) return;
    const name = readFileSync(trigger, 'utf8').trim();
    if (name === '' || taken.has(name)) return;
    taken.add(name);
    writeHeapSnapshot(join(dir, `${name}-${String(process.pid)}-${thread}.heapsnapshot`));
  }, 1000).unref();
}
