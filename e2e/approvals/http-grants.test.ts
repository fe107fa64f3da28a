// Time-bound grants in the HTTP engine (docs/approvals.md, "Time-bound grants"), all real: curl through the
// sidecar's HTTP engine to a real HTTP server on loopback, ApprovalRequests on the real API server approved
// with `kubectl chaperone approve --for --scope` by people with client certificates. A grant lets exactly its
// scope through for its time: a fingerprint grant the same method and path (any body, any connection), not
// another path of the same rule nor another method; a resource grant any request of its rule; nothing after
// `kubectl chaperone revoke` or expiry. Each request run under a grant is in the trail with the grant.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GROUP, VERSION, type AccessPolicySpec, type ApprovalRequest } from '@chaperone/api';
import { runCli } from '../audit/run-cli.ts';
import { type TestIdentity } from '../harness/identities.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld, PLURAL } from './approval-fixture.ts';
import { curl, startHttpApprovalTarget } from './http-approval-fixture.ts';

const POLICY: AccessPolicySpec = {
  resources: { names: ['payments-api'] },
  rules: [
    {
      name: 'hold-money',
      decision: 'approve',
      match: { http: { methods: ['POST'], paths: ['/api/refunds', '/api/credits'] } },
    },
    { name: 'hold-deletes', decision: 'approve', match: { http: { methods: ['DELETE'], paths: ['/api/refunds'] } } },
  ],
  defaultDecision: 'deny',
  approval: {
    approverGroups: ['dba'],
    requiredApprovals: 1,
    timeout: '10m',
    allowSelfApproval: false,
    grants: { scopes: ['fingerprint', 'resource'], maxDuration: '30m' },
  },
};

test('HTTP time-bound grants: a grant lets exactly its scope through for its time, and no more', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people, custom } = world;
  const target = await startHttpApprovalTarget(t, world, 'payments-api', { payments: POLICY });
  const { sidecar } = target;
  /** What reached the upstream, as `METHOD url body`. */
  const received = () => target.received.map((r) => `${r.method} ${r.url} ${r.body}`);
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:agents:payer' });
  const base = `http://${sidecar.host}:${String(sidecar.port)}`;

  /** One curl, one connection (so one agent session) per request. */
  const send = (method: string, path: string, body: string) => curl(`${base}${path}`, token, method, body);
  const requests = async () =>
    (
      (await custom.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: ns, plural: PLURAL })) as {
        items: ApprovalRequest[];
      }
    ).items.filter((r) => r.spec.command.kind === 'http');
  /** The request filed for the held request whose body holds `marker`. */
  const filedFor = (marker: string) =>
    poll('the ApprovalRequest of the held request', async () =>
      (await requests()).find((r) => r.spec.command.text.includes(marker)),
    );
  const cli = (who: TestIdentity, args: string[]) => runCli([...args, '-n', ns, '--kubeconfig', who.kubeconfig]);
  /** Holds `method path` (its body marked), then lets `settle` decide it; resolves with the request's name. */
  const heldThen = async (method: string, path: string, marker: string, settle: (name: string) => Promise<void>) => {
    const sent = send(method, path, `{"marker":"${marker}"}`);
    const request = await filedFor(marker);
    const name = request.metadata.name ?? '';
    await settle(name);
    return { name, result: await sent.done };
  };
  const deny = async (name: string) => {
    const denied = await cli(people.carol, ['deny', name]);
    assert.equal(denied.code, 0, denied.stderr);
  };
  let fingerprintGrant = '';

  await t.test('fingerprint: the same method and path runs unheld in a new connection, with any body', async () => {
    const first = await heldThen('POST', '/api/refunds', 'f-1', async (name) => {
      assert.equal(received().length, 0, 'nothing reaches the upstream while held');
      const approved = await cli(people.carol, ['approve', name, '--for', '10m', '--scope', 'fingerprint']);
      assert.equal(approved.code, 0, approved.stderr);
      assert.match(approved.stdout, /granting fingerprint for 600s/);
    });
    fingerprintGrant = first.name;
    assert.equal(first.result.status, 201);
    const grant = await poll('the grant in the status', async () => (await world.request(first.name)).status?.grant);
    assert.deepEqual(grant.scopes, ['fingerprint']);
    assert.deepEqual(grant.approvers, ['carol@example.com']);

    const before = (await requests()).length;
    const again = await send('POST', '/api/refunds', '{"marker":"f-2","amount":"other"}').done;
    assert.equal(again.status, 201, again.body);
    assert.equal((await requests()).length, before, 'no new ApprovalRequest');
    assert.deepEqual(received(), [
      'POST /api/refunds {"marker":"f-1"}',
      'POST /api/refunds {"marker":"f-2","amount":"other"}',
    ]);
  });

  await t.test(
    'fingerprint: another path of the same rule and another method are held for requests of their own',
    async () => {
      const credits = await heldThen('POST', '/api/credits', 'f-3', deny);
      assert.notEqual(credits.name, fingerprintGrant);
      assert.equal(credits.result.status, 403, 'ApprovalDenied');
      const deletes = await heldThen('DELETE', '/api/refunds', 'f-4', deny);
      assert.notEqual(deletes.name, fingerprintGrant);
      assert.equal(deletes.result.status, 403, 'ApprovalDenied');
      // A query string makes another fingerprint too.
      const query = await heldThen('POST', '/api/refunds?force=1', 'f-5', deny);
      assert.equal(query.result.status, 403, 'ApprovalDenied');
      assert.equal(received().length, 2, 'none of them reached the upstream');
    },
  );

  await t.test('revoke: an outsider cannot; an approver can, and the next request is held again', async () => {
    const outsider = await cli(people.mallory, ['revoke', fingerprintGrant]);
    assert.equal(outsider.code, 1);
    assert.match(outsider.stderr, /may not revoke this grant/);
    const revoked = await cli(people.dave, ['revoke', fingerprintGrant]);
    assert.equal(revoked.code, 0, revoked.stderr);
    await poll('the grant to end as Revoked', async () =>
      (await world.request(fingerprintGrant)).status?.grant?.endReason === 'Revoked' ? true : undefined,
    );
    const after = await heldThen('POST', '/api/refunds', 'r-1', deny);
    assert.notEqual(after.name, fingerprintGrant);
    assert.equal(after.result.status, 403, 'ApprovalDenied');
    assert.equal(received().length, 2);
  });

  let resourceGrant = '';
  await t.test('resource: any request of the rule runs unheld until the grant expires', async () => {
    const first = await heldThen('POST', '/api/credits', 'x-1', async (name) => {
      const approved = await cli(people.carol, ['approve', name, '--for', '45s', '--scope', 'resource']);
      assert.equal(approved.code, 0, approved.stderr);
    });
    resourceGrant = first.name;
    assert.equal(first.result.status, 201);
    const before = (await requests()).length;
    const refunds = await send('POST', '/api/refunds?force=1', '{"marker":"x-2"}').done;
    assert.equal(refunds.status, 201, refunds.body);
    assert.equal((await requests()).length, before, 'no new ApprovalRequest');
    // Another rule (DELETE): not covered.
    const deletes = await heldThen('DELETE', '/api/refunds', 'x-3', deny);
    assert.equal(deletes.result.status, 403, 'ApprovalDenied');
    assert.deepEqual(received().slice(2), [
      'POST /api/credits {"marker":"x-1"}',
      'POST /api/refunds?force=1 {"marker":"x-2"}',
    ]);

    await poll(
      'the grant to expire',
      async () => ((await world.request(resourceGrant)).status?.grant?.endReason === 'Expired' ? true : undefined),
      120_000,
    );
    const expired = await heldThen('POST', '/api/credits', 'x-4', deny);
    assert.notEqual(expired.name, resourceGrant);
    assert.equal(expired.result.status, 403, 'ApprovalDenied');
    assert.equal(received().length, 4);
  });

  await t.test('each request run under a grant is in the trail with the grant and its approvers', async () => {
    const records = await poll('the granted requests in the trail', async () => {
      const all = (await sidecar.settledRecords()).map((e) => e.record);
      const granted = all.filter((r) => r.type === 'approval.decided' && r.approval?.grant !== undefined);
      return granted.length >= 4 ? all : undefined;
    });
    for (const [request, scope] of [
      [fingerprintGrant, 'fingerprint'],
      [resourceGrant, 'resource'],
    ] as const) {
      const decided = records.filter((r) => r.type === 'approval.decided' && r.approval?.request === request);
      assert.equal(decided.length, 2, `the approval of ${request} and one request under its grant`);
      for (const d of decided) {
        assert.deepEqual(d.approval?.grant?.scopes, [scope]);
        assert.deepEqual(
          d.approval.decisions?.map((x) => x.approver),
          ['carol@example.com'],
        );
      }
    }
  });
});
