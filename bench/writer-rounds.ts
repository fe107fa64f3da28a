// A/B of the Session writer's flush scheduling (docs/audit-durability.md, "Fairness") on one private
// control plane: records queued at once, timed until flush() says they are all in Session objects, with the
// writer's CPU (this process) and the control plane's CPU (its process tree, /proc) per record. Two shapes:
// one busy session (a budget must not slow it: the next round starts at once) and 8 sessions (more than
// the writer's concurrency). Each round runs both trees, in alternating order.
// Run: node bench/writer-rounds.ts <tree A> <tree B> [rounds]   (a tree is a checkout's root; its
// sidecar/src/core/audit/session-writer.ts is the writer measured; run under /work/cpu-lock measure).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { silentLogger } from '@chaperone/api';
import { KubernetesSessionStore, loadOrCreateSigningKey, type RecordOrigin } from '@chaperone/sidecar/audit';
import type { SessionWriter } from '../sidecar/src/core/audit/session-writer.ts';
import { startControlPlane } from '../e2e/harness/control-plane.ts';
import { applyCrds, kubectl } from '../e2e/harness/kube.ts';
import { pgbenchSessionRecords } from './audit.ts';

type WriterClass = typeof SessionWriter;

/** utime + stime ticks of `root` and every process below it. */
function treeTicks(root: number): number {
  const stats = new Map<number, { ppid: number; ticks: number }>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = text.slice(text.lastIndexOf(') ') + 2).split(' ');
      stats.set(Number(name), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
    } catch {
      // gone meanwhile
    }
  }
  const inTree = (pid: number): boolean => {
    for (let p = pid, depth = 0; p > 1 && depth < 16; depth++) {
      if (p === root) return true;
      p = stats.get(p)?.ppid ?? 0;
    }
    return false;
  };
  let ticks = 0;
  for (const [pid, s] of stats) if (inTree(pid)) ticks += s.ticks;
  return ticks;
}

async function main(): Promise<void> {
  const [treeA, treeB, roundsArg] = process.argv.slice(2);
  if (treeA === undefined || treeB === undefined) throw new Error('usage: writer-rounds.ts <tree A> <tree B> [rounds]');
  const rounds = Number(roundsArg ?? 4);
  const writers = new Map<string, WriterClass>();
  for (const tree of [treeA, treeB]) {
    const mod = (await import(resolve(tree, 'sidecar/src/core/audit/session-writer.ts'))) as {
      SessionWriter: WriterClass;
    };
    writers.set(tree, mod.SessionWriter);
  }
  const root = mkdtempSync(join(tmpdir(), 'chaperone-writer-rounds-'));
  const cpDir = join(root, 'cp');
  mkdirSync(cpDir, { recursive: true });
  const cp = await startControlPlane(cpDir);
  try {
    await applyCrds(cp.kubeconfig);
    const namespace = 'writer-rounds';
    await kubectl(['create', 'namespace', namespace], { kubeconfig: cp.kubeconfig });
    const key = await loadOrCreateSigningKey(join(root, 'signing-key.jwk'));
    const store = new KubernetesSessionStore({ kubeconfig: cp.kubeconfig, namespace });
    const cpPid = cp.process.pid ?? 0;
    let runs = 0;
    const run = async (Writer: WriterClass, sessions: number, records: number) => {
      const writer = new Writer({
        store,
        signingKey: key,
        pod: { name: 'bench-pod', namespace },
        logger: silentLogger,
        flushIntervalMs: 100,
      });
      runs += 1;
      const stream = pgbenchSessionRecords(Math.ceil(records / sessions));
      const refs: RecordOrigin[] = Array.from({ length: sessions }, (_, i) => ({
        sessionId: `${String(runs).padStart(4, '0')}${String(i).padStart(4, '0')}-0000-4000-8000-000000000000`,
        resource: 'bench-db',
        resourceType: 'postgres',
        namespace,
        pod: 'bench-pod',
      }));
      let n = 0;
      for (const r of stream) for (const ref of refs) writer.enqueue(++n, ref, r);
      const cpu = process.cpuUsage();
      const cpTicks = treeTicks(cpPid);
      const started = process.hrtime.bigint();
      writer.start();
      await writer.flush();
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const used = process.cpuUsage(cpu);
      const cpSeconds = (treeTicks(cpPid) - cpTicks) / 100;
      await writer.stop();
      return {
        rate: n / seconds,
        writerMicros: (used.user + used.system) / n,
        apiMicros: (cpSeconds * 1e6) / n,
      };
    };
    const shapes = [
      { name: '1 session ', sessions: 1, records: 8192 },
      { name: '8 sessions', sessions: 8, records: 16_384 },
    ];
    console.log('round shape      tree  records/s  writer µs/record  control plane µs/record  load1');
    for (let round = 1; round <= rounds; round++) {
      const order = round % 2 === 1 ? [treeA, treeB] : [treeB, treeA];
      for (const shape of shapes) {
        for (const tree of order) {
          const r = await run(writers.get(tree) as WriterClass, shape.sessions, shape.records);
          const label = tree === treeA ? 'A' : 'B';
          const load = readFileSync('/proc/loadavg', 'utf8').split(' ')[0] ?? '';
          console.log(
            `${String(round).padStart(5)} ${shape.name} ${label.padStart(4)} ${r.rate.toFixed(0).padStart(10)} ${r.writerMicros.toFixed(1).padStart(17)} ${r.apiMicros.toFixed(1).padStart(24)}  ${load}`,
          );
        }
      }
    }
  } finally {
    await cp.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
