// What the trail says of commands that were refused before or outside policy, refused at their Bind, or
// approved at their Bind and never run: one decision per command that says what was decided, and one outcome
// that says what happened on the server, in the order the client sent them (docs/postgres-engine.md, "What is
// recorded"; docs/approvals.md). Raw frames through the real sidecar (approvals on, the real API server) to a
// real PostgreSQL; judged on the server's state and on the verified trail of each session once it ended.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { carriesCommandOutcome } from '@chaperone/api';
import type { AccessPolicySpec, AuditRecord } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { listSessions, verifySessions } from '../audit/durability-helpers.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import { writePolicyBundle } from '../harness/sidecar-process.ts';
import { createApprovalWorld, POLICIES, type ApprovalWorld } from '../approvals/approval-fixture.ts';
import { held, heldAndDecided, requestOf, settled } from './held-wire.ts';
import { authenticatedClient, parseBackend, query, SYNC, TERMINATE, type RawClient } from './raw-client.ts';
import { bind, describe, exchange, execute, FLUSH, functionCall, parse } from './protocol-wire.ts';
import { ALLOWED, DENIED, GUARD, PAYOUT, TIMEOUT_MS } from './refusal-fixture.ts';

/** The payouts policy after the reload: its writes are denied instead of held. */
const PAYOUTS_DENIED: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    {
      name: 'payouts-writes-stopped',
      decision: 'deny',
      match: { sql: { statementKinds: ['insert', 'update', 'delete'], relations: ['public.payouts'] } },
    },
    { name: 'everything-else', decision: 'allow', match: {} },
  ],
  defaultDecision: 'deny',
};

/** One session's verified records, once it ended: the session whose records `mine` finds one of. */
async function endedTrail(world: ApprovalWorld, mine: (r: AuditRecord) => boolean): Promise<AuditRecord[]> {
  return poll('the session, ended, on the trail', async () => {
    const sessions = await listSessions(controlPlaneEnv().kubeconfig, world.ns);
    for (const verified of await verifySessions(sessions, world.ns)) {
      if (verified.records.some(mine) && verified.records.some((r) => r.type === 'session.end')) {
        return verified.records;
      }
    }
    return undefined;
  });
}

/** The decisions a trail holds for `text` (and, given, these parameters), each with its outcome's record. */
function decided(
  records: readonly AuditRecord[],
  text: string,
  parameters?: readonly string[],
): { decision: AuditRecord; outcome: AuditRecord | undefined }[] {
  return records
    .filter(
      (r) =>
        r.type === 'command.decision' &&
        r.command?.text === text &&
        (parameters === undefined || JSON.stringify(r.command.parameters) === JSON.stringify(parameters)),
    )
    .map((decision) => ({
      decision,
      outcome: records.find((r) => carriesCommandOutcome(r) && r.command?.id === decision.command?.id),
    }));
}

test('the trail of refused, held and approved commands', async (t) => {
  const world = await createApprovalWorld(t);
  const sidecar = await world.startSidecar(t, undefined, { payouts: POLICIES.payouts!, guard: GUARD });
  const token = await world.requesterToken(sidecar);
  const connect = (): Promise<RawClient> => authenticatedClient(sidecar.host, sidecar.port, token, TIMEOUT_MS);
  const decide = async (verb: 'approve' | 'deny', name: string): Promise<void> => {
    const run = await runCli([verb, name, '-n', world.ns, '--kubeconfig', world.people.carol.kubeconfig]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
  };
  const finish = async (client: RawClient): Promise<void> => {
    client.write(TERMINATE);
    await client.untilClosed(TIMEOUT_MS).catch(() => undefined);
    client.destroy();
  };
  /** Waits until `sidecar` logs that it loaded the bundle with `digest`. */
  const loaded = (digest: string, from = sidecar): Promise<true> =>
    poll('the sidecar to load the edited bundle', () =>
      Promise.resolve(
        from
          .logs()
          .split('\n')
          .some((l) => l.includes('"msg":"policy bundles loaded"') && l.includes(digest))
          ? true
          : undefined,
      ),
    );

  await t.test('a refusal made before policy is the sidecar’s deny, whatever policy says of kind other', async () => {
    const refused = [
      { text: DENIED, rule: 'refused-at-parse', code: '42501' }, // its Execute, after the Parse was refused
      { text: 'selec 1', rule: 'unanalysable', code: '42601' },
      { text: 'EXECUTE PORTAL "nowhere"', rule: 'unknown-portal', code: '42501' },
      { text: 'FUNCTION CALL 1598', rule: 'fast-path-refused', code: '42501' },
      { text: 'set search_path = elsewhere', rule: 'setting-refused', code: '42501' },
    ];
    const client = await connect();
    try {
      // The client binds and executes the refused statement anyway (the server skips both behind the refusal).
      const executed = await exchange(client, Buffer.concat([parse('', DENIED), bind('', ''), execute(''), SYNC]), 1);
      assert.deepEqual(executed.codes, ['42501'], executed.errors.join('; '));
      const unparsable = await exchange(client, query('selec 1'), 1);
      assert.deepEqual(unparsable.codes, ['42601'], unparsable.errors.join('; '));
      const unknown = await exchange(client, Buffer.concat([execute('nowhere'), SYNC]), 1);
      assert.deepEqual(unknown.codes, ['42501'], unknown.errors.join('; '));
      const fastPath = await exchange(client, functionCall(1598, []), 1); // random(): harmless, refused all the same
      assert.deepEqual(fastPath.codes, ['42501'], fastPath.errors.join('; '));
      const setting = await exchange(client, query('set search_path = elsewhere'), 1);
      assert.deepEqual(setting.codes, ['42501'], setting.errors.join('; '));
    } finally {
      await finish(client);
    }
    const records = await endedTrail(world, (r) => r.command?.text === 'selec 1');
    const onRecord = refused.map(({ text }) => {
      const all = decided(records, text);
      const last = all.at(-1);
      return {
        text,
        rule: last?.decision.decision?.rule,
        result: last?.decision.decision?.result,
        policy: last?.decision.decision?.policy ?? '',
        code: last?.outcome?.outcome?.code,
        status: last?.outcome?.outcome?.status,
      };
    });
    assert.deepEqual(
      onRecord,
      refused.map(({ text, rule, code }) => ({ text, rule, result: 'deny', policy: '', code, status: 'denied' })),
    );
    // The refused Parse itself was decided by policy: its rule.
    assert.equal(decided(records, DENIED)[0]?.decision.decision?.rule, 'no-account-deletes');
  });

  await t.test('an approved Bind whose portal ends without an Execute: an outcome that it did not run', async () => {
    const before = await world.count('payouts');
    const client = await connect();
    const names: string[] = [];
    /** Parse and Bind of a payout on `portal`, then Sync: approved, the Bind runs (its planning) and no Execute. */
    const boundOnly = async (portal: string, amount: string): Promise<void> => {
      const pipeline = Buffer.concat([parse('', PAYOUT), bind(portal, '', [amount]), SYNC]);
      const { request, reply } = await heldAndDecided(client, pipeline, (name) => decide('approve', name));
      names.push(request);
      assert.equal(reply.types.replace(/N /g, ''), '1 2 Z');
    };
    try {
      // 1. Bind, then Sync: the implicit transaction ends, and the portal with it.
      await boundOnly('', '41');
      // 2. In a transaction block the portal outlives the Sync; the COMMIT ends it.
      await exchange(client, query('begin'), 1);
      await boundOnly('kept', '42');
      const committed = await exchange(client, query('commit'), 1);
      assert.deepEqual(committed.codes, [], committed.errors.join('; '));
      // Its portal is gone on the server: an Execute of it is refused, not run under the approval.
      const late = await exchange(client, Buffer.concat([execute('kept'), SYNC]), 1);
      assert.deepEqual(late.codes, ['42501'], late.errors.join('; '));
      // 3. The connection ends with the portal open.
      await exchange(client, query('begin'), 1);
      await boundOnly('left', '43');
    } finally {
      await finish(client);
    }
    assert.equal(await world.count('payouts'), before, 'none of them ran');
    const records = await endedTrail(world, (r) => r.approval?.request === names[2]);
    const commit = records.findIndex((r) => r.type === 'command.decision' && r.command?.text === 'commit');
    for (const [i, amount] of ['41', '42', '43'].entries()) {
      const [run, ...more] = decided(records, PAYOUT, [amount]);
      assert.equal(more.length, 0, `${amount}: one decision`);
      const id = run?.decision.command?.id;
      const own = records.filter((r) => r.command?.id === id);
      assert.deepEqual(
        own.map((r) => r.type).filter((type) => type !== 'command.outcome'),
        ['command.decision', 'approval.requested', 'approval.decided'],
        amount,
      );
      assert.equal(own[1]?.approval?.request, names[i]);
      assert.equal(run?.outcome?.outcome?.status, 'cancelled', `${amount}: its outcome`);
      assert.match(run.outcome.outcome.message ?? '', /did not run/);
      assert.equal(run.outcome.approval, undefined, `${amount}: it ran under no approval`);
      // In chain order: after its approval, and (the second) after the COMMIT that ended it.
      const at = records.indexOf(run.outcome);
      assert.ok(at > records.indexOf(own[2]!), `${amount}: its outcome follows its approval`);
      if (amount === '42') assert.ok(at > commit, 'the outcome follows the COMMIT that ended the portal');
    }
  });

  await t.test(
    'an Execute behind an approver-refused Bind is the Bind’s command; outcomes in client order',
    async () => {
      const client = await connect();
      try {
        const pipeline = Buffer.concat([
          parse('d', PAYOUT),
          bind('dp', 'd', ['44']),
          describe('P', 'dp'),
          execute('dp'),
          parse('a', ALLOWED),
          bind('pa', 'a'),
          execute('pa'),
          SYNC,
        ]);
        const { reply: end } = await heldAndDecided(client, pipeline, (name) => decide('deny', name));
        assert.deepEqual(end.codes, ['42501'], end.errors.join('; '));
      } finally {
        await finish(client);
      }
      const records = await endedTrail(world, (r) => JSON.stringify(r.command?.parameters) === '["44"]');
      const payout = decided(records, PAYOUT, ['44']);
      assert.deepEqual(
        payout.map((d) => [d.decision.decision?.result, d.outcome?.outcome?.status]),
        [['approve', 'denied']],
        'one decision for the refused Bind and its Execute',
      );
      const skipped = decided(records, ALLOWED);
      assert.deepEqual(
        skipped.map((d) => [d.decision.decision?.result, d.outcome?.outcome?.status]),
        [['allow', 'cancelled']],
      );
      const refusalAt = records.indexOf(payout[0]!.outcome!);
      const skippedAt = records.indexOf(skipped[0]!.outcome!);
      assert.ok(refusalAt < skippedAt, 'the refusal’s outcome comes before that of the command skipped behind it');
    },
  );

  await t.test('an approved Bind the server refuses: its outcome is the server’s error, once', async () => {
    const before = await world.count('payouts');
    const client = await connect();
    const names: string[] = [];
    /** An approved payout whose amount the server cannot convert to an integer: the Bind fails (22P02). */
    const approved = async (pipeline: Buffer): Promise<void> => {
      const { request, reply } = await heldAndDecided(client, pipeline, (name) => decide('approve', name));
      names.push(request);
      assert.deepEqual(reply.codes, ['22P02'], reply.errors.join('; '));
    };
    try {
      // 1. Bind, then Sync: no Execute.
      await approved(Buffer.concat([parse('', PAYOUT), bind('', '', ['x1']), SYNC]));
      // 2. Bind, Execute, Sync: the server skips the Execute behind the Bind's error.
      await approved(Buffer.concat([parse('', PAYOUT), bind('', '', ['x2']), execute(''), SYNC]));
      // 3. Bind, Flush: the error comes before the client sends its Execute (discarded until the Sync).
      const mark = await held(client, Buffer.concat([parse('', PAYOUT), bind('', '', ['x3']), FLUSH]));
      names.push(requestOf(client, mark));
      await decide('approve', names[2]!);
      const failed = (): boolean =>
        parseBackend(client.received.subarray(mark.offset), 0, true).messages.some((m) => m.type === 'E');
      assert.ok(await client.until(failed, TIMEOUT_MS), 'the Bind’s ErrorResponse');
      const rest = await exchange(client, Buffer.concat([execute(''), SYNC]), 1);
      assert.deepEqual(rest.codes, [], rest.errors.join('; '));
      // The session goes on.
      const after = await exchange(client, query('select 1'), 1);
      assert.deepEqual(after.codes, [], after.errors.join('; '));
    } finally {
      await finish(client);
    }
    assert.equal(await world.count('payouts'), before, 'nothing was inserted');
    const records = await endedTrail(world, (r) => r.approval?.request === names[2]);
    const onRecord = ['x1', 'x2', 'x3'].map((amount, i) => {
      const runs = decided(records, PAYOUT, [amount]);
      const id = runs[0]?.decision.command?.id;
      const outcomes = records.filter((r) => carriesCommandOutcome(r) && r.command?.id === id);
      return {
        amount,
        decisions: runs.map((d) => d.decision.decision?.result),
        outcomes: outcomes.map((r) => [r.outcome?.status, r.outcome?.code, r.approval?.request === names[i]]),
        message: outcomes[0]?.outcome?.message,
      };
    });
    t.diagnostic(JSON.stringify(onRecord));
    assert.deepEqual(
      onRecord.map(({ message: _message, ...rest }) => rest),
      ['x1', 'x2', 'x3'].map((amount) => ({ amount, decisions: ['approve'], outcomes: [['error', '22P02', true]] })),
      'one decision each, and one outcome: the server’s error, under the approval',
    );
    for (const { amount, message } of onRecord)
      assert.match(message ?? '', /invalid input syntax for type integer/, amount);
  });

  await t.test(
    'a reload that changes the approval settings: later Executes of a run portal continue under its approval',
    async () => {
      const before = await world.count('payouts');
      const client = await connect();
      const twice = 'insert into payouts(amount) values ($1), ($1) returning id';
      let name = '';
      let digest: string | undefined;
      try {
        await exchange(client, query('begin'), 1);
        // The whole INSERT runs at the first Execute; its rows are fetched one at a time.
        const mark = await held(client, Buffer.concat([parse('', twice), bind('', '', ['47']), execute('', 1), FLUSH]));
        name = requestOf(client, mark);
        await decide('approve', name);
        const suspended = (): boolean =>
          parseBackend(client.received.subarray(mark.offset), 0, true).messages.some((m) => m.type === 's');
        assert.ok(await client.until(suspended, TIMEOUT_MS), 'PortalSuspended after the first row');
        // The same rule, other approval settings: a new bundle digest.
        const payouts = POLICIES.payouts!;
        const settings = { ...payouts.approval!, approverGroups: ['dba', 'auditors'], timeout: '9m' };
        digest = await writePolicyBundle(sidecar.bundleDir, 'payouts', { ...payouts, approval: settings }, world.ns);
        await loaded(digest);
        const rest = await exchange(client, Buffer.concat([execute(''), SYNC]), 1);
        assert.deepEqual(rest.codes, [], rest.errors.join('; '));
        assert.ok(rest.types.includes('D') && rest.types.includes('C'), rest.types);
        const committed = await exchange(client, query('commit'), 1);
        assert.deepEqual(committed.codes, [], committed.errors.join('; '));
      } finally {
        await finish(client);
      }
      assert.equal(await world.count('payouts'), before + 2, 'the approved INSERT ran once');
      const records = await endedTrail(world, (r) => r.approval?.request === name);
      const runs = decided(records, twice, ['47']);
      assert.deepEqual(
        runs.map((d) => [
          d.decision.decision?.result,
          d.decision.decision?.rule,
          d.outcome?.outcome?.status,
          d.outcome?.approval?.request,
        ]),
        [
          ['approve', 'payouts-writes', 'success', name],
          ['approve', 'payouts-writes', 'success', name],
        ],
        'the second Execute: its own decision under the reloaded bundle, run under the portal’s approval',
      );
      assert.equal(runs[1]?.decision.decision?.bundleDigest, digest, 'decided under the reloaded bundle');
      const requested = records.filter((r) => r.type === 'approval.requested' && r.command?.text === twice);
      assert.equal(requested.length, 1, 'no second request');
    },
  );

  await t.test('a policy reload between an approved Bind and its Execute: decided under the new policy', async () => {
    const before = await world.count('payouts');
    const client = await connect();
    let name = '';
    try {
      await exchange(client, query('begin'), 1);
      const mark = await held(client, Buffer.concat([parse('', PAYOUT), bind('', '', ['45']), FLUSH]));
      name = requestOf(client, mark);
      await decide('approve', name);
      // The Bind ran (planned); no Execute yet.
      const bound = (): boolean =>
        parseBackend(client.received.subarray(mark.offset), 0, true).messages.some((m) => m.type === '2');
      assert.ok(await client.until(bound, TIMEOUT_MS), 'BindComplete');
      await loaded(await writePolicyBundle(sidecar.bundleDir, 'payouts', PAYOUTS_DENIED, world.ns));
      const run = await exchange(client, Buffer.concat([execute(''), SYNC]), 1);
      assert.deepEqual(run.codes, ['42501'], run.errors.join('; '));
      // COMMIT of the failed block rolls it back; had the Execute run, this would commit its row.
      await exchange(client, query('commit'), 1);
    } finally {
      await finish(client);
    }
    assert.equal(await world.count('payouts'), before, 'the approved Bind did not run under the new policy');
    const records = await endedTrail(world, (r) => r.approval?.request === name);
    const runs = decided(records, PAYOUT, ['45']);
    assert.deepEqual(
      runs.map((d) => [d.decision.decision?.result, d.decision.decision?.rule, d.outcome?.outcome?.status]),
      [
        ['approve', 'payouts-writes', 'cancelled'],
        ['deny', 'payouts-writes-stopped', 'denied'],
      ],
    );
    assert.equal(runs[0]?.outcome?.approval, undefined, 'the approved run ended under no approval: it did not run');
  });
  await t.test(
    'an approved Bind decided before BEGIN’s reply, under a rule on inTransaction: decided again at its Execute',
    async (st) => {
      // Outside a transaction block `payouts` holds payouts (payouts-writes); inside one `a-in-block` does
      // (raw Rego on session.inTransaction), and ties go to the first policy by name.
      const payouts = POLICIES.payouts!;
      const inBlock: AccessPolicySpec = {
        resources: { names: ['test-db'] },
        rules: [{ name: 'everything-else', decision: 'allow', match: {} }],
        defaultDecision: 'deny',
        approval: payouts.approval!,
        rego: [
          'package chaperone.custom',
          '',
          'approve contains "a payout inside a transaction block" if {',
          '  input.session.inTransaction',
          '  some s in input.command.statements',
          '  "public.payouts" in s.relations',
          '}',
        ].join('\n'),
      };
      const split = await world.startSidecar(st, undefined, { 'a-in-block': inBlock, payouts });
      const before = await world.count('payouts');
      const client = await authenticatedClient(split.host, split.port, await world.requesterToken(split), TIMEOUT_MS);
      const names: string[] = [];
      try {
        // BEGIN and the statement in one write: the Bind is decided before BEGIN's ReadyForQuery arrives.
        const pipeline = Buffer.concat([query('begin'), parse('', PAYOUT), bind('', '', ['46']), execute(''), SYNC]);
        const mark = await held(client, pipeline);
        names.push(requestOf(client, mark));
        await decide('approve', names[0]!);
        // Its Execute, decided in the block now, is another policy's decision: held again, a new request.
        const notices = (): string[] => [
          ...new Set(
            [
              ...client.received
                .subarray(mark.offset)
                .toString('latin1')
                .matchAll(/ApprovalRequest [a-z0-9-]+\/([a-z0-9-]+) /g),
            ].map((m) => m[1] ?? ''),
          ),
        ];
        assert.ok(await client.until(() => notices().length === 2, TIMEOUT_MS), 'a second request');
        names.push(notices().find((n) => n !== names[0])!);
        await decide('approve', names[1]!);
        const end = await settled(client, mark, 2);
        assert.deepEqual(end.codes, [], end.errors.join('; '));
        const committed = await exchange(client, query('commit'), 1);
        assert.deepEqual(committed.codes, [], committed.errors.join('; '));
        client.write(TERMINATE);
        await client.untilClosed(TIMEOUT_MS).catch(() => undefined);
      } finally {
        client.destroy();
      }
      assert.equal(await world.count('payouts'), before + 1, 'it ran once, after the second approval');
      // Its own sidecar starts a second chain for the pod, which the namespace's verification refuses: its
      // JSON-lines file is read instead.
      const records = await poll('the session’s end in the audit file', async () => {
        const lines = (await split.settledRecords()).map((l) => l.record);
        return lines.some((r) => r.type === 'session.end') ? lines : undefined;
      });
      const runs = decided(records, PAYOUT, ['46']);
      assert.deepEqual(
        runs.map((d) => [
          d.decision.decision?.policy?.split('/').at(-1),
          d.decision.decision?.rule,
          d.decision.decision?.result,
          d.outcome?.outcome?.status,
          d.outcome?.approval?.request,
        ]),
        [
          ['payouts', 'payouts-writes', 'approve', 'cancelled', undefined],
          ['a-in-block', 'rego', 'approve', 'success', names[1]],
        ],
      );
      assert.match(runs[0]?.outcome?.outcome?.message ?? '', /policy in force changed before its Execute/);
    },
  );
});
