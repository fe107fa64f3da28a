// The approval webhook, end to end: two operator replicas with leader election against the real API server,
// the leader posting each new ApprovalRequest and its resolution to a real HTTP receiver on loopback, which
// checks X-Chaperone-Signature with its own HMAC (not the operator's code) and refuses the first attempt of
// every delivery, so each one is retried. A statement held by the real sidecar is approved with the real CLI.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as k8s from '@kubernetes/client-node';
import { startOperator } from '../../operator/src/operator.ts';
import { NOTIFIED_ANNOTATION, type ApprovalNotification } from '../../operator/src/approvals/approval-notifier.ts';
import { createLogger } from '../../operator/src/observability/logger.ts';
import { runCli } from '../audit/run-cli.ts';
import { kubeConfig } from '../harness/kube.ts';
import { poll } from '../harness/poll.ts';
import { createApprovalWorld, requestNamed, startPsql } from './approval-fixture.ts';

interface Delivery {
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly answered: number;
  /** The receiver's own check of the signature. */
  readonly signed: boolean;
  readonly skewSeconds: number;
}

/** The receiver's check, written from the documentation: HMAC-SHA256 over `<t>.<body>`, hex, as v1. */
function checkSignature(key: Buffer, header: string | undefined, body: string): { ok: boolean; t: number } {
  const parts = new Map(
    (header ?? '').split(',').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]),
  );
  const t = Number(parts.get('t'));
  const expected = createHmac('sha256', key)
    .update(`${String(t)}.${body}`)
    .digest();
  const given = Buffer.from(parts.get('v1') ?? '', 'hex');
  return { ok: given.length === expected.length && timingSafeEqual(given, expected), t };
}

test('approval webhook: the leader posts each request and its resolution once, signed, retrying a refusal', async (t) => {
  const world = await createApprovalWorld(t);
  const { ns, people } = world;
  const key = randomBytes(32);
  const secretName = 'approval-webhook';
  await kubeConfig()
    .makeApiClient(k8s.CoreV1Api)
    .createNamespacedSecret({
      namespace: ns,
      body: { metadata: { name: secretName }, data: { key: key.toString('base64') } },
    });

  const deliveries: Delivery[] = [];
  const attempts = new Map<string, number>();
  const receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const id = String(req.headers['x-chaperone-delivery']);
      const n = (attempts.get(id) ?? 0) + 1;
      attempts.set(id, n);
      const { ok, t: stamp } = checkSignature(key, req.headers['x-chaperone-signature'] as string | undefined, body);
      // The first attempt of every delivery is refused: the operator must retry it.
      const answered = !ok ? 401 : n === 1 ? 503 : 204;
      deliveries.push({ headers: req.headers, body, answered, signed: ok, skewSeconds: Date.now() / 1000 - stamp });
      res.writeHead(answered).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => receiver.close(() => resolve())));
  const url = `http://127.0.0.1:${String((receiver.address() as AddressInfo).port)}/hooks/chaperone?team=payments`;

  const logs: string[] = [];
  const replicas = await Promise.all(
    ['replica-a', 'replica-b'].map((identity) =>
      startOperator({
        kubeConfig: kubeConfig(),
        namespace: ns,
        identity,
        leaderElect: true,
        leaderElectionNamespace: ns,
        leaseDurationMs: 4_000,
        renewDeadlineMs: 3_000,
        retryPeriodMs: 500,
        metricsBindAddress: '0',
        logger: createLogger({
          level: 'debug',
          base: { replica: identity },
          write: (line: string) => {
            logs.push(line);
          },
        }),
        approvalWebhook: {
          url,
          secret: { namespace: ns, name: secretName, key: 'key' },
          retryBaseMs: 200,
          retryMaxMs: 2_000,
        },
      }),
    ),
  );
  t.after(() => Promise.all(replicas.map((r) => r.stop())).then(() => undefined));
  await poll('a leader', () => Promise.resolve(replicas.some((r) => r.isLeader()) ? true : undefined));

  const sidecar = await world.startSidecar(t);
  const run = startPsql(sidecar.libpqEnv(await world.requesterToken(sidecar)), [
    '-c',
    'INSERT INTO payouts(amount) VALUES (7)',
  ]);
  const name = await requestNamed(run.stderr);
  // Only this request's (the admission probe of the fixture may have left one before admission was enforced).
  const about = (d: Delivery) => (JSON.parse(d.body) as ApprovalNotification).request.name === name;
  const accepted = (type: string) =>
    deliveries.filter((d) => about(d) && d.answered === 204 && d.headers['x-chaperone-event'] === type);

  const requested = await poll('the requested notification to be accepted', () =>
    Promise.resolve(accepted('approval.requested')[0]),
  );
  const first = JSON.parse(requested.body) as ApprovalNotification;
  assert.equal(first.type, 'approval.requested');
  assert.equal(first.request.name, name);
  assert.equal(first.request.namespace, ns);
  assert.equal(first.request.phase, 'Pending');
  assert.equal(first.request.requester.subject, 'bob@example.com');
  assert.deepEqual(first.request.requester.chain, ['ai-agent-7', 'alice@example.com']);
  assert.match(first.request.command.text, /INSERT INTO payouts\(amount\) VALUES \(7\)/);
  assert.equal(first.request.approveCommand, `kubectl chaperone approve ${name} -n ${ns}`);
  assert.equal(requested.headers['x-chaperone-delivery'], first.id);
  assert.equal(requested.headers['content-type'], 'application/json');
  assert.ok(Math.abs(requested.skewSeconds) < 300, 'the signed timestamp is the time of sending');
  // Refused once with 503, then sent again (the same delivery id and body, a fresh signature).
  const tries = deliveries.filter((d) => d.headers['x-chaperone-delivery'] === first.id);
  assert.deepEqual(
    tries.map((d) => d.answered),
    [503, 204],
  );
  assert.equal(JSON.parse(tries[0]?.body ?? '{}').id, first.id);

  // The statement is still held: notifications never stand in the way of the approval.
  assert.equal(await world.count('payouts'), 0);
  const approved = await runCli(['approve', name, '-n', ns, '--kubeconfig', people.carol.kubeconfig]);
  assert.equal(approved.code, 0, approved.stderr);
  assert.equal(await run.exited, 0, run.stderr());
  assert.equal(await world.count('payouts'), 1);

  const resolved = await poll('the resolved notification to be accepted', () =>
    Promise.resolve(accepted('approval.resolved')[0]),
  );
  const second = JSON.parse(resolved.body) as ApprovalNotification;
  assert.equal(second.request.name, name);
  assert.equal(second.request.phase, 'Approved');
  assert.equal(second.request.approvals, 1);
  assert.deepEqual(
    second.request.decisions.map((d) => [d.approver, d.decision]),
    [['carol@example.com', 'approve']],
  );
  assert.notEqual(second.id, first.id);

  // Delivered is remembered on the request, so neither this leader nor the next sends it again.
  await poll('the request to be marked notified', async () =>
    (await world.request(name)).metadata.annotations?.[NOTIFIED_ANNOTATION] === 'resolved' ? true : undefined,
  );
  // Every attempt was signed correctly; each event was accepted exactly once, by one sender (the leader).
  assert.ok(deliveries.every((d) => d.signed));
  assert.equal(accepted('approval.requested').length, 1);
  assert.equal(accepted('approval.resolved').length, 1);
  const senders = new Set(
    logs
      .filter((l) => l.includes('approval notification delivered') && l.includes(name))
      .map((l) => (JSON.parse(l) as { replica: string }).replica),
  );
  assert.equal(senders.size, 1, `one sender, not ${[...senders].join(', ')}`);
  // Never the key, nor the URL's query, in the operator's logs.
  const all = logs.join('');
  assert.ok(!all.includes(key.toString('hex')) && !all.includes(key.toString('base64')), 'the key is not logged');
  assert.ok(!all.includes('team=payments'), 'the URL query is not logged');
});
