import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  approvalBindingHash,
  grantOf,
  tallyDecisions,
  type ApprovalBinding,
  type ApprovalDecisionEntry,
} from './approval-tally.ts';

const spec = {
  requester: {
    subject: 'system:serviceaccount:ci:builder',
    issuer: 'https://kubernetes.default.svc',
    chain: [{ subject: 'agent-7' }, { subject: 'alice@example.com', kind: 'human' }],
  },
  approverGroups: ['dba'],
  approvers: ['root-approver@example.com'],
  allowSelfApproval: false,
  requiredApprovals: 2,
};

let n = 0;
function d(
  username: string,
  decision: 'approve' | 'deny' = 'approve',
  groups: string[] = ['dba'],
): ApprovalDecisionEntry {
  n += 1;
  return { approver: { username, groups }, decision, time: '2026-12-04T22:00:00Z', comment: `c${String(n)}` };
}

test('2-of-N counts distinct people: the same approver twice counts once', () => {
  const once = tallyDecisions(spec, [d('bob'), d('bob')]);
  assert.equal(once.state, 'pending');
  assert.equal(once.approvals, 1);
  assert.deepEqual(
    once.ignored.map((i) => i.reason),
    ['this approver decided already'],
  );
  const two = tallyDecisions(spec, [d('bob'), d('bob'), d('carol')]);
  assert.equal(two.state, 'approved');
  assert.deepEqual(
    two.counted.map((c) => c.approver.username),
    ['bob', 'carol'],
  );
});

test('the requester and every actor of its chain are not counted unless allowSelfApproval', () => {
  for (const who of ['system:serviceaccount:ci:builder', 'agent-7', 'alice@example.com']) {
    const t = tallyDecisions({ ...spec, requiredApprovals: 1 }, [d(who)]);
    assert.equal(t.state, 'pending', who);
    assert.equal(t.ignored[0]?.reason, 'the requester or an actor of its chain');
  }
  assert.equal(
    tallyDecisions({ ...spec, requiredApprovals: 1, allowSelfApproval: true }, [d('alice@example.com')]).state,
    'approved',
  );
});

test('only named approvers or members of approver groups count; nobody when none are named', () => {
  const outsider = tallyDecisions({ ...spec, requiredApprovals: 1 }, [d('mallory', 'approve', ['developers'])]);
  assert.equal(outsider.state, 'pending');
  assert.equal(outsider.ignored[0]?.reason, 'neither a named approver nor in an approver group');
  const noGroupsClaimed = tallyDecisions({ ...spec, requiredApprovals: 1 }, [
    { approver: { username: 'dave' }, decision: 'approve', time: '2026-12-04T22:00:00Z' },
  ]);
  assert.equal(noGroupsClaimed.state, 'pending');
  assert.equal(
    tallyDecisions({ ...spec, requiredApprovals: 1 }, [d('root-approver@example.com', 'approve', [])]).state,
    'approved',
  );
  const nobody = tallyDecisions({ ...spec, approvers: [], approverGroups: [], requiredApprovals: 1 }, [d('bob')]);
  assert.equal(nobody.state, 'pending');
  assert.equal(nobody.ignored[0]?.reason, 'the request names no approvers');
});

test('any eligible deny ends it; an ineligible deny does not', () => {
  assert.equal(tallyDecisions(spec, [d('bob'), d('carol', 'deny')]).state, 'denied');
  assert.equal(tallyDecisions(spec, [d('mallory', 'deny', ['developers']), d('bob'), d('carol')]).state, 'approved');
  // A second, later decision of the same approver does not turn an approval into a deny.
  assert.equal(tallyDecisions(spec, [d('bob'), d('bob', 'deny'), d('carol')]).state, 'approved');
});

test('the binding hash changes with the text, every parameter, the session, the resource and the chain', () => {
  const base: ApprovalBinding = {
    resource: { namespace: 'shop', name: 'orders-db' },
    session: '5b0c6a9e-0000-4000-8000-000000000001',
    requester: spec.requester,
    command: { kind: 'sql', text: 'DELETE FROM orders WHERE id = $1', parameters: ['text:3432'] },
  };
  const h = approvalBindingHash(base);
  assert.match(h, /^sha256:[0-9a-f]{64}$/);
  assert.equal(approvalBindingHash(structuredClone(base)), h, 'deterministic');
  const variants: ApprovalBinding[] = [
    { ...base, command: { ...base.command, text: 'DELETE FROM orders WHERE id = $1 ' } },
    { ...base, command: { ...base.command, parameters: ['text:3433'] } },
    { ...base, command: { ...base.command, parameters: ['binary:3432'] } },
    { ...base, command: { ...base.command, parameters: ['text:3432', 'NULL'] } },
    { ...base, session: '5b0c6a9e-0000-4000-8000-000000000002' },
    { ...base, resource: { namespace: 'shop', name: 'orders-db-2' } },
    { ...base, requester: { ...spec.requester, chain: [{ subject: 'agent-8' }] } },
    { ...base, requester: { ...spec.requester, subject: 'system:serviceaccount:ci:other' } },
  ];
  const hashes = new Set([h, ...variants.map(approvalBindingHash)]);
  assert.equal(hashes.size, variants.length + 1);
});

test('a grant is made only when every counted approval asks for one within spec.grants; the narrowest applies', () => {
  const grants = {
    scopes: ['fingerprint', 'session', 'resource'] as ('fingerprint' | 'session' | 'resource')[],
    maxDurationSeconds: 3600,
  };
  const asking = (username: string, scope: 'fingerprint' | 'session' | 'resource', durationSeconds: number) => ({
    ...d(username),
    grant: { scope, durationSeconds },
  });
  const withGrants = { ...spec, grants };
  // Both ask: every scope applies (session and fingerprint), the shorter duration.
  const both = tallyDecisions(withGrants, [asking('carol', 'session', 900), asking('dave', 'fingerprint', 1800)]);
  assert.deepEqual(grantOf(withGrants, both), {
    scopes: ['fingerprint', 'session'],
    durationSeconds: 900,
    approvers: ['carol', 'dave'],
  });
  // One of the two approved only the command: no grant.
  assert.equal(
    grantOf(withGrants, tallyDecisions(withGrants, [asking('carol', 'resource', 900), d('dave')])),
    undefined,
  );
  // Not approved yet, or a policy without grants, or a scope the spec does not list: no grant.
  assert.equal(grantOf(withGrants, tallyDecisions(withGrants, [asking('carol', 'resource', 900)])), undefined);
  const approvedTally = tallyDecisions(withGrants, [asking('carol', 'resource', 900), asking('dave', 'resource', 60)]);
  assert.equal(grantOf({}, approvedTally), undefined, 'a request whose policy allows no grant');
  const sessionOnly = { ...spec, grants: { scopes: ['session' as const], maxDurationSeconds: 3600 } };
  assert.equal(grantOf(sessionOnly, approvedTally), undefined);
  // A duration above the spec's maximum (admission refuses it; the tally caps it anyway).
  const long = tallyDecisions(withGrants, [asking('carol', 'resource', 86_400), asking('dave', 'resource', 86_400)]);
  assert.equal(grantOf(withGrants, long)?.durationSeconds, 3600);
  // Ineligible decisions do not count, so their grant asks do not either: the requester's chain asking.
  const chain = tallyDecisions(withGrants, [
    asking('alice@example.com', 'resource', 60),
    asking('carol', 'resource', 600),
    asking('dave', 'resource', 600),
  ]);
  assert.equal(grantOf(withGrants, chain)?.durationSeconds, 600);
});
