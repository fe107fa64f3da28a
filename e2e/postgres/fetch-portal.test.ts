// FETCH and MOVE run a portal by name, and portals bound by the extended protocol share that namespace with
// cursors: `FETCH ALL FROM p` runs the statement bound to protocol portal p without the decision every
// Execute gets (a policy reloaded since its Parse, an approval it needs). The sidecar refuses FETCH and MOVE
// of any name it did not see DECLAREd. Through the real sidecar to a real PostgreSQL, read from the table.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { AccessPolicySpec } from '@chaperone/api';
import { READ_ONLY, startTestSidecar, writePolicyBundle } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { directPgOptions } from '../harness/env.ts';
import { poll } from '../harness/poll.ts';
import {
  authenticatedClient,
  cstr,
  errorFields,
  i16,
  msg,
  parseBackend,
  query,
  SYNC,
  type RawClient,
} from './raw-client.ts';

const WRITER: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    { name: 'writes-too', decision: 'allow', match: { sql: { statementKinds: ['select', 'insert', 'transaction'] } } },
  ],
  defaultDecision: 'deny',
};

async function step(client: RawClient, bytes: Buffer): Promise<{ code: string; message: string }[]> {
  const before = client.receivedLength;
  const ready = parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length;
  client.write(bytes);
  assert.ok(
    await client.until(
      () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length > ready,
      30_000,
    ),
    `no ReadyForQuery (${client.end})`,
  );
  return parseBackend(client.received.subarray(before))
    .messages.filter((m) => m.type === 'E')
    .map((m) => errorFields(m.body));
}

test('FETCH or MOVE of a portal bound by the protocol is refused: it would run without its Execute decision', async (t) => {
  const database = await createTestDatabase(t, 'create table notes (n int)');
  const sidecar = await startTestSidecar(t, { policies: { team: WRITER }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  // In a transaction block, so that the named portals outlive their Sync. Bound, never executed.
  assert.deepEqual(await step(client, query('begin')), []);
  const bindFrame = (portal: string, statement: string) =>
    msg('B', cstr(portal), cstr(statement), i16(0), i16(0), i16(0));
  assert.deepEqual(
    await step(
      client,
      Buffer.concat([
        msg('P', cstr('ins'), cstr('insert into notes values (42) returning n'), i16(0)),
        bindFrame('p', 'ins'),
        bindFrame('q', 'ins'),
        SYNC,
      ]),
    ),
    [],
  );
  // The policy no longer allows the insert: an Execute of the portal is decided again and refused.
  const digest = await writePolicyBundle(sidecar.bundleDir, 'team', READ_ONLY);
  await poll('the sidecar to load the read-only bundle', () =>
    Promise.resolve(sidecar.logs().includes(digest) ? true : undefined),
  );
  for (const sql of ['fetch all from p', 'fetch forward 1 from "p"', 'move next in q']) {
    const errors = await step(client, query(sql));
    const [first] = errors;
    assert.ok(first !== undefined, `${sql} was not refused`);
    assert.equal(first.code, '42501', `${sql}: ${JSON.stringify(errors)}`);
    assert.match(first.message, /^chaperone: FETCH or MOVE of "[pq]", which was not declared/);
  }
  assert.deepEqual(await step(client, query('rollback')), []);
  // Cursors declared through the sidecar are fetched as before, in one string or across strings.
  assert.deepEqual(await step(client, query('begin; declare c cursor for select n from notes; fetch all from c')), []);
  assert.deepEqual(await step(client, query('move absolute 0 in c; fetch all from c; close c; commit')), []);
  const closed = await step(client, query('begin; fetch all from c'));
  assert.equal(closed[0]?.code, '42501', 'a closed cursor is not known any more');
  assert.deepEqual(await step(client, query('rollback')), []);

  const direct = new pg.Client(directPgOptions(database));
  await direct.connect();
  try {
    assert.deepEqual((await direct.query('select n from notes')).rows, [], 'the insert never ran');
  } finally {
    await direct.end();
  }
});
