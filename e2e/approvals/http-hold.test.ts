// Approval holds in the HTTP engine (issues 13 and 15), all real: curl POSTs through the sidecar's HTTP
// engine to a real HTTP server on loopback; the approve rule holds the request while the sidecar files an
// ApprovalRequest with its own pod-bound token; approved with `kubectl chaperone approve`, the upstream
// receives it exactly once, with the exact body; a client that goes away while held withdraws the request
// (phase Cancelled) and the upstream never sees it.
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld } from './approval-fixture.ts';
import { curl, startHttpApprovalTarget } from './http-approval-fixture.ts';

const POLICY: AccessPolicySpec = {
  resources: { names: ['refunds-api'] },
  rules: [
    { name: 'hold-refunds', decision: 'approve', match: { http: { methods: ['POST'], paths: ['/api/refunds'] } } },
  ],
  defaultDecision: 'deny',
  approval: { approverGroups: ['dba'], requiredApprovals: 1, timeout: '5m', allowSelfApproval: false },
};

test('a POST through the HTTP engine waits for approval', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const { sidecar, received } = await startHttpApprovalTarget(
    t,
    world,
    'refunds-api',
    { refunds: POLICY },
    '{"refund":"created"}',
  );
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:refunder' });
  const url = `http://${sidecar.host}:${String(sidecar.port)}/api/refunds`;
  const post = (body: string) => curl(url, token, 'POST', body);
  const requests = () => world.requests();
  const filedFor = (amount: string) =>
    poll('the ApprovalRequest of the held POST', async () =>
      (await requests()).find((r) => r.spec.command.kind === 'http' && r.spec.command.text.includes(amount)),
    );

  await t.test('approved: forwarded exactly once, with the exact body', async () => {
    const body = '{"order":7,"amount":"1234.50"}';
    const posting = post(body);
    const request = await filedFor('1234.50');
    assert.equal(request.spec.policy.rule, 'hold-refunds');
    assert.match(request.spec.command.text, /^POST \/api\/refunds/);
    assert.equal(received.length, 0, 'nothing reaches the upstream while held');
    const approved = await runCli([
      'approve',
      request.metadata.name ?? '',
      '-n',
      ns,
      '--kubeconfig',
      people.carol.kubeconfig,
    ]);
    assert.equal(approved.code, 0, approved.stderr);
    const result = await posting.done;
    assert.equal(result.status, 201);
    assert.equal(result.body, '{"refund":"created"}');
    assert.deepEqual(received, [{ method: 'POST', url: '/api/refunds', body }]);
  });

  await t.test('the client going away withdraws the request; nothing is forwarded', async () => {
    const before = received.length;
    const posting = post('{"order":8,"amount":"999.99"}');
    const request = await filedFor('999.99');
    posting.kill();
    await posting.done;
    const settled = await poll('the request to be cancelled', async () => {
      const current = await world.request(request.metadata.name ?? '');
      return current.status?.phase === 'Cancelled' ? current : undefined;
    });
    assert.equal(settled.status?.phase, 'Cancelled');
    // Approving it now runs nothing: the request is settled and its connection is gone.
    await runCli(['approve', request.metadata.name ?? '', '-n', ns, '--kubeconfig', people.carol.kubeconfig]);
    const records = await poll('the cancelled hold in the trail', async () => {
      const all = (await sidecar.settledRecords()).map((e) => e.record);
      return all.some((r) => r.type === 'approval.decided' && r.approval?.request === request.metadata.name)
        ? all
        : undefined;
    });
    const decided = records.find((r) => r.type === 'approval.decided' && r.approval?.request === request.metadata.name);
    assert.equal(decided?.approval?.phase, 'Cancelled');
    assert.equal(received.length, before, 'the upstream never saw the withdrawn request');
  });

  await t.test('pipelined held requests: the client going away withdraws each; nothing is forwarded', async () => {
    const before = received.length;
    const post = (amount: string) => {
      const body = `{"order":9,"amount":"${amount}"}`;
      return `POST /api/refunds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: ${String(body.length)}\r\n\r\n${body}`;
    };
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(sidecar.port, sidecar.host, () => resolve(s));
      s.once('error', reject);
    });
    // The second request's response waits behind the first: it is not attached to the connection while held.
    socket.write(post('111.11') + post('222.22'));
    const first = await filedFor('111.11');
    const second = await filedFor('222.22');
    socket.destroy();
    for (const request of [first, second]) {
      const settled = await poll(`${request.metadata.name ?? ''} to be cancelled`, async () => {
        const current = await world.request(request.metadata.name ?? '');
        return current.status?.phase === 'Cancelled' ? current : undefined;
      });
      assert.equal(settled.status?.phase, 'Cancelled');
      await runCli(['approve', request.metadata.name ?? '', '-n', ns, '--kubeconfig', people.carol.kubeconfig]);
    }
    // Each decided request of that connection's session has one outcome: cancelled (499), never forwarded.
    const outcomes = await poll('both outcomes in the trail', async () => {
      const entries = await sidecar.settledRecords();
      const sessionId = entries.find(
        (e) => e.record.type === 'approval.requested' && e.record.approval?.request === second.metadata.name,
      )?.session.sessionId;
      const mine = entries.filter((e) => e.session.sessionId === sessionId).map((e) => e.record);
      const decisions = mine.filter((r) => r.type === 'command.decision');
      const found = decisions.map((d) => [
        ...(d.outcome === undefined ? [] : [d.outcome]),
        ...mine.filter((r) => r.type === 'command.outcome' && r.command?.id === d.command?.id).map((r) => r.outcome),
      ]);
      return decisions.length === 2 && found.every((o) => o.length > 0) ? found : undefined;
    });
    for (const found of outcomes) {
      assert.equal(found.length, 1, JSON.stringify(outcomes));
      assert.equal(found[0]?.status, 'denied');
      assert.equal(found[0].code, '499');
      assert.match(found[0].message ?? '', /cancelled \(client disconnected\)/);
    }
    assert.equal(received.length, before, 'the upstream never saw the withdrawn requests');
  });
});
