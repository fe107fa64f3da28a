// Copy-protocol messages sent when no COPY is active: PostgreSQL ignores them (they may trail a COPY that
// failed), so they get no response of their own. A stray CopyDone or CopyFail must not shift the sidecar's
// expectations: the statements after it are answered, masked and recorded as themselves.
import { carriesCommandOutcome } from '@chaperone/api';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { authenticatedClient, cstr, msg, parseBackend, query } from '../postgres/raw-client.ts';
import { leakIn, MASKED_POLICY, MASKING_SCHEMA_SQL } from './bypass-corpus.ts';

const STRAY: readonly [string, Buffer][] = [
  ['CopyDone', msg('c')],
  ['CopyFail', msg('f', cstr('stray'))],
  ['CopyData', msg('d', Buffer.from('1\tx\n'))],
];

test('stray CopyData/CopyDone/CopyFail outside COPY: the next statements stay masked and are recorded as themselves', async (t) => {
  const database = await createTestDatabase(t, MASKING_SCHEMA_SQL);
  const sidecar = await startTestSidecar(t, { policies: { masked: MASKED_POLICY }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });
  let ready = 1;
  for (const [label, stray] of STRAY) {
    const before = client.receivedLength;
    const sql = `select email, ssn from customers order by id /* ${label} */`;
    client.write(Buffer.concat([stray, stray, query(sql), query(`select 1 as after_${label.toLowerCase()}`)]));
    ready += 2;
    const ok = await client.until(
      () => parseBackend(client.received, 0, true).messages.filter((m) => m.type === 'Z').length >= ready,
      30_000,
    );
    assert.ok(ok, `${label}: both queries answered (${client.end})`);
    const bytes = client.received.subarray(before);
    assert.equal(leakIn(bytes), undefined, `${label}: a masked value leaked`);
    const rows = parseBackend(bytes).messages.filter((m) => m.type === 'D');
    assert.equal(rows.length, 3, `${label}: two masked rows and the 1`);
  }
  const records = (await sidecar.settledRecords()).map((r) => r.record);
  for (const [label] of STRAY) {
    const decided = records.find((r) => r.type === 'command.decision' && r.command?.text?.includes(`/* ${label} */`));
    const outcome = records.find((r) => carriesCommandOutcome(r) && r.command?.id === decided?.command?.id);
    assert.equal(outcome?.outcome?.status, 'success', label);
    assert.equal(outcome.outcome.rows, 2, `${label}: the rows counted to their own statement`);
  }
});
