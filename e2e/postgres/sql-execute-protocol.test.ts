// SQL EXECUTE of a statement prepared by a protocol Parse: the sidecar does not resolve it (only a SQL
// PREPARE's text is remembered for EXECUTE), so it is refused under every policy (ProtocolStatementExecute,
// 42501) even when the Parse held a SELECT, the server never runs it, and the same statement run by
// Bind/Execute is answered.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { READ_ONLY, startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { authenticatedClient, cstr, errorFields, i16, i32, msg, parseBackend, query, SYNC } from './raw-client.ts';

test('read-only: SQL EXECUTE of a protocol-prepared statement is refused with 42501; Bind/Execute of it runs', async (t) => {
  const database = await createTestDatabase(t, 'create table t (id int); insert into t values (41);');
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:reader' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  let ready = 1;
  const send = async (bytes: Buffer): Promise<{ type: string; body: Buffer }[]> => {
    const before = client.receivedLength;
    client.write(bytes);
    ready += 1;
    const ok = await client.until(
      () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length >= ready,
      30_000,
    );
    assert.ok(ok, `answered (${client.end})`);
    return parseBackend(client.received.subarray(before)).messages;
  };
  const parsed = await send(Buffer.concat([msg('P', cstr('ps'), cstr('select id + 1 as id from t'), i16(0)), SYNC]));
  assert.deepEqual(
    parsed.map((m) => m.type),
    ['1', 'Z'],
  );
  const executed = await send(query('execute ps'));
  assert.deepEqual(
    executed.map((m) => m.type),
    ['E', 'Z'],
    'refused, no rows',
  );
  const [refusal] = executed.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
  assert.equal(refusal?.code, '42501');
  assert.match(refusal.message, /a statement prepared by a protocol Parse/);
  const bound = await send(
    Buffer.concat([msg('B', cstr(''), cstr('ps'), i16(0), i16(0), i16(0)), msg('E', cstr(''), i32(0)), SYNC]),
  );
  const row = bound.find((m) => m.type === 'D');
  assert.ok(row !== undefined, `Bind/Execute answered rows: ${bound.map((m) => m.type).join('')}`);
  assert.match(row.body.toString('latin1'), /42/);
});
