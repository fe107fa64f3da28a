import assert from 'node:assert/strict';
import { test } from 'node:test';
import { approvalBindingHash } from '@chaperone/api';
import type { AgentSession } from '../../core/agent-session.ts';
import type { CommandDescription, DecidedCommand } from '../../core/command.ts';
import type { Logger } from '../../core/observability/logger.ts';
import { awaitApproval, exactRequest } from './approval-hold.ts';
import type { ClientWatch } from './http-exchange.ts';

const hash = (exact: { text: string; parameters: readonly string[] }) =>
  approvalBindingHash({
    resource: { name: 'cluster-api', namespace: 'shop' },
    session: 's-1',
    requester: { subject: 'agent', issuer: 'test' },
    command: { kind: 'kubernetes', text: exact.text, parameters: exact.parameters },
  });

const PATCH = {
  method: 'PATCH',
  url: '/api/v1/namespaces/shop/configmaps/orders?fieldManager=kubectl',
  headers: { 'content-type': 'application/merge-patch+json' },
};
const BODY = Buffer.from('{"data":{"a":"1"}}');

test('the binding is the method, the exact URL, the body-shaping headers and the exact body', () => {
  const exact = exactRequest(PATCH, BODY);
  assert.equal(exact.text, 'PATCH /api/v1/namespaces/shop/configmaps/orders?fieldManager=kubectl');
  assert.deepEqual(exact.parameters, [
    'content-type: application/merge-patch+json',
    'content-encoding: ',
    `body: ${BODY.toString('base64')}`,
  ]);
});

test('any other method, URL, patch type, encoding or body byte is another command', () => {
  const base = hash(exactRequest(PATCH, BODY));
  const variants = [
    exactRequest({ ...PATCH, method: 'PUT' }, BODY),
    exactRequest({ ...PATCH, url: `${PATCH.url}&dryRun=All` }, BODY),
    exactRequest({ ...PATCH, url: PATCH.url.replace('orders', 'Orders') }, BODY),
    exactRequest({ ...PATCH, headers: { 'content-type': 'application/json-patch+json' } }, BODY),
    exactRequest({ ...PATCH, headers: { ...PATCH.headers, 'content-encoding': 'gzip' } }, BODY),
    exactRequest(PATCH, Buffer.from('{"data":{"a":"2"}}')),
    exactRequest(PATCH, Buffer.concat([BODY, Buffer.from(' ')])),
    exactRequest(PATCH, undefined),
  ];
  const hashes = new Set([base, ...variants.map(hash)]);
  assert.equal(hashes.size, variants.length + 1);
  assert.equal(hash(exactRequest({ ...PATCH }, Buffer.from(BODY))), base, 'the identical request is the same command');
});

test('a client gone before the hold begins files nothing and is cancelled', async () => {
  const decided = { decision: { decision: 'approve', approval: { wait: true } } } as unknown as DecidedCommand;
  const session = {
    holdForApproval: () => assert.fail('nothing is held for a client that has gone'),
    requestApproval: () => assert.fail('nothing is filed for a client that has gone'),
  } as unknown as AgentSession;
  const gone: ClientWatch = { gone: () => true, onGone: () => assert.fail('not watched') };
  const verdict = await awaitApproval(
    session,
    decided,
    { command: { type: 'http' }, fingerprint: 'f', text: 'POST /x' } as unknown as CommandDescription,
    exactRequest(PATCH, BODY),
    gone,
    {} as Logger,
  );
  assert.equal(verdict.run, false);
  assert.equal(verdict.command, decided);
  assert.equal(verdict.error.id, 'ApprovalCancelled');
  assert.match(verdict.error.message, /before the request was held; no approval request was filed/);
});
