import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  approvalBindingHash,
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
