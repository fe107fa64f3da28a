// Hostile requests sent as raw bytes over TLS to the real sidecar in front of the real API server: request
// smuggling (Content-Length with Transfer-Encoding, duplicate lengths, odd codings, obs-fold, bare LF),
// duplicate or foreign Host, paths the API server would read differently (encoded slashes, dot segments,
// empty segments), ambiguous queries, impersonation, SPDY, non-resource URLs, oversize bodies, and every way
// a Secret's value could come back unmasked (protobuf, gzip, Tables with objects, writing a mask back). Each
// must be refused with the expected status (or come back masked), and the API server's state shows that
// nothing smuggled ran.
import { carriesCommandOutcome } from '@chaperone/api';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { RESOURCE, startKubeFixture } from './kube-fixture.ts';
import { exchange } from './raw-tls.ts';

function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        { name: 'keep-keepers', decision: 'deny', match: { kubernetes: { verbs: ['delete'], names: ['keep-*'] } } },
        { name: 'no-version', decision: 'deny', match: { kubernetes: { nonResourceURLs: ['/version'] } } },
        { name: 'pings', decision: 'allow', match: { kubernetes: { verbs: ['get'], nonResourceURLs: ['/livez/*'] } } },
        { name: 'in-namespace', decision: 'allow', match: { kubernetes: { namespaces: [namespace] } } },
      ],
      defaultDecision: 'deny',
    },
  };
}

test('attack corpus against the Kubernetes engine', async (t) => {
  const f = await startKubeFixture(t, policy);
  const ns = f.namespace;
  const ca = readFileSync(f.servingCertFile);
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const auth = `Authorization: Bearer ${f.agentToken}`;
  await f.admin(['create', 'configmap', 'keep-me', '-n', ns]);
  await f.admin(['create', 'configmap', 'victim', '-n', ns]);
  await f.admin(['create', 'secret', 'generic', 'db', '--from-literal=password=hunter2-secret', '-n', ns]);
  const plain = Buffer.from('hunter2-secret').toString('base64');
  const maskedData = Buffer.from('chaperone:masked').toString('base64');
  const smuggled = `DELETE /api/v1/namespaces/${ns}/configmaps/victim HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n\r\n`;

  // Parser-error tails (docs/http-engine.md): a request the parser refuses bytes after, in the same write, is
  // not forwarded, and a body a chunk-size error cuts never is (checked in "nothing smuggled").
  await f.admin(['create', 'configmap', 'tail-victim', '-n', ns]);
  const create = (name: string) => JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name } });
  const post = (extra: string) =>
    `POST /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: application/json\r\n${extra}`;
  const chunk = (text: string) => `${text.length.toString(16)}\r\n${text}\r\n`;
  const tails: readonly { name: string; bytes: string; status: number }[] = [
    {
      name: 'tail: a malformed request after a Content-Length create',
      bytes: `${post(`Content-Length: ${String(create('tail-length').length)}\r\n`)}\r\n${create('tail-length')}GARBAGE / HTTP/1.1\r\n\r\n`,
      status: 400,
    },
    {
      name: 'tail: a chunk-size error inside a chunked create',
      bytes: `${post('Transfer-Encoding: chunked\r\n')}\r\n${chunk(create('tail-cut').slice(0, 20))}ZZ\r\n${chunk(create('tail-cut').slice(20))}0\r\n\r\n`,
      status: 400,
    },
    {
      name: 'tail: a pipelined request with a bad header after a DELETE',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps/tail-victim HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n\r\nGET / HTTP/1.1\r\nBad Header: y\r\n\r\n`,
      status: 400,
    },
    {
      name: 'tail: bytes after a Connection: close create',
      bytes: `${post(`Content-Length: ${String(create('tail-closed').length)}\r\nConnection: close\r\n`)}\r\n${create('tail-closed')}${smuggled}`,
      status: 400,
    },
  ];

  const cases: readonly { name: string; bytes: string; status: number; body?: RegExp }[] = [
    ...tails,
    {
      name: 'Content-Length with Transfer-Encoding smuggling a DELETE',
      bytes: `POST /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      status: 400,
    },
    {
      name: 'two Content-Length headers',
      bytes: `POST /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Length: 0\r\nContent-Length: ${String(smuggled.length)}\r\n\r\n${smuggled}`,
      status: 400,
    },
    {
      name: 'Transfer-Encoding other than a lone chunked',
      bytes: `POST /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
      status: 400,
    },
    {
      name: 'obs-fold continuation line',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nX-Folded: a\r\n Impersonate-User: admin\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'bare LF line endings',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\nHost: ${host}\n${auth}\nConnection: close\n\n`,
      status: 400,
    },
    {
      name: 'two Host headers',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\nHost: kubernetes.default.svc\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'absolute-form naming another host',
      bytes: `GET https://kubernetes.default.svc/api/v1/namespaces/${ns}/secrets HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'encoded slash turning a configmap get into a secret read',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps%2F..%2Fsecrets/db HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
      body: /encoded slash/,
    },
    {
      name: 'dot segments',
      bytes: `GET /api/v1/namespaces/kube-system/../${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
      body: /dot segment/,
    },
    {
      name: 'encoded dot segments',
      bytes: `GET /api/v1/namespaces/kube-system/%2e%2e/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
      body: /dot segment/,
    },
    {
      name: 'empty path segment',
      bytes: `GET /api/v1/namespaces//configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'semicolon in the query (Go drops the pair)',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps?watch=false;watch=true HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'an unclear watch flag',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps?watch=yes HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'Impersonate-User',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nImpersonate-User: system:admin\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /impersonation/,
    },
    {
      name: 'Impersonate-Group alone',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nImpersonate-Group: system:masters\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'no token',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
      status: 401,
    },
    {
      name: 'the sidecar credential is not what the agent holds: a service-account-looking token',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.\r\nConnection: close\r\n\r\n`,
      status: 401,
    },
    {
      name: 'SPDY upgrade of an allowed attach',
      bytes: `POST /api/v1/namespaces/${ns}/pods/p/attach?stdout=true HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n`,
      status: 400,
      body: /spdy\/3\.1 upgrade is not supported/,
    },
    {
      name: 'non-resource URL /metrics',
      bytes: `GET /metrics HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'non-resource URL /logs/',
      bytes: `GET /logs/ HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'discovery denied by a nonResourceURLs rule: /version',
      bytes: `GET /version HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /rule no-version/,
    },
    {
      name: 'a non-resource URL a namespace rule does not cover, even in its namespace: /api/v1/namespaces/../metrics',
      bytes: `GET /api/v1/namespaces/${ns}/../../../metrics HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    {
      name: 'a POST to discovery is decided by policy, not opened as discovery',
      bytes: `POST /apis HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'a body larger than the limit, announced',
      bytes: `POST /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{`,
      status: 413,
    },
    {
      name: 'writing the mask back into a Secret',
      bytes: (() => {
        const body = JSON.stringify({ data: { password: Buffer.from('chaperone:masked').toString('base64') } });
        return `PATCH /api/v1/namespaces/${ns}/secrets/db HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: application/merge-patch+json\r\nContent-Length: ${String(body.length)}\r\nConnection: close\r\n\r\n${body}`;
      })(),
      status: 403,
      body: /masked/,
    },
    // The mask written back under spellings the API server decodes to the same bytes (Go's base64 skips
    // line breaks and ignores the last character's unused bits; JSON and YAML escapes).
    ...Object.entries({
      'JSON escapes': `{"data":{"password":"${maskedData.replace(/=/g, '\\u003d')}"}}`,
      'a line break in the base64': `{"data":{"password":"${maskedData.slice(0, 12)}\\n${maskedData.slice(12)}"}}`,
      'another last character': `{"data":{"password":"${maskedData.slice(0, -3)}B=="}}`,
    }).map(([spelling, body]) => ({
      name: `writing the mask back into a Secret: ${spelling}`,
      bytes: `PATCH /api/v1/namespaces/${ns}/secrets/db HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: application/merge-patch+json\r\nContent-Length: ${String(body.length)}\r\nConnection: close\r\n\r\n${body}`,
      status: 403,
      body: /masked/,
    })),
    {
      name: 'writing the mask back as a YAML apply patch split across lines',
      bytes: (() => {
        const body = `apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: |\n    ${maskedData.slice(0, 12)}\n    ${maskedData.slice(12)}\n`;
        return `PATCH /api/v1/namespaces/${ns}/secrets/db?fieldManager=agent&force=true HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: application/apply-patch+yaml\r\nContent-Length: ${String(body.length)}\r\nConnection: close\r\n\r\n${body}`;
      })(),
      status: 403,
      body: /masked/,
    },
    {
      name: 'Impersonate-Uid',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nImpersonate-Uid: 0\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /impersonation/,
    },
    {
      name: "a bearer token in Sec-WebSocket-Protocol (the API server's fallback authenticator reads it)",
      bytes: `GET /api/v1/namespaces/${ns}/pods/p/exec?command=id&stdout=true HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${Buffer.from('chaperone-corpus!').toString('base64')}\r\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.${Buffer.from('another-token').toString('base64url')}, v5.channel.k8s.io\r\n\r\n`,
      status: 403,
      body: /Sec-WebSocket-Protocol/,
    },
    {
      name: 'X-Remote-User and X-Remote-Group (front-proxy authentication headers)',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nX-Remote-User: system:admin\r\nX-Remote-Group: system:masters\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /impersonation/,
    },
    {
      name: 'Impersonate-Extra-* in mixed case',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nIMPERSONATE-EXTRA-scopes: admin\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /impersonation/,
    },
    {
      name: 'Secrets of every namespace, a field selector naming ours',
      bytes: `GET /api/v1/secrets?fieldSelector=metadata.namespace%3D${ns} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'X-Forwarded-For (the API server would put it in its audit sourceIPs)',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /x-forwarded-for/,
    },
    {
      name: 'headers of 100 KiB: a clear 431 Status',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nX-Padding: ${'a'.repeat(100 * 1024)}\r\nConnection: close\r\n\r\n`,
      status: 431,
    },
    {
      name: 'X-Real-IP',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nX-Real-IP: 10.1.2.3\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'a dry run is decided like the real request: deleting a keeper',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps/keep-me?dryRun=All HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /keep-keepers/,
    },
    // A deny rule naming objects covers the collection requests that reach them (docs/policy.md).
    {
      name: 'deletecollection past a deny rule naming keep-*',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /keep-keepers/,
    },
    {
      name: 'deletecollection pinned to the keeper by a field selector',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps?fieldSelector=metadata.name%3Dkeep-me HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /keep-keepers/,
    },
    {
      name: 'a dry run spelled so Go reads another value',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps/victim?dryRun=All&dryRun= HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    // The body names another namespace than the path the policy decided on: the API server refuses it.
    ...Object.entries({
      'a body naming kube-system under our namespace path': {
        path: `/api/v1/namespaces/${ns}/configmaps`,
        body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'moved', namespace: 'kube-system' } },
        status: 400,
      },
      'a namespaced create without a namespace in the path, the body naming ours': {
        path: '/api/v1/configmaps',
        body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'moved', namespace: ns } },
        status: 403,
      },
      'a List of objects posted as one create': {
        path: `/api/v1/namespaces/${ns}/configmaps`,
        body: {
          apiVersion: 'v1',
          kind: 'List',
          items: [{ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'listed', namespace: ns } }],
        },
        status: 400,
      },
    }).map(([name, c]) => {
      const body = JSON.stringify(c.body);
      return {
        name,
        bytes: `POST ${c.path} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: application/json\r\nContent-Length: ${String(body.length)}\r\nConnection: close\r\n\r\n${body}`,
        status: c.status,
      };
    }),
    // Paths and queries the API server reads as the request the policy denies.
    {
      name: 'a trailing slash on a denied delete',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps/keep-me/ HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /keep-keepers/,
    },
    {
      name: 'an escaped name on a denied delete (%6Beep-me)',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps/%6Beep-me HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /keep-keepers/,
    },
    {
      name: 'upper-case /API is no resource request a namespace rule covers',
      bytes: `GET /API/v1/namespaces/${ns}/secrets HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'watch=1 on a namespace no rule allows',
      bytes: `GET /api/v1/namespaces/kube-system/secrets?watch=1 HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
    },
    {
      name: 'fieldManager and dryRun on a denied delete',
      bytes: `DELETE /api/v1/namespaces/${ns}/configmaps/keep-me?fieldManager=kubectl&dryRun=All HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
      status: 403,
      body: /keep-keepers/,
    },
    // The mask written back through the other patch types.
    ...Object.entries({
      'application/json-patch+json': `[{"op":"replace","path":"/data/password","value":"${maskedData}"}]`,
      'application/strategic-merge-patch+json': `{"data":{"password":"${maskedData}"}}`,
      'application/json-patch+json, the mask as stringData': `[{"op":"add","path":"/stringData","value":{"password":"chaperone:masked"}}]`,
    }).map(([type, body]) => ({
      name: `writing the mask back into a Secret: ${type}`,
      bytes: `PATCH /api/v1/namespaces/${ns}/secrets/db HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: ${type.split(',')[0] ?? ''}\r\nContent-Length: ${String(body.length)}\r\nConnection: close\r\n\r\n${body}`,
      status: 403,
      body: /masked/,
    })),
    {
      // CBOR (a media type the API server may accept) lets a string come in chunks: "chaperone:" + "masked".
      name: 'writing the mask back into a Secret: CBOR with a chunked string',
      bytes: (() => {
        const text = (v: string) => Buffer.concat([Buffer.from([0x60 + v.length]), Buffer.from(v)]);
        const body = Buffer.concat([
          Buffer.from([0xa1]),
          text('stringData'),
          Buffer.from([0xa1]),
          text('password'),
          Buffer.from([0x7f]),
          text('chaperone:'),
          text('masked'),
          Buffer.from([0xff]),
        ]).toString('latin1');
        return `PATCH /api/v1/namespaces/${ns}/secrets/db HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nContent-Type: application/merge-patch+cbor\r\nContent-Length: ${String(body.length)}\r\nConnection: close\r\n\r\n${body}`;
      })(),
      status: 403,
      body: /masked/,
    },
    // Other protocols on the HTTP/1.1 listener.
    {
      name: 'HTTP/2 prior-knowledge preface',
      bytes: 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00',
      status: 400,
    },
    {
      name: 'h2c upgrade of a Secret get',
      bytes: `GET /api/v1/namespaces/${ns}/secrets/db HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`,
      status: 400,
    },
    {
      name: 'two Authorization headers, the second a token of nobody',
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nAuthorization: Bearer x.y.z\r\nConnection: close\r\n\r\n`,
      status: 400,
    },
    // One signed token, other texts: jose alone would accept them, each with a token hash nobody issued.
    ...Object.entries({
      padded: `${f.agentToken}==`,
      'another last character of the signature': (() => {
        const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
        const last = f.agentToken.slice(-1);
        return `${f.agentToken.slice(0, -1)}${alphabet[alphabet.indexOf(last) + 1] ?? 'A'}`;
      })(),
      'alg None': `eyJhbGciOiJOb25lIn0.${f.agentToken.split('.')[1] ?? ''}.`,
    }).map(([spelling, token]) => ({
      name: `a bearer token in another spelling: ${spelling}`,
      bytes: `GET /api/v1/namespaces/${ns}/configmaps HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
      status: 401,
    })),
  ];

  for (const c of cases) {
    await t.test(c.name, async () => {
      const res = await exchange(f.sidecar.port, ca, c.bytes);
      assert.equal(res.status, c.status, `${res.head}\n${res.body}`);
      if (c.body !== undefined) assert.match(res.body, c.body);
      if (c.status !== 401) assert.match(res.body, /"kind":"Status"/);
    });
  }

  await t.test('the API server itself reads the other spellings of the mask as the mask', async () => {
    // Why they are refused: written by the admin to a Secret of its own, they come back as the mask.
    await f.admin(['create', 'secret', 'generic', 'spellings', '--from-literal=p=x', '-n', ns]);
    for (const value of [`${maskedData.slice(0, 12)}\n${maskedData.slice(12)}`, `${maskedData.slice(0, -3)}B==`]) {
      await f.admin([
        'patch',
        'secret',
        'spellings',
        '-n',
        ns,
        '--type=merge',
        '-p',
        JSON.stringify({ data: { p: value } }),
      ]);
      assert.equal(await f.admin(['get', 'secret', 'spellings', '-n', ns, '-o', 'jsonpath={.data.p}']), maskedData);
    }
  });

  await t.test('nothing smuggled reached the API server', async () => {
    for (const [namespace, name] of [
      ['kube-system', 'moved'],
      [ns, 'moved'],
      [ns, 'listed'],
    ] as const) {
      const found = await f.admin(['get', 'configmap,secret', '-n', namespace, '--ignore-not-found', '-o', 'name']);
      assert.ok(!found.split('\n').some((l) => l.endsWith(`/${name}`)), `${namespace}/${name}: ${found}`);
    }
    assert.match(
      await f.admin(['get', 'configmap', 'victim', 'keep-me', '-n', ns, '-o', 'name']),
      /victim[\s\S]*keep-me/,
    );
    assert.equal(await f.admin(['get', 'secret', 'db', '-n', ns, '-o', 'jsonpath={.data.password}']), plain);
    // The parser-error tails: nothing created, nothing deleted.
    const configMaps = (await f.admin(['get', 'configmap', '-n', ns, '-o', 'name'])).split('\n');
    for (const name of ['tail-length', 'tail-cut', 'tail-closed'])
      assert.ok(!configMaps.includes(`configmap/${name}`), configMaps.join(' '));
    assert.ok(configMaps.includes('configmap/tail-victim'), configMaps.join(' '));
  });

  const secretReads: readonly { name: string; path: string; headers: string }[] = [
    {
      name: 'protobuf accepted',
      path: `/api/v1/namespaces/${ns}/secrets/db`,
      headers: 'Accept: application/vnd.kubernetes.protobuf\r\n',
    },
    { name: 'gzip accepted', path: `/api/v1/namespaces/${ns}/secrets`, headers: 'Accept-Encoding: gzip\r\n' },
    {
      name: 'Table with whole objects',
      path: `/api/v1/namespaces/${ns}/secrets?includeObject=Object`,
      headers: 'Accept: application/json;as=Table;v=v1;g=meta.k8s.io\r\n',
    },
    {
      name: 'list pinned by field selector',
      path: `/api/v1/namespaces/${ns}/secrets?fieldSelector=metadata.name%3Ddb`,
      headers: '',
    },
    { name: 'YAML accepted', path: `/api/v1/namespaces/${ns}/secrets/db`, headers: 'Accept: application/yaml\r\n' },
    { name: 'watch=1', path: `/api/v1/namespaces/${ns}/secrets?watch=1&timeoutSeconds=1`, headers: '' },
    { name: 'the legacy /watch/ path', path: `/api/v1/watch/namespaces/${ns}/secrets?timeoutSeconds=1`, headers: '' },
    {
      name: 'a watch event stream asked for as protobuf',
      path: `/api/v1/namespaces/${ns}/secrets?watch=true&timeoutSeconds=1`,
      headers: 'Accept: application/vnd.kubernetes.protobuf;stream=watch\r\n',
    },
  ];
  for (const r of secretReads) {
    await t.test(`Secret values stay masked: ${r.name}`, async () => {
      const res = await exchange(
        f.sidecar.port,
        ca,
        `GET ${r.path} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${r.headers}Connection: close\r\n\r\n`,
      );
      assert.equal(res.status, 200, res.head);
      assert.ok(!res.body.includes(plain) && !res.body.includes('hunter2-secret'), res.body);
      assert.ok(res.body.includes(Buffer.from('chaperone:masked').toString('base64')), res.body);
    });
  }

  // An Upgrade header on a request the API server does not upgrade (a get) or upgrades to a WebSocket
  // stream of its own (a watch): the answer must not pass by the masking unread.
  const ws = `Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${Buffer.from('chaperone-corpus!').toString('base64')}\r\n`;
  for (const [name, path] of [
    ['a Secret get with a WebSocket upgrade', `/api/v1/namespaces/${ns}/secrets/db`],
    ['a Secret watch over WebSocket', `/api/v1/namespaces/${ns}/secrets?watch=1&timeoutSeconds=1`],
    ['a Secret list with a WebSocket upgrade', `/api/v1/namespaces/${ns}/secrets`],
    ['a ConfigMap watch over WebSocket', `/api/v1/namespaces/${ns}/configmaps?watch=1&timeoutSeconds=1`],
  ] as const) {
    await t.test(`refused: ${name}`, async () => {
      const res = await exchange(f.sidecar.port, ca, `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${ws}\r\n`);
      assert.equal(res.status, 400, `${res.head}\n${res.body}`);
      assert.match(res.body, /upgrade/);
      assert.ok(!res.body.includes(plain) && !res.body.includes('hunter2-secret'), res.body);
    });
  }

  await t.test('a non-resource URL allowed by a nonResourceURLs rule is forwarded: /livez/ping', async () => {
    const res = await exchange(
      f.sidecar.port,
      ca,
      `GET /livez/ping HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
    );
    // The API server answers (its own 200, or its own 403 for the sidecar's credential), not the sidecar.
    assert.ok(!res.body.includes('chaperone: '), `${res.head}\n${res.body}`);
    assert.match(res.head, /X-Kubernetes-Pf-Flowschema-Uid/i, 'answered by the API server');
    const entries = await f.sidecar.settledRecords();
    const decision = entries.find(
      (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes('/livez/ping'),
    );
    assert.equal(decision?.record.decision?.result, 'allow');
    assert.equal(decision.record.decision.rule, 'pings');
  });

  await t.test('discovery no rule names stays open: /apis', async () => {
    const res = await exchange(
      f.sidecar.port,
      ca,
      `GET /apis HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(res.status, 200, res.head);
    assert.match(res.body, /"kind":"APIGroupList"/);
  });

  await t.test('every refused request after authentication is a denied decision with its outcome', async () => {
    const entries = await f.sidecar.settledRecords();
    const denied = entries.filter((e) => e.record.type === 'command.decision' && e.record.decision?.result === 'deny');
    const rules = new Set(denied.map((e) => e.record.decision?.rule));
    for (const rule of [
      'unclassifiable',
      'impersonation',
      'no-version',
      'default',
      'request-too-large',
      'masked-value-write',
      'forwarding-header',
      'malformed-connection',
    ]) {
      assert.ok(rules.has(rule), `a ${rule} denial is recorded (${[...rules].join(', ')})`);
    }
    for (const d of denied) {
      const outcome = entries.find(
        (e) =>
          e.session.sessionId === d.session.sessionId &&
          carriesCommandOutcome(e.record) &&
          e.record.command?.id === d.record.command?.id,
      );
      assert.equal(outcome?.record.outcome?.status, 'denied');
    }
    assert.ok(entries.some((e) => e.record.type === 'auth.failure'));
    // SPDY: the policy allowed the attach, the engine refused the stream it cannot inspect.
    const spdy = entries.find(
      (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes('/pods/p/attach'),
    );
    assert.ok(spdy);
    const spdyOutcome = entries.find(
      (e) =>
        e.session.sessionId === spdy.session.sessionId &&
        carriesCommandOutcome(e.record) &&
        e.record.command?.id === spdy.record.command?.id,
    );
    assert.deepEqual([spdyOutcome?.record.outcome?.status, spdyOutcome?.record.outcome?.code], ['denied', '400']);
  });
});
