// A closed session stays closed, as verify sees it: records after session.end and a status that
// contradicts the signed records are reported even when every record is correctly hashed and the head is
// re-signed with the sidecar's own key (what someone holding that key could write once the API server's
// rules are out of the way).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { calculateJwkThumbprint, type JWK } from 'jose';
import {
  API_VERSION,
  GENESIS_HASH,
  hashRecord,
  signChainHead,
  type AuditRecord,
  type Session,
  type SessionStatus,
} from '@chaperone/api';
import { verifyTrail, type TrailProblemKind } from './verify-trail.ts';

const NS = 'agents';
const T0 = Date.parse('2026-05-01T10:00:00Z');

async function signer(): Promise<{ privateJwk: JWK & { kid: string }; publicJwk: JWK & { kid: string } }> {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' });
  const kid = await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '' });
  return { privateJwk: { ...jwk, kid }, publicJwk: { kty: 'OKP', crv: 'Ed25519', x: jwk.x ?? '', kid } };
}

const time = (s: number) => `${new Date(T0 + s * 1000).toISOString().slice(0, 19)}.000000Z`;

/** A hash-chained record list: start, one allowed command, end (or whatever `types` says). */
function chain(types: readonly AuditRecord['type'][], prev = GENESIS_HASH, firstSeq = 1): AuditRecord[] {
  const records: AuditRecord[] = [];
  for (const [i, type] of types.entries()) {
    const seq = firstSeq + i;
    const unhashed = {
      v: 1,
      seq,
      time: time(seq),
      type,
      ...(type === 'session.start'
        ? { identity: { subject: 'system:serviceaccount:agents:default', issuer: 'https://issuer' } }
        : {}),
      ...(type.startsWith('command.') ? { command: { id: seq, kind: 'sql', text: 'select 1' } } : {}),
      ...(type === 'command.decision' ? { decision: { result: 'allow', policy: 'agents/p', rule: 'r' } } : {}),
      ...(type === 'command.outcome' ? { outcome: { status: 'success' } } : {}),
      prevHash: records.at(-1)?.hash ?? prev,
    } as Omit<AuditRecord, 'hash'>;
    records.push({ ...unhashed, hash: hashRecord(unhashed) });
  }
  return records;
}

async function part(
  key: Awaited<ReturnType<typeof signer>>,
  name: string,
  records: AuditRecord[],
  status: SessionStatus,
  extra: { part?: number; previousPart?: string; signedAt?: Date } = {},
): Promise<Session> {
  const last = records.at(-1) as AuditRecord;
  const signature = await signChainHead(
    {
      typ: 'chaperone.dev/chain-head/v1',
      sessionId: 'session-1',
      object: `${NS}/${name}`,
      seq: last.seq,
      hash: last.hash,
      signedAt: (extra.signedAt ?? new Date(T0 + 60_000)).toISOString(),
    },
    key.privateJwk,
  );
  return {
    apiVersion: API_VERSION,
    kind: 'Session',
    metadata: { name, namespace: NS },
    spec: {
      sessionId: 'session-1',
      part: extra.part ?? 0,
      ...(extra.previousPart === undefined ? {} : { previousPart: extra.previousPart }),
      pod: { name: 'agent-0', uid: 'u-1' },
      resource: { name: 'orders-db', type: 'postgres' },
      identity: { subject: 'system:serviceaccount:agents:default', issuer: 'https://issuer' },
      startTime: time(1).replace('.000000', ''),
      records,
      signer: { keyId: key.publicJwk.kid, publicKey: JSON.stringify(key.publicJwk) },
      head: { seq: last.seq, hash: last.hash, signature, keyId: key.publicJwk.kid },
    },
    status,
  };
}

const counters = (commands: number) => ({ commands, allowed: commands, denied: 0, held: 0, errors: 0 });
const closed = (endSecond: number, commands = 1): SessionStatus => ({
  phase: 'Closed',
  endTime: time(endSecond).replace('.000000', ''),
  counters: counters(commands),
});
const kinds = (problems: readonly { kind: TrailProblemKind; severity: string }[], severity = 'error') =>
  problems.filter((p) => p.severity === severity).map((p) => p.kind);
const LATER = new Date(T0 + 3_600_000);
const NORMAL: AuditRecord['type'][] = ['session.start', 'command.decision', 'command.outcome', 'session.end'];

test('a closed session whose status agrees with its records verifies', async () => {
  const key = await signer();
  const report = await verifyTrail([await part(key, 's-0', chain(NORMAL), closed(4))], { now: LATER });
  assert.deepEqual(report.problems, []);
  assert.ok(report.ok);
});

test('a correctly hashed and re-signed record after session.end, status set back to Active, is found', async () => {
  const key = await signer();
  const records = chain([...NORMAL, 'command.decision']);
  const forged = await part(key, 's-0', records, { phase: 'Active', counters: counters(2) });
  const report = await verifyTrail([forged], { now: LATER });
  assert.ok(!report.ok);
  assert.deepEqual(kinds(report.problems).sort(), ['records-after-end', 'status-mismatch']);
  assert.match(
    report.problems.find((p) => p.kind === 'records-after-end')?.detail ?? '',
    /follows session\.end \(seq 4/,
  );
  assert.match(report.problems.find((p) => p.kind === 'status-mismatch')?.detail ?? '', /set back/);
});

test('a new part continuing a closed part is found', async () => {
  const key = await signer();
  const first = chain(NORMAL);
  const continued = chain(['command.decision', 'command.outcome'], first.at(-1)?.hash, 5);
  const report = await verifyTrail(
    [
      await part(key, 's-0', first, { phase: 'Continued', counters: counters(1) }),
      await part(key, 's-1', continued, closed(6, 2), { part: 1, previousPart: 's-0' }),
    ],
    { now: LATER },
  );
  assert.ok(kinds(report.problems).includes('records-after-end'), JSON.stringify(report.problems));
  assert.ok(kinds(report.problems).includes('status-mismatch'), 'the ended part says Continued');
});

test('status contradicting the records: Abandoned after an end, wrong counters, wrong endTime', async () => {
  const key = await signer();
  const abandoned = await verifyTrail(
    [await part(key, 's-0', chain(NORMAL), { phase: 'Abandoned', counters: counters(1) })],
    { now: LATER },
  );
  assert.deepEqual(kinds(abandoned.problems), ['status-mismatch']);
  const miscounted = await verifyTrail(
    [await part(key, 's-0', chain(NORMAL), { ...closed(4), counters: { ...counters(1), allowed: 0, denied: 1 } })],
    { now: LATER },
  );
  assert.deepEqual(kinds(miscounted.problems), ['status-mismatch']);
  assert.match(miscounted.problems[0]?.detail ?? '', /status\.counters/);
  const wrongEnd = await verifyTrail([await part(key, 's-0', chain(NORMAL), closed(9))], { now: LATER });
  assert.deepEqual(kinds(wrongEnd.problems), ['status-mismatch']);
  assert.match(wrongEnd.problems[0]?.detail ?? '', /endTime/);
});

test('Active right after the end was signed is only a warning: the sidecar writes Closed next', async () => {
  const key = await signer();
  const signedAt = new Date(T0 + 60_000);
  const fresh = await verifyTrail(
    [await part(key, 's-0', chain(NORMAL), { phase: 'Active', counters: counters(1) }, { signedAt })],
    { now: new Date(signedAt.getTime() + 5_000) },
  );
  assert.ok(fresh.ok);
  assert.deepEqual(kinds(fresh.problems, 'warning'), ['status-mismatch']);
});
