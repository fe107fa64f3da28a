// Records in Session objects (no evidence store): a sidecar killed (SIGKILL) with well over 4,096
// unacknowledged spool entries across several sessions, the API server unreachable meanwhile, restarted on
// the same spool: its audit worker gets the replay in several messages, and every record must reach the
// Session objects exactly once, chained and signed, ended sessions `Closed` and killed ones `Abandoned`,
// `kubectl chaperone verify` passing, nothing left in the spool.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { createTestNamespace } from '../harness/kube.ts';
import { startAuditSidecar, verifySessions } from './durability-helpers.ts';
import {
  checkStatements,
  fillSpoolAndKill,
  finalSessions,
  kubeconfigThrough,
  replayedEntries,
  spoolEmptied,
} from './killed-spool.ts';
import { runCli } from './run-cli.ts';
import { startMeteredOutage } from './tcp-outage.ts';

test('Session objects: a spool of over 12,000 entries across 6 sessions replayed after SIGKILL, each record written once', async (t) => {
  const { kubeconfig, server } = controlPlaneEnv();
  const apiOutage = await startMeteredOutage(t, Number(new URL(server).port));
  const namespace = await createTestNamespace(t);
  const dir = testDir(t);
  const sidecar = {
    kubeconfig: kubeconfigThrough(t, kubeconfig, apiOutage.port),
    namespace,
    dir,
    flushIntervalMs: 200,
    // Outcomes merge into their decisions: the spool holds decision and outcome entries.
    audit: { exportJsonLines: false },
  };
  // 6 busy sessions, more than the writer's concurrency (4): each gets its turn every flush round
  // (docs/audit-durability.md, "Fairness"), so every session's first object comes while the load lasts.
  // 1,100 statements after the cut: with every session written up to the cut, over 3 × 4,096 entries remain.
  const load = await fillSpoolAndKill(t, { sidecar, outage: apiOutage, statementsAfterCut: 1100 });
  await apiOutage.restore();
  const second = await startAuditSidecar(t, sidecar);
  const verified = await verifySessions(await finalSessions(kubeconfig, namespace, load), namespace);
  assert.ok(replayedEntries(second) > 3 * 4096, `replayed ${String(replayedEntries(second))} entries`);
  const { merged } = checkStatements(verified, load);
  assert.ok(merged > 6000, `${String(merged)} statements recorded as one merged record`);
  assert.ok(
    verified.every((v) => v.parts.length >= 4),
    `each session continued over several parts (${verified.map((v) => v.parts.length).join(', ')})`,
  );
  const verify = await runCli(['verify', '--all', '-n', namespace], { KUBECONFIG: kubeconfig });
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  assert.match(verify.stdout, /6 session\(s\)/);
  await spoolEmptied(second, dir);
});
