// The API server's CPU per record written into Session objects under different forms of the CRD's rules on
// `spec.records`, A/B interleaved in one private control plane (kube-apiserver and etcd are one process
// there, its CPU read from /proc). The flush is the bench's (bench/audit.ts): 8 sessions' records queued at
// once and written by the sidecar's SessionWriter; between runs the Session CRD is re-applied with the
// rules of the next form. Run alone: node bench/session-rules.ts [rounds] [records per session]
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { silentLogger } from '@chaperone/api';
import {
  KubernetesSessionStore,
  SessionWriter,
  loadOrCreateSigningKey,
  type RecordOrigin,
} from '@chaperone/sidecar/audit';
import { startControlPlane } from '../e2e/harness/control-plane.ts';
import { REPO_ROOT } from '../e2e/harness/tools.ts';
import { applyCrds, kubectl } from '../e2e/harness/kube.ts';
import { pgbenchSessionRecords } from './audit.ts';

/** The three rules' texts as the generated CRD has them now (api/src/session.ts). */
const CURRENT = [
  'size(self) >= size(oldSelf) && oldSelf.all(i, r, self[i] == r)',
  'self.all(i, r, r.seq == self[0].seq + i)',
  "self.all(i, r, r.type != 'session.end' || i == size(self) - 1)",
];

/**
 * Forms compared: the shipped one, the one before it, the append-only rule alone, and none (the floor: what
 * the rest of the write costs).
 */
const FORMS: Record<string, readonly string[] | undefined> = {
  current: CURRENT,
  previous: [
    'size(self) >= size(oldSelf) && self.slice(0, size(oldSelf)) == oldSelf',
    'self.map(r, r.seq).isSorted() && self.map(r, r.seq).distinct().size() == size(self) && (size(self) == 0 || self[size(self) - 1].seq - self[0].seq == size(self) - 1)',
    "self.filter(r, r.type == 'session.end').size() == 0 || (self.filter(r, r.type == 'session.end').size() == 1 && self[size(self) - 1].type == 'session.end')",
  ],
  'append-only alone': [CURRENT[0] ?? 'true', 'size(self) >= 0', 'size(self) >= 1 || size(self) == 0'],
  'append-only (slice) alone': [
    'size(self) >= size(oldSelf) && self.slice(0, size(oldSelf)) == oldSelf',
    'size(self) >= 0',
    'size(self) >= 1 || size(self) == 0',
  ],
  // Attribution only (it would let a record's other fields change): the cost of walking oldSelf at all.
  'hashes compared alone': [
    'size(self) >= size(oldSelf) && oldSelf.all(i, r, self[i].hash == r.hash)',
    'size(self) >= 0',
    'size(self) >= 1 || size(self) == 0',
  ],
  none: undefined,
};
const only = process.env.FORMS?.split(',');

function yamlRule(rule: string): string {
  return `rule: ${JSON.stringify(rule)}`;
}

/** The Session CRD's YAML with the records rules replaced by `form` (or removed). */
function crdWith(form: readonly string[] | undefined): string {
  const text = readFileSync(join(REPO_ROOT, 'crds', 'sessions.chaperone.dev.yaml'), 'utf8');
  const lines = text.split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    const ruleText = /^\s*- rule: (.*)$/.exec(line)?.[1]?.replace(/^"(.*)"$/, '$1');
    const at = ruleText === undefined ? -1 : CURRENT.indexOf(ruleText);
    if (at < 0) {
      out.push(line);
      continue;
    }
    if (form === undefined) {
      // Rules that are always true in their place (the same number of rules, none walking the records).
      out.push(
        line.replace(
          /rule: .*$/,
          yamlRule(['true', 'size(self) >= 0', 'size(self) >= 1 || size(self) == 0'][at] ?? 'true'),
        ),
      );
    } else out.push(line.replace(/rule: .*$/, yamlRule(form[at] ?? 'true')));
  }
  const result = out.join('\n');
  if (form !== CURRENT && result === text) throw new Error('the Session CRD does not have the current rules');
  return result;
}

/** The API server's count of requests on sessions so far, by verb (and subresource). */
async function sessionRequests(kubeconfig: string): Promise<Map<string, number>> {
  const stdout = await kubectl(['get', '--raw', '/metrics'], { kubeconfig });
  const counts = new Map<string, number>();
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('apiserver_request_total{') || !line.includes('resource="sessions"')) continue;
    const verb = /verb="([A-Z]+)"/.exec(line)?.[1] ?? '?';
    const sub = /subresource="([a-z]*)"/.exec(line)?.[1] ?? '';
    const key = sub === '' ? verb : `${verb} ${sub}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return counts;
}

/** CPU (user + system) of a process so far, in ms. */
function cpuMsOf(pid: number): number {
  const stat = readFileSync(`/proc/${String(pid)}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

const rounds = Number(process.argv[2] ?? 3);
const perSession = Number(process.argv[3] ?? 512);
const root = mkdtempSync(join(tmpdir(), 'chaperone-session-rules-'));
mkdirSync(join(root, 'cp'));
const cp = await startControlPlane(join(root, 'cp'));
try {
  const pid = cp.process.pid ?? 0;
  await applyCrds(cp.kubeconfig);
  const namespace = 'rules-bench';
  await kubectl(['create', 'namespace', namespace], { kubeconfig: cp.kubeconfig });
  const key = await loadOrCreateSigningKey(join(root, 'signing-key.jwk'));
  const store = new KubernetesSessionStore({ kubeconfig: cp.kubeconfig, namespace });
  const stream = pgbenchSessionRecords(perSession);
  const names = Object.keys(FORMS).filter((n) => only === undefined || only.includes(n));
  const results: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  let run = 0;
  for (let round = 0; round < rounds + 1; round++) {
    // Round 0 warms the API server up (its caches, the JIT of the writer) and is not counted.
    const order = round % 2 === 0 ? names : [...names].reverse();
    for (const name of order) {
      const file = join(root, `${name}.yaml`);
      writeFileSync(file, crdWith(FORMS[name]));
      await kubectl(['apply', '--server-side', '--force-conflicts', '-f', file], { kubeconfig: cp.kubeconfig });
      await sleep(2000); // the API server swaps in the new schema's validators
      const writer = new SessionWriter({
        store,
        signingKey: key,
        pod: { name: 'bench-pod', namespace },
        logger: silentLogger,
        flushIntervalMs: 100,
      });
      run++;
      const refs: RecordOrigin[] = Array.from({ length: 8 }, (_, i) => ({
        sessionId: `${String(run).padStart(4, '0')}${String(i).padStart(4, '0')}-0000-4000-8000-${String(Date.now()).padStart(12, '0')}`,
        resource: 'bench-db',
        resourceType: 'postgres',
        namespace,
        pod: 'bench-pod',
      }));
      let n = 0;
      for (const r of stream) for (const ref of refs) writer.enqueue(++n, ref, r);
      const requestsBefore = await sessionRequests(cp.kubeconfig);
      const before = cpuMsOf(pid);
      const started = performance.now();
      writer.start();
      await writer.flush();
      const wall = performance.now() - started;
      const used = cpuMsOf(pid) - before;
      await writer.stop();
      const requestsAfter = await sessionRequests(cp.kubeconfig);
      const requests = [...requestsAfter]
        .map(([k, v]) => [k, v - (requestsBefore.get(k) ?? 0)] as const)
        .filter(([, v]) => v > 0)
        .map(([k, v]) => `${k} ${String(v)}`)
        .join(', ');
      const perRecordUs = (used * 1000) / n;
      if (round > 0) results[name]?.push(perRecordUs);
      console.log(
        `${round === 0 ? 'warm-up ' : ''}${name}: ${String(n)} records, control plane ${used.toFixed(0)} ms CPU (${perRecordUs.toFixed(0)} µs/record), ${((n / wall) * 1000).toFixed(0)} records/s, load ${loadavg()[0]?.toFixed(1) ?? '?'}; requests: ${requests}`,
      );
    }
  }
  for (const name of names) {
    const xs = [...(results[name] ?? [])].sort((a, b) => a - b);
    console.log(
      `${name}: control plane µs per record, min ${xs[0]?.toFixed(0) ?? '-'}, median ${xs[Math.floor(xs.length / 2)]?.toFixed(0) ?? '-'} (${String(xs.length)} runs)`,
    );
  }
} finally {
  await cp.stop();
  rmSync(root, { recursive: true, force: true });
}
