// Approve rules with `wait: false` (docs/approvals.md), all real: the statement is answered at once with
// ApprovalPending (55000) naming the ApprovalRequest the sidecar filed; the identical statement sent again on
// the same session (same text, parameters, session and requester chain: the binding hash) while the request
// is pending files nothing new; once approved it runs exactly once, and the next identical one needs a new
// approval; a changed statement, other parameters or another session are not covered; a denial answers the
// next identical statement once; the session ending withdraws what is pending. psql over one session read
// from a pipe, and node-postgres with parameters, against the real sidecar, PostgreSQL and API server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type pg from 'pg';
import { runCli } from '../audit/run-cli.ts';
import type { TestIdentity } from '../harness/identities.ts';
import { connectAgent } from '../harness/agent-client.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld, requestNamed, type ApprovalWorld } from './approval-fixture.ts';

const cli = (who: TestIdentity, args: string[]) => runCli([...args, '--kubeconfig', who.kubeconfig]);

/** One psql session fed statement by statement through its stdin (errors go to stderr as they happen). */
function interactivePsql(env: NodeJS.ProcessEnv) {
  const child = spawn('psql', ['-X', '-v', 'VERBOSITY=verbose', '-A', '-t'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  return {
    send: (sql: string) => child.stdin.write(`${sql}\n`),
    stdout: () => out,
    stderr: () => err,
    /** Ends the input; resolves with the exit code once psql has run everything sent. */
    finish: () => {
      child.stdin.end();
      return exited;
    },
  };
}

async function phaseOf(world: ApprovalWorld, name: string, phase: string): Promise<void> {
  await poll(`approvalrequest ${name} to be ${phase}`, async () =>
    (await world.request(name)).status?.phase === phase ? true : undefined,
  );
}

async function requestsBoundTo(world: ApprovalWorld, bindingHash: string): Promise<string[]> {
  return (await world.requests()).filter((r) => r.spec.bindingHash === bindingHash).map((r) => r.metadata.name ?? '');
}

/** The error a query ended with; fails when it succeeded. */
async function errorOf(query: Promise<unknown>): Promise<pg.DatabaseError> {
  try {
    await query;
  } catch (err) {
    return err as pg.DatabaseError;
  }
  throw new Error('the query was expected to fail, and it succeeded');
}

test('approvals with wait: false: answered at once, and the identical statement sent again runs once approved', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const sidecar = await world.startSidecar(t);

  await t.test(
    'psql: 55000 names the request; sent again while pending, nothing new is filed; approved, it runs once',
    async () => {
      const psql = interactivePsql(sidecar.libpqEnv(await world.requesterToken(sidecar)));
      const insert = 'INSERT INTO reports(amount) VALUES (5);';
      psql.send(insert);
      const name = await requestNamed(psql.stderr);
      assert.match(psql.stderr(), /ERROR: {2}55000: chaperone: statement needs approval: ApprovalRequest /);
      assert.match(psql.stderr(), /sent again on this session runs once/);
      const request = await world.request(name);
      assert.equal(request.spec.command.text, 'INSERT INTO reports(amount) VALUES (5);');
      assert.equal(await world.count('reports'), 0);

      let seen = psql.stderr().length;
      psql.send(insert);
      await poll('the answer to the statement sent again while pending', () =>
        Promise.resolve(psql.stderr().slice(seen).includes('still waits approval') ? true : undefined),
      );
      assert.match(psql.stderr().slice(seen), new RegExp(`ApprovalRequest ${ns}/${name} `), 'the same request');
      assert.deepEqual(await requestsBoundTo(world, request.spec.bindingHash ?? ''), [name], 'one request only');

      assert.equal((await cli(people.dave, ['approve', name, '-n', ns])).code, 0);
      await phaseOf(world, name, 'Approved');
      assert.equal(await world.count('reports'), 0, 'approved, but nothing runs until it is sent again');

      seen = psql.stderr().length;
      psql.send('INSERT INTO reports(amount) VALUES (6);');
      const other = await requestNamed(() => psql.stderr().slice(seen));
      assert.notEqual(other, name, 'a changed statement is not covered');

      psql.send(insert);
      await poll('the approved statement to run', async () =>
        (await world.count('reports')) === 1 ? true : undefined,
      );

      seen = psql.stderr().length;
      psql.send(insert);
      const third = await requestNamed(() => psql.stderr().slice(seen));
      assert.notEqual(third, name, 'an approval is used once');
      psql.send('SELECT 40 + 2;');
      assert.equal(await psql.finish(), 0, psql.stderr());
      assert.equal(psql.stdout().trim().split('\n').at(-1), '42', 'the session went on');
      assert.match(psql.stdout(), /^INSERT 0 1$/m);
      assert.equal(await world.count('reports'), 1, 'ran exactly once');
      // The session ended: its pending requests are withdrawn (nothing could run them any more).
      await phaseOf(world, other, 'Cancelled');
      await phaseOf(world, third, 'Cancelled');
    },
  );

  await t.test('in a transaction block that already failed: 25P02, no request filed, the approval kept', async () => {
    const client = await connectAgent(sidecar, { token: await world.requesterToken(sidecar) });
    try {
      const insert = 'INSERT INTO reports(amount) VALUES (99)'; // no parameters: the simple query protocol
      const first = await errorOf(client.query(insert));
      assert.equal(first.code, '55000');
      const name = new RegExp(`ApprovalRequest ${ns}/([a-z0-9-]+) `).exec(first.message)?.[1] ?? '';
      const bindingHash = (await world.request(name)).spec.bindingHash ?? '';
      assert.equal((await cli(people.dave, ['approve', name, '-n', ns])).code, 0);
      await phaseOf(world, name, 'Approved');
      await client.query('BEGIN');
      assert.equal((await errorOf(client.query('SELECT 1/0'))).code, '22012');
      assert.equal((await errorOf(client.query(insert))).code, '25P02', 'as PostgreSQL');
      await client.query('ROLLBACK');
      assert.equal(await world.count('reports where amount = 99'), 0);
      assert.deepEqual(await requestsBoundTo(world, bindingHash), [name], 'no request was filed for it');
      assert.equal((await client.query(insert)).rowCount, 1, 'the approval was kept for it');
      assert.equal(await world.count('reports where amount = 99'), 1);
    } finally {
      await client.end();
    }
  });

  await t.test(
    'node-postgres: other parameters and another session are not covered; a denial answers once; the trail',
    async () => {
      const connect = async () => connectAgent(sidecar, { token: await world.requesterToken(sidecar) });
      const a = await connect();
      const b = await connect();
      let bEnded = false;
      const sql = 'INSERT INTO reports(amount) VALUES ($1) RETURNING amount';
      const nameIn = (e: pg.DatabaseError) => new RegExp(`ApprovalRequest ${ns}/([a-z0-9-]+) `).exec(e.message)?.[1];
      try {
        const first = await errorOf(a.query(sql, [70]));
        assert.equal(first.code, '55000');
        const name = nameIn(first) ?? '';
        assert.deepEqual((await world.request(name)).spec.command.parameters, ['70']);
        assert.equal((await cli(people.carol, ['approve', name, '-n', ns])).code, 0);
        await phaseOf(world, name, 'Approved');

        const changed = await errorOf(a.query(sql, [71]));
        assert.equal(changed.code, '55000');
        const changedName = nameIn(changed) ?? '';
        assert.notEqual(changedName, name, 'other parameters are not covered');
        const elsewhere = await errorOf(b.query(sql, [70]));
        assert.equal(elsewhere.code, '55000');
        const elsewhereName = nameIn(elsewhere) ?? '';
        assert.notEqual(elsewhereName, name, 'another session is not covered');
        assert.equal(await world.count('reports where amount = 70'), 0);

        assert.deepEqual((await a.query(sql, [70])).rows, [{ amount: 70 }], 'the identical statement runs');
        assert.equal(await world.count('reports where amount = 70'), 1);
        assert.equal((await errorOf(a.query(sql, [70]))).code, '55000', 'once');
        assert.equal(await world.count('reports where amount = 70'), 1);

        assert.equal((await cli(people.carol, ['deny', changedName, '-n', ns, '--comment', 'no'])).code, 0);
        await phaseOf(world, changedName, 'Denied');
        const denied = await errorOf(a.query(sql, [71]));
        assert.equal(denied.code, '42501');
        assert.match(denied.message, new RegExp(`approval request ${changedName} was denied by carol@example\\.com`));
        const afresh = await errorOf(a.query(sql, [71]));
        assert.equal(afresh.code, '55000', 'a denial answers once; the next one files a new request');
        assert.notEqual(nameIn(afresh), changedName);
        assert.equal(await world.count('reports where amount = 71'), 0);

        bEnded = true;
        await b.end();
        await phaseOf(world, elsewhereName, 'Cancelled');

        // The trail: the request, the approval with its approver, and the run under it, by a later command.
        const records = await poll('the approved statement in the trail', () => {
          const all = sidecar.records();
          const ran = all.find((r) => r.record.type === 'command.outcome' && r.record.approval?.request === name);
          if (ran === undefined) return Promise.resolve(undefined);
          // Command ids count per session: only this session's records.
          return Promise.resolve(all.filter((r) => r.session.sessionId === ran.session.sessionId).map((r) => r.record));
        });
        const requested = records.find((r) => r.type === 'approval.requested' && r.approval?.request === name);
        const decided = records.find((r) => r.type === 'approval.decided' && r.approval?.request === name);
        const ran = records.find((r) => r.type === 'command.outcome' && r.approval?.request === name);
        assert.equal(decided?.approval?.phase, 'Approved');
        assert.deepEqual(
          decided.approval.decisions?.map((d) => d.approver),
          ['carol@example.com'],
        );
        assert.ok(ran !== undefined);
        assert.equal(ran.approval?.bindingHash, requested?.approval?.bindingHash);
        assert.equal(ran.outcome?.status, 'success');
        assert.equal(ran.outcome.rows, 1);
        assert.notEqual(ran.command?.id, requested?.command?.id, 'run by the statement sent again');
        const retried = records.find((r) => r.type === 'command.decision' && r.command?.id === ran.command?.id);
        assert.equal(retried?.decision?.result, 'approve');
        assert.deepEqual(retried.command?.parameters, ['70']);
        // Exactly one run under the approval.
        assert.equal(records.filter((r) => r.approval?.request === name && r.type === 'command.outcome').length, 1);
      } finally {
        await a.end();
        if (!bEnded) await b.end();
      }
    },
  );
});
