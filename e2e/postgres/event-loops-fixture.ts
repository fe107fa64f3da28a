// What the event-loop tests (event-loops, lazy-event-loops) share: an agent's pg connection through the
// sidecar, and a metric's samples per label set (which loop served what).
import pg from 'pg';
import type { RunningTestSidecar } from '../harness/sidecar.ts';

/** A pg client of the agent logged in through `sidecar` with `token`; a failed login leaves nothing open. */
export async function connect(sidecar: RunningTestSidecar, token: string): Promise<pg.Client> {
  const client = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    password: token,
    database: 'a',
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}

/** The metric's samples on /metrics: label text → value. */
export async function samples(sidecar: RunningTestSidecar, name: string): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${String(sidecar.metricsPort)}/metrics`)).text();
  const found = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(\w+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m?.[1] === name) found.set(m[2] ?? '', Number(m[3]));
  }
  return found;
}
