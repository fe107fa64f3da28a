// What the upstream reuse tests read from a sidecar: its metrics, and the pool's size once a released
// session's asynchronous reset is done.
import { poll } from '../harness/poll.ts';
import type { RunningTestSidecar } from '../harness/sidecar.ts';

/** One sample of a metric of the sidecar (the sum over label sets matching `labels`). */
export async function metric(
  sidecar: RunningTestSidecar,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${sidecar.metricsPort}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m?.[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) total += Number(m[3]);
  }
  return total;
}

/** Waits until `n` upstream sessions are parked (a released session is reset asynchronously). */
export async function parked(sidecar: RunningTestSidecar, n: number): Promise<void> {
  await poll(`${String(n)} parked upstream sessions`, async () =>
    (await metric(sidecar, 'chaperone_upstream_connections_parked')) === n ? true : undefined,
  );
}
