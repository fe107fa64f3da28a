// Just-in-time approvals (issue 13), end to end and all real: an approve rule holds a statement on the
// agent's live connection; the sidecar files an ApprovalRequest with its own pod-bound token, the client sees
// a NoticeResponse naming it (psql and node-postgres), people with client certificates decide it through
// `kubectl chaperone approve|deny` against the real API server, and the statement runs exactly once on
// approval, or fails with the catalogue's SQLSTATE on deny, expiry and cancel. Admission refuses the
// requester, an actor of its chain, an outsider, a forged author and a status edit by the requester; 2-of-N
// counts people; an approval covers exactly the statement, parameters and session it was filed for; the
// trail of an approved statement verifies and names the requester chain, the approvers and the times.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import pg from 'pg';
import { GROUP, VERSION, type AuditRecord, type Session } from '@chaperone/api';
import { buildEvidence } from '../../cli/src/audit/evidence.ts';
import { runCli } from '../audit/run-cli.ts';
import { listSessions, verifySessions } from '../audit/durability-helpers.ts';
import { controlPlaneEnv } from '../harness/env.ts';
import { connectAgent } from '../harness/agent-client.ts';
import type { TestIdentity } from '../harness/identities.ts';
import { statusOf } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import {
  AGENT,
  CHAIN_ACTOR,
  IBANS,
  MASKED_READS,
  PLURAL,
  REQUESTER,
  createApprovalWorld,
  requestNamed,
  startPsql,
  type ApprovalWorld,
} from './approval-fixture.ts';

/**
 * A query's outcome with its rejection handled from the start: the error can arrive while the test is still
 * busy elsewhere (an approver's CLI run), which must not count as an unhandled rejection.
 */
function outcomeOf<T>(query: Promise<T>): Promise<{ value: T } | { error: pg.DatabaseError }> {
  return query.then(
    (value) => ({ value }),
    (error: unknown) => ({ error: error as pg.DatabaseError }),
  );
}

/** The error a query ended with; fails when it succeeded. */
async function errorOf(outcome: Promise<{ value: unknown } | { error: pg.DatabaseError }>): Promise<pg.DatabaseError> {
  const settled = await outcome;
  if ('error' in settled) return settled.error;
  throw new Error('the query was expected to fail, and it succeeded');
}

const cli = (who: TestIdentity, args: string[]) => runCli([...args, '--kubeconfig', who.kubeconfig]);

async function refused(call: Promise<unknown>): Promise<k8s.V1Status> {
  try {
    await call;
  } catch (err) {
    const status = statusOf(err);
    if (status !== undefined) return status;
    throw err;
  }
  throw new Error('the call was expected to be refused, and it succeeded');
}

/** Appends a decision as `who`, naming `author` (a forgery unless the two are the same). */
function writeDecision(world: ApprovalWorld, who: TestIdentity, name: string, author: string, decisions: unknown[]) {
  return who.kc.makeApiClient(k8s.CustomObjectsApi).patchNamespacedCustomObjectStatus(
    {
      group: GROUP,
      version: VERSION,
      namespace: world.ns,
      plural: PLURAL,
      name,
      body: {
        status: {
          decisions: [
            ...decisions,
            { approver: { username: author, groups: ['dba'] }, decision: 'approve', time: '2026-12-04T22:00:00Z' },
          ],
        },
      },
    },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
  );
}

async function phaseOf(world: ApprovalWorld, name: string, phase: string): Promise<void> {
  await poll(`approvalrequest ${name} to be ${phase}`, async () =>
    (await world.request(name)).status?.phase === phase ? true : undefined,
  );
}

test('approvals: a held statement waits on its connection for authenticated people, and runs exactly once', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const sidecar = await world.startSidecar(t);
  const env = sidecar.libpqEnv(await world.requesterToken(sidecar));
  const pgClient = async () => {
    const client = await connectAgent(sidecar, { token: await world.requesterToken(sidecar) });
    const notices: string[] = [];
    client.on('notice', (n) => notices.push(n.message ?? ''));
    return { client, notices };
  };
  let approvedName = '';

  await t.test(
    'psql: the notice names the request; only an eligible person counts; approved, it runs once',
    async () => {
      const run = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (100)']);
      const name = await requestNamed(run.stderr);
      approvedName = name;
      assert.match(run.stderr(), /NOTICE: {2}00000: chaperone: statement held for approval: ApprovalRequest /);
      assert.match(run.stderr(), new RegExp(`kubectl chaperone approve ${name} -n ${ns}`));
      const request = await world.request(name);
      assert.equal(request.spec.requester.subject, REQUESTER);
      assert.deepEqual(
        request.spec.requester.chain?.map((a) => a.subject),
        [AGENT, CHAIN_ACTOR],
      );
      assert.equal(request.spec.command.text, 'INSERT INTO payouts(amount) VALUES (100)');
      assert.match(request.spec.bindingHash ?? '', /^sha256:[0-9a-f]{64}$/);
      assert.equal(request.spec.pod?.name, 'agent');
      assert.deepEqual(request.spec.approverGroups, ['dba']);

      // The list approvers read: requester chain and statement.
      const listed = await cli(people.dave, ['approvals', '-n', ns]);
      assert.equal(listed.code, 0, listed.stderr);
      assert.match(listed.stdout, new RegExp(`${name} .* ${REQUESTER} → ${CHAIN_ACTOR} → ${AGENT} .* 0/1 `));

      // The requester, an actor of its chain and an outsider are refused by admission, as themselves.
      for (const [who, why] of [
        [people.bob, /requested this command \(or is in its delegation chain\)/],
        [people.alice, /requested this command \(or is in its delegation chain\)/],
        [people.mallory, /neither among the approvers of the request nor in its approverGroups \(dba\)/],
      ] as const) {
        const r = await cli(who, ['approve', name, '-n', ns]);
        assert.equal(r.code, 1, `${who.user} ${r.stdout}`);
        assert.match(r.stderr, why);
      }
      // A forged author: erin writes a decision naming dave.
      const forged = await refused(writeDecision(world, people.erin, name, 'dave@example.com', []));
      assert.equal(forged.code, 403);
      assert.match(forged.message ?? '', /as the API server authenticated them \(erin@example\.com\)/);
      // The requester edits the status to Approved: only the sidecar sets the phase.
      const edited = await refused(
        people.bob.kc.makeApiClient(k8s.CustomObjectsApi).patchNamespacedCustomObjectStatus(
          {
            group: GROUP,
            version: VERSION,
            namespace: ns,
            plural: PLURAL,
            name,
            body: { status: { phase: 'Approved' } },
          },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
        ),
      );
      assert.equal(edited.code, 403);
      assert.match(edited.message ?? '', /only the sidecar holding the command sets the phase/);
      // The spec (what was approved) cannot be changed by anyone.
      const respecified = await refused(
        world.custom.patchNamespacedCustomObject(
          {
            group: GROUP,
            version: VERSION,
            namespace: ns,
            plural: PLURAL,
            name,
            body: { spec: { command: { kind: 'sql', text: 'DROP TABLE payouts' } } },
          },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
        ),
      );
      assert.equal(respecified.code, 422);
      assert.equal(run.exitCode(), null, 'still held');
      assert.equal(await world.count('payouts'), 0, 'nothing ran while held');
      assert.equal((await world.request(name)).status?.decisions, undefined);

      const approved = await cli(people.dave, ['approve', name, '-n', ns, '--comment', 'monthly payout run']);
      assert.equal(approved.code, 0, approved.stderr);
      assert.match(
        approved.stdout,
        new RegExp(`approvalrequest.chaperone.dev/${name} approved by dave@example.com \\(1/1 approvals\\)`),
      );
      assert.equal(await run.exited, 0, run.stderr());
      assert.equal(run.stdout().trim(), 'INSERT 0 1');
      assert.equal(await world.count('payouts'), 1, 'ran exactly once');
      await phaseOf(world, name, 'Approved');
      // Decided: nobody adds a decision any more.
      const late = await cli(people.erin, ['approve', name, '-n', ns]);
      assert.equal(late.code, 1);
      assert.match(late.stderr, /is Approved; it can no longer be decided/);
    },
  );

  await t.test(
    'node-postgres: notice then result; an approval does not cover changed parameters; deny errors 42501',
    async () => {
      const { client, notices } = await pgClient();
      try {
        const first = outcomeOf(
          client.query<{ amount: number }>('INSERT INTO payouts(amount, note) VALUES ($1, $2) RETURNING amount', [
            250,
            'quarterly',
          ]),
        );
        const name = await requestNamed(() => notices.join('\n'));
        const request = await world.request(name);
        assert.deepEqual(request.spec.command.parameters, ['250', 'quarterly']);
        const approved = await cli(people.carol, ['approve', name, '-n', ns]);
        assert.equal(approved.code, 0, approved.stderr);
        const ran = await first;
        assert.ok('value' in ran, 'error' in ran ? ran.error.message : '');
        assert.deepEqual(ran.value.rows, [{ amount: 250 }]);
        assert.equal(await world.count('payouts'), 2);

        // The same statement with another parameter in the same session: a new request, another binding.
        const before = notices.length;
        const changed = outcomeOf(
          client.query('INSERT INTO payouts(amount, note) VALUES ($1, $2) RETURNING amount', [999_999, 'quarterly']),
        );
        const changedName = await requestNamed(() => notices.slice(before).join('\n'));
        assert.notEqual(changedName, name);
        const changedRequest = await world.request(changedName);
        assert.notEqual(changedRequest.spec.bindingHash, request.spec.bindingHash);
        assert.equal(changedRequest.status?.phase ?? 'Pending', 'Pending');
        assert.equal(await world.count('payouts'), 2, 'the earlier approval does not run it');
        const denied = await cli(people.carol, ['deny', changedName, '-n', ns, '--comment', 'too much']);
        assert.equal(denied.code, 0, denied.stderr);
        const err = await errorOf(changed);
        assert.equal(err.code, '42501');
        assert.match(err.message, new RegExp(`approval request ${changedName} was denied by carol@example.com`));
        assert.equal(err.detail, 'comment: too much');
        assert.equal(await world.count('payouts'), 2, 'a denied statement never runs');
        await phaseOf(world, changedName, 'Denied');
        // The connection is as usable as after any error.
        assert.deepEqual((await client.query('select 1 as one')).rows, [{ one: 1 }]);
      } finally {
        await client.end();
      }
    },
  );

  await t.test('expiry: nobody decides in time, the client gets 57014 and the request says Expired', async () => {
    const { client, notices } = await pgClient();
    try {
      const held = outcomeOf(client.query('INSERT INTO refunds(amount) VALUES (5)'));
      const name = await requestNamed(() => notices.join('\n'));
      const err = await errorOf(held);
      assert.equal(err.code, '57014');
      assert.match(err.message, new RegExp(`approval request ${name} expired at `));
      await phaseOf(world, name, 'Expired');
      assert.equal(await world.count('refunds'), 0);
      const late = await cli(people.carol, ['approve', name, '-n', ns]);
      assert.equal(late.code, 1);
    } finally {
      await client.end();
    }
  });

  await t.test('cancel while held: psql Ctrl-C and a node-postgres cancel get 57014; the session goes on', async () => {
    const run = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (7)']);
    const name = await requestNamed(run.stderr);
    run.signal('SIGINT');
    await phaseOf(world, name, 'Cancelled');
    assert.equal(await run.exited, 1);
    assert.match(run.stderr(), /ERROR: {2}57014: chaperone: the held statement was cancelled \(cancel request\)/);

    const { client, notices } = await pgClient();
    try {
      const held = outcomeOf(client.query('INSERT INTO payouts(amount) VALUES (8)'));
      const heldName = await requestNamed(() => notices.join('\n'));
      const canceller = new pg.Client({ host: sidecar.host, port: sidecar.port });
      // node-postgres's own cancel (a CancelRequest with the key the sidecar gave this session).
      const active = (client as unknown as { activeQuery: unknown }).activeQuery;
      (canceller as unknown as { cancel(c: pg.Client, q: unknown): void }).cancel(client, active);
      assert.equal((await errorOf(held)).code, '57014');
      await phaseOf(world, heldName, 'Cancelled');
      assert.deepEqual((await client.query('select 2 as two')).rows, [{ two: 2 }], 'the session goes on');
    } finally {
      await client.end();
    }
    assert.equal(await world.count('payouts'), 2);
    const late = await cli(people.carol, ['approve', name, '-n', ns]);
    assert.equal(late.code, 1);
  });

  await t.test('2 of 3: the same person twice counts once; a second person approves it', async () => {
    const run = startPsql(env, ['-c', 'INSERT INTO transfers(amount) VALUES (1000)']);
    const name = await requestNamed(run.stderr);
    assert.equal((await cli(people.dave, ['approve', name, '-n', ns])).code, 0);
    const twice = await cli(people.dave, ['approve', name, '-n', ns]);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /an approver decides a request once/);
    const listed = await cli(people.carol, ['approvals', '-n', ns]);
    assert.match(listed.stdout, new RegExp(`${name} .* 1/2 `));
    assert.equal(run.exitCode(), null, 'one approval of two: still held');
    assert.equal(await world.count('transfers'), 0);
    assert.equal((await cli(people.erin, ['approve', name, '-n', ns])).code, 0);
    assert.equal(await run.exited, 0, run.stderr());
    assert.equal(await world.count('transfers'), 1);
    await phaseOf(world, name, 'Approved');
  });

  await t.test('an approval for another session does not release the same statement here', async () => {
    const a = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (42)']);
    const b = startPsql(env, ['-c', 'INSERT INTO payouts(amount) VALUES (42)']);
    const nameA = await requestNamed(a.stderr);
    const nameB = await requestNamed(b.stderr);
    const [ra, rb] = [await world.request(nameA), await world.request(nameB)];
    assert.notEqual(ra.spec.session, rb.spec.session);
    assert.notEqual(ra.spec.bindingHash, rb.spec.bindingHash, 'bound to the session');
    assert.equal((await cli(people.dave, ['approve', nameA, '-n', ns])).code, 0);
    assert.equal(await a.exited, 0, a.stderr());
    assert.equal(await world.count('payouts'), 3);
    assert.equal(b.exitCode(), null, 'the other session still waits for its own request');
    assert.equal((await world.request(nameB)).status?.phase ?? 'Pending', 'Pending');
    assert.equal((await cli(people.dave, ['deny', nameB, '-n', ns])).code, 0);
    assert.equal(await b.exited, 1);
    assert.match(b.stderr(), /ERROR: {2}42501: chaperone: approval request .* was denied by dave@example\.com/);
    assert.equal(await world.count('payouts'), 3);
  });

  await t.test(
    'the trail of an approved statement verifies and shows requester chain, approvers and times',
    async () => {
      const admin = controlPlaneEnv().kubeconfig;
      const records = await poll('the approved statement in the Session trail', async () => {
        const sessions: Session[] = await listSessions(admin, ns);
        const all = sessions.flatMap((s) => s.spec.records);
        const requested = all.find((r) => r.type === 'approval.requested' && r.approval?.request === approvedName);
        if (requested === undefined) return undefined;
        const session = sessions.filter((s) => s.spec.records.includes(requested));
        const id = session[0]?.spec.sessionId;
        const mine = sessions.filter((s) => s.spec.sessionId === id).flatMap((s) => s.spec.records);
        return mine.some((r) => r.type === 'command.outcome' && r.approval?.request === approvedName)
          ? mine
          : undefined;
      });
      const requested = records.find((r) => r.type === 'approval.requested') as AuditRecord;
      const decided = records.find((r) => r.type === 'approval.decided') as AuditRecord;
      const outcome = records.find((r) => r.type === 'command.outcome' && r.approval !== undefined) as AuditRecord;
      const commandId = requested.command?.id;
      assert.ok(commandId !== undefined);
      const decision = records.find((r) => r.type === 'command.decision' && r.command?.id === commandId);
      assert.equal(decision?.decision?.result, 'approve');
      assert.equal(decision.decision.rule, 'payouts-writes');
      // Record format 2: the requester is named on the session's session.start, which the chain binds this record to.
      assert.equal(requested.identity, undefined);
      const start = records.find((r) => r.type === 'session.start') as AuditRecord;
      assert.equal(start.identity?.subject, REQUESTER);
      assert.deepEqual(
        start.identity.chain?.map((a) => a.subject),
        [AGENT, CHAIN_ACTOR],
      );
      assert.equal(requested.command?.text, 'INSERT INTO payouts(amount) VALUES (100)');
      assert.equal(requested.approval?.phase, 'Pending');
      assert.equal(decided.approval?.phase, 'Approved');
      assert.equal(decided.approval.bindingHash, requested.approval.bindingHash);
      assert.deepEqual(
        decided.approval.decisions?.map((d) => [d.approver, d.decision, d.comment]),
        [['dave@example.com', 'approve', 'monthly payout run']],
      );
      assert.match(decided.approval.decisions[0]?.time ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.ok(decided.time > requested.time && outcome.time > decided.time, 'requested, decided, ran: in order');
      assert.equal(outcome.approval?.bindingHash, requested.approval.bindingHash);
      assert.equal(outcome.outcome?.status, 'success');
      assert.equal(outcome.command?.id, commandId);
      // As an auditor checks it: every session's chain and signed heads, then the CLI.
      const sessions = await listSessions(admin, ns);
      await verifySessions(sessions, ns);
      // The evidence export names the approvals under AC-3 (what ran under one) and AU-10 (who decided).
      const bundle = await buildEvidence(sessions, {
        namespaces: [ns],
        source: { context: 'test' },
        retention: new Map(),
      });
      const evidenceOf = (control: string) => bundle.nist.find((n) => n.control === control)?.evidence.join('\n') ?? '';
      assert.match(
        evidenceOf('AC-3'),
        /records\[type=command\.outcome\]\.approval: [1-9]\d* command\(s\) ran under an approval/,
      );
      assert.match(evidenceOf('AU-10'), /records\[type=approval\.decided\]: [1-9]\d*;/);
      const verified = await runCli(['verify', '--all', '-n', ns, '--kubeconfig', admin]);
      assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    },
  );
});

test('approvals: a held SELECT, once approved, returns its rows masked by the policy (psql and node-postgres)', async (t) => {
  // A world of its own: masking rules also mask recorded parameters, which the tests above read.
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const masked = await world.startSidecar(t, undefined, MASKED_READS);
  const maskedEnv = masked.libpqEnv(await world.requesterToken(masked));
  const run = startPsql(maskedEnv, ['-A', '-t', '-c', 'SELECT owner, iban FROM accounts ORDER BY id']);
  const name = await requestNamed(run.stderr);
  assert.equal(run.exitCode(), null, 'held');
  assert.equal((await cli(people.dave, ['approve', name, '-n', ns])).code, 0);
  assert.equal(await run.exited, 0, run.stderr());
  assert.equal(run.stdout().trim(), 'Ada|[MASKED]\nBen|[MASKED]');

  // Extended protocol (Parse, Bind, Describe, Execute held, Sync), text and binary results.
  for (const binary of [false, true]) {
    const client = await connectAgent(
      masked,
      { token: await world.requesterToken(masked) },
      { client: { binary } as Partial<pg.ClientConfig> },
    );
    const notices: string[] = [];
    client.on('notice', (n) => notices.push(n.message ?? ''));
    try {
      const held = outcomeOf(client.query('SELECT id, owner, iban FROM accounts WHERE id = $1', [2]));
      const heldName = await requestNamed(() => notices.join('\n'));
      assert.equal((await cli(people.carol, ['approve', heldName, '-n', ns])).code, 0);
      const ran = await held;
      assert.ok('value' in ran, 'error' in ran ? ran.error.message : '');
      assert.deepEqual(ran.value.rows, [{ id: 2, owner: 'Ben', iban: '[MASKED]' }], `binary=${String(binary)}`);
    } finally {
      await client.end();
    }
  }
  for (const iban of IBANS) assert.doesNotMatch(run.stdout(), new RegExp(iban));
  // The rows are there in the clear: it is the sidecar that masked them.
  assert.equal(await world.count(`accounts where iban = '${IBANS[1] ?? ''}'`), 1);
});
