import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ApprovalGrant, ApprovalRequest } from '@chaperone/api';
import { silentLogger } from '@chaperone/api';
import { ApprovalGrants, type GrantQuery } from './approval-grants.ts';
import type { ApprovalRequestStore, ObservedRequest } from './approval-requests.ts';

/** Records what the grants write; `emit` plays a watch event on the request. */
function recordingStore() {
  const written: ApprovalGrant[] = [];
  let emit: (event: ObservedRequest) => void = () => undefined;
  const store = {
    namespace: 'shop',
    setGrant: (_name: string, grant: ApprovalGrant) => {
      written.push(grant);
      return Promise.resolve();
    },
    watch: (_name: string, _rv: string | undefined, onEvent: (e: ObservedRequest) => void) => {
      emit = onEvent;
      return Promise.resolve(new AbortController());
    },
    get: () => Promise.resolve(undefined),
  } as unknown as ApprovalRequestStore;
  return { store, written, emit: (e: ObservedRequest) => emit(e) };
}

const party = {
  resource: { name: 'orders-db', namespace: 'shop' },
  requester: { subject: 'bob', issuer: 'https://issuer', chain: [{ subject: 'agent-7', issuer: 'https://issuer' }] },
  policy: 'shop/orders',
  rule: 'deletes',
};
const allowed = { scopes: ['fingerprint', 'session', 'resource'] as const, maxSeconds: 3600 };
const query = (over: Partial<GrantQuery> = {}): GrantQuery => ({
  ...party,
  session: 's1',
  normalized: 'fp-delete',
  allowed: { scopes: [...allowed.scopes], maxSeconds: allowed.maxSeconds },
  ...over,
});

function make(grants: ApprovalGrants, scopes: ('fingerprint' | 'session' | 'resource')[], durationSeconds = 600) {
  return grants.start(
    {
      request: 'orders-db-1',
      uid: 'uid-1',
      resourceVersion: '1',
      party,
      session: 's1',
      normalized: 'fp-delete',
      terms: { scopes, durationSeconds, approvers: ['carol'] },
      decisions: [],
    },
    Promise.resolve(),
  );
}

test('a grant covers the same party and rule within every scope asked, until it expires', async (t) => {
  let now = 1_000_000;
  const { store, written } = recordingStore();
  const grants = new ApprovalGrants({ store, logger: silentLogger, now: () => now });
  t.after(() => grants.close());
  const grant = make(grants, ['fingerprint', 'session']);
  assert.equal(grants.find(query())?.request, 'orders-db-1');
  // Another session, another statement, another requester chain, rule, policy or resource: not covered.
  assert.equal(grants.find(query({ session: 's2' })), undefined);
  assert.equal(grants.find(query({ normalized: 'fp-drop' })), undefined);
  assert.equal(grants.find(query({ requester: { ...party.requester, chain: [] } })), undefined);
  assert.equal(grants.find(query({ requester: { ...party.requester, subject: 'mallory' } })), undefined);
  assert.equal(grants.find(query({ rule: 'drops' })), undefined);
  assert.equal(grants.find(query({ policy: 'shop/other' })), undefined);
  assert.equal(grants.find(query({ resource: { name: 'orders-db', namespace: 'other' } })), undefined);
  // The policy as it is now: no grants any more, a scope withdrawn, or a shorter maximum.
  assert.equal(grants.find(query({ allowed: undefined })), undefined);
  assert.equal(grants.find(query({ allowed: { scopes: ['fingerprint'], maxSeconds: 3600 } })), undefined);
  assert.equal(grants.find(query({ allowed: { scopes: [...allowed.scopes], maxSeconds: 300 } })), undefined);
  // Expired by the clock, even before its timer fires.
  now += 600_000;
  assert.equal(grants.find(query()), undefined);
  await Promise.resolve();
  assert.equal(written[0]?.expiresTime, grant.expiresTime);
  assert.deepEqual(written[0].scopes, ['fingerprint', 'session']);
  assert.equal(written[0].session, 's1');
  assert.match(written[0].fingerprint ?? '', /^sha256:[0-9a-f]{64}$/);
});

test('a resource grant spans sessions and statements; a session grant ends with its session', async (t) => {
  const { store, written } = recordingStore();
  const grants = new ApprovalGrants({ store, logger: silentLogger });
  t.after(() => grants.close());
  make(grants, ['resource']);
  assert.ok(grants.find(query({ session: 's9', normalized: 'anything' })));
  grants.endSession('s1');
  assert.ok(grants.find(query({ session: 's9' })), 'a resource grant is not limited to a session');
  await grants.close();
  assert.equal(grants.find(query()), undefined);
  await new Promise((r) => setImmediate(r));
  assert.equal(written.at(-1)?.endReason, 'SidecarStopped');

  const again = new ApprovalGrants({ store: recordingStore().store, logger: silentLogger });
  make(again, ['session']);
  assert.ok(again.find(query({ normalized: 'other statement' })));
  again.endSession('s1');
  assert.equal(again.find(query()), undefined);
  await again.close();
});

test('a revocation, a deletion or another object under the name ends the grant at once', async () => {
  for (const event of [
    {
      type: 'changed',
      object: { metadata: { uid: 'uid-1' }, status: { revocation: { revokedBy: { username: 'dave' }, time: 't' } } },
    },
    { type: 'deleted' },
    { type: 'changed', object: { metadata: { uid: 'uid-2' } } },
  ] as ObservedRequest[]) {
    const { store, emit, written } = recordingStore();
    const grants = new ApprovalGrants({ store, logger: silentLogger });
    make(grants, ['resource']);
    await new Promise((r) => setImmediate(r));
    // An unrelated change (a new resourceVersion) keeps it.
    emit({ type: 'changed', object: { metadata: { uid: 'uid-1', resourceVersion: '2' } } as ApprovalRequest });
    assert.ok(grants.find(query()));
    emit(event);
    assert.equal(grants.find(query()), undefined);
    await new Promise((r) => setImmediate(r));
    const revoked = event.type === 'changed' && event.object.metadata.uid === 'uid-1';
    assert.equal(written.at(-1)?.endReason, revoked ? 'Revoked' : undefined);
    await grants.close();
  }
});
