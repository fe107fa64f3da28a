// Dry-run corpus: requests whose record could call a dry run what the API server ran for real, or the reverse.
// Sent as raw bytes over TLS to the real sidecar in front of the real API server. For a DELETE the API server
// reads its options from the body in JSON, YAML or protobuf (the query only when the body is empty); every
// case deletes a ConfigMap of its own, and the API server's state afterwards (does the ConfigMap still exist?)
// is compared with the record (`(dry run)` in its text): a record that says dry run of a ConfigMap that is
// gone, or a delete of one that survived, is a wrong record. A TokenRequest ignores dryRun (it mints the
// token), a read has no dry run, and neither may be recorded as one.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request as httpsRequest, type RequestOptions } from 'node:https';
import { test } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { kubeConfig } from '../harness/kube.ts';
import { RESOURCE, startKubeFixture } from './kube-fixture.ts';
import { exchange } from './raw-tls.ts';

function policy(namespace: string): Record<string, AccessPolicySpec> {
  return {
    kube: {
      resources: { names: [RESOURCE] },
      rules: [
        {
          name: 'configmaps',
          decision: 'allow',
          match: { kubernetes: { resources: ['configmaps'], namespaces: [namespace] } },
        },
        {
          name: 'tokens',
          decision: 'allow',
          match: {
            kubernetes: {
              verbs: ['create'],
              resources: ['serviceaccounts'],
              subresources: ['token'],
              namespaces: [namespace],
            },
          },
        },
      ],
      defaultDecision: 'deny',
    },
  };
}

// Protobuf as the API server reads it (k8s.io/apimachinery runtime/generated.proto, meta/v1/generated.proto),
// written by hand: a varint, a length-delimited field, the `k8s\0` envelope around runtime.Unknown.
function varint(n: number): Buffer {
  const bytes: number[] = [];
  let v = n;
  while (v >= 0x80) {
    bytes.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  bytes.push(v);
  return Buffer.from(bytes);
}
function lengthDelimited(field: number, payload: Buffer | string): Buffer {
  const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  return Buffer.concat([varint((field << 3) | 2), varint(bytes.length), bytes]);
}
/** DeleteOptions: dryRun is field 5 (repeated string), propagationPolicy 4, gracePeriodSeconds 1 (varint). */
function protobufDeleteOptions(options: { dryRun?: string[]; extra?: Buffer } = {}): Buffer {
  const fields = [Buffer.concat([varint((1 << 3) | 0), varint(0)]), lengthDelimited(4, 'Background')];
  for (const value of options.dryRun ?? []) fields.push(lengthDelimited(5, value));
  if (options.extra !== undefined) fields.push(options.extra);
  return Buffer.concat(fields);
}
/** The envelope: magic `k8s\0`, then Unknown {1: TypeMeta {1: apiVersion, 2: kind}, 2: raw}. */
function protobufEnvelope(raw: Buffer, apiVersion = 'v1'): Buffer {
  const typeMeta = Buffer.concat([lengthDelimited(1, apiVersion), lengthDelimited(2, 'DeleteOptions')]);
  return Buffer.concat([Buffer.from('k8s\0', 'latin1'), lengthDelimited(1, typeMeta), lengthDelimited(2, raw)]);
}
const PROTOBUF = 'application/vnd.kubernetes.protobuf';

/** A request sent straight to the API server as the cluster admin: status and body. */
async function asAdmin(
  method: string,
  path: string,
  body: Buffer | string,
  contentType: string,
): Promise<{ status: number; body: string }> {
  const kc = kubeConfig();
  const server = new URL(kc.getCurrentCluster()?.server ?? '');
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const options: RequestOptions = {
    method,
    hostname: server.hostname,
    port: server.port,
    path,
    headers: { 'content-type': contentType, 'content-length': String(bytes.length) },
  };
  await kc.applyToHTTPSOptions(options);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.once('error', reject);
    req.end(bytes);
  });
}

/** What the API server does with the case's DELETE (and so what the record must say). */
type Effect = 'dry-run' | 'deleted' | 'refused' | 'api-error';

interface DeleteCase {
  readonly name: string;
  readonly query?: string;
  /** Header lines (each ending in CRLF) besides Host, Authorization, Content-Length and Connection. */
  readonly headers?: string;
  readonly body?: Buffer | string;
  readonly effect: Effect;
  /** The sidecar's answer when it refuses (`effect: 'refused'`). */
  readonly status?: number;
}

/** The header the API server's priority and fairness filter sets on every answer it gives. */
const ANSWERED_BY_API_SERVER = /^X-Kubernetes-Pf-Flowschema-Uid:/im;

test('dry-run corpus against the Kubernetes engine', async (t) => {
  const f = await startKubeFixture(t, policy);
  const ns = f.namespace;
  const ca = readFileSync(f.servingCertFile);
  const host = `127.0.0.1:${String(f.sidecar.port)}`;
  const auth = `Authorization: Bearer ${f.agentToken}`;
  const request = (method: string, target: string, headers = '', body?: string | Buffer): Buffer => {
    const head = `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n${headers}`;
    const bytes = body === undefined ? undefined : typeof body === 'string' ? Buffer.from(body, 'latin1') : body;
    return Buffer.concat([
      Buffer.from(
        `${head}${bytes === undefined ? '' : `Content-Length: ${String(bytes.length)}\r\n`}Connection: close\r\n\r\n`,
        'latin1',
      ),
      bytes ?? Buffer.alloc(0),
    ]);
  };
  const json = 'Content-Type: application/json\r\n';
  const pb = `Content-Type: ${PROTOBUF}\r\n`;
  const options = (extra: Record<string, unknown> = {}) =>
    JSON.stringify({ kind: 'DeleteOptions', apiVersion: 'v1', ...extra });

  const cases: readonly DeleteCase[] = [
    {
      name: 'protobuf DeleteOptions without dryRun',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions()),
      effect: 'deleted',
    },
    {
      name: 'protobuf DeleteOptions with dryRun [All]',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions({ dryRun: ['All'] })),
      effect: 'dry-run',
    },
    {
      name: 'protobuf DeleteOptions with dryRun [All] under apiVersion meta.k8s.io/v1',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions({ dryRun: ['All'] }), 'meta.k8s.io/v1'),
      effect: 'dry-run',
    },
    {
      name: 'protobuf DeleteOptions with dryRun given twice (the field repeats: [All, All])',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions({ dryRun: ['All', 'All'] })),
      effect: 'dry-run',
    },
    {
      name: 'protobuf DeleteOptions with dryRun [All, ""] (the API server refuses it)',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions({ dryRun: ['All', ''] })),
      effect: 'refused',
      status: 400,
    },
    {
      name: 'protobuf DeleteOptions with dryRun [all] (lower case: the API server refuses it)',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions({ dryRun: ['all'] })),
      effect: 'refused',
      status: 400,
    },
    {
      name: 'protobuf DeleteOptions with an unknown field after dryRun',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions({ dryRun: ['All'], extra: lengthDelimited(99, 'x') })),
      effect: 'dry-run',
    },
    {
      name: 'protobuf DeleteOptions cut inside the dryRun field',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions({ dryRun: ['All'] })).subarray(0, -2),
      effect: 'refused',
      status: 400,
    },
    {
      name: 'protobuf DeleteOptions with dryRun=All in the query (the body wins: a real delete)',
      query: 'dryRun=All',
      headers: pb,
      body: protobufEnvelope(protobufDeleteOptions()),
      effect: 'refused',
      status: 400,
    },
    {
      name: 'a protobuf body without the k8s envelope',
      headers: pb,
      body: protobufDeleteOptions({ dryRun: ['All'] }),
      effect: 'refused',
      status: 400,
    },
    {
      name: 'JSON dryRun [All] and DRYRUN [] (the API server matches field names exactly)',
      headers: json,
      body: '{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"],"DRYRUN":[]}',
      effect: 'dry-run',
    },
    {
      name: 'JSON DryRun [All] (not the field name: a real delete)',
      headers: json,
      body: '{"kind":"DeleteOptions","apiVersion":"v1","DryRun":["All"]}',
      effect: 'deleted',
    },
    {
      name: 'JSON dryRun twice, the last empty (the last wins: a real delete)',
      headers: json,
      body: '{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"],"dryRun":[]}',
      effect: 'deleted',
    },
    {
      name: 'JSON dryRun twice, the last [All]',
      headers: json,
      body: '{"kind":"DeleteOptions","apiVersion":"v1","dryRun":[],"dryRun":["All"]}',
      effect: 'dry-run',
    },
    {
      name: 'JSON dryRun with an escaped key (dry\\u0052un)',
      headers: json,
      body: '{"kind":"DeleteOptions","apiVersion":"v1","dry\\u0052un":["All"]}',
      effect: 'dry-run',
    },
    {
      name: 'JSON dryRun under Content-Type: Application/JSON; charset=utf-8',
      headers: 'Content-Type: Application/JSON; charset=utf-8\r\n',
      body: options({ dryRun: ['All'] }),
      effect: 'dry-run',
    },
    {
      name: 'JSON DeleteOptions without a Content-Type (the API server reads JSON)',
      body: options({ dryRun: ['All'] }),
      effect: 'dry-run',
    },
    {
      name: 'YAML DeleteOptions with dryRun [All]',
      headers: 'Content-Type: application/yaml\r\n',
      body: 'kind: DeleteOptions\napiVersion: v1\ndryRun: [All]\n',
      effect: 'dry-run',
    },
    {
      name: 'a JSON dry run sent as application/json-patch+json (no DeleteOptions type the API server reads)',
      headers: 'Content-Type: application/json-patch+json\r\n',
      body: options({ dryRun: ['All'] }),
      effect: 'refused',
      status: 415,
    },
    {
      name: 'a CBOR body (the engine cannot read it for dryRun)',
      headers: 'Content-Type: application/cbor\r\n',
      body: Buffer.from([0xa1, 0x66, ...Buffer.from('dryRun'), 0x81, 0x63, ...Buffer.from('All')]),
      effect: 'refused',
      status: 415,
    },
    {
      name: 'two Content-Type headers, JSON and protobuf (refused with the framing checks)',
      headers: `${json}${pb}`,
      body: options({ dryRun: ['All'] }),
      effect: 'refused',
      status: 400,
    },
    {
      name: 'dryRun=All given twice in the query of a body-less DELETE',
      query: 'dryRun=All&dryRun=All',
      effect: 'dry-run',
    },
    { name: 'dryRun=All with an empty body (Content-Length: 0)', query: 'dryRun=All', body: '', effect: 'dry-run' },
    { name: 'DryRun=All (not the parameter name: a real delete)', query: 'DryRun=All', effect: 'deleted' },
    { name: 'dry%52un=%41ll (escapes in the name and the value)', query: 'dry%52un=%41ll', effect: 'dry-run' },
    {
      name: 'dryRun=All and an empty dryRun (the API server refuses it)',
      query: 'dryRun=All&dryRun=',
      effect: 'refused',
      status: 400,
    },
    { name: 'dryRun=all (the API server refuses it)', query: 'dryRun=all', effect: 'refused', status: 400 },
  ];

  let index = 0;
  for (const c of cases) {
    const name = `dry-${String(index++)}`;
    await t.test(c.name, async () => {
      await f.admin(['create', 'configmap', name, '-n', ns]);
      const target = `/api/v1/namespaces/${ns}/configmaps/${name}${c.query === undefined ? '' : `?${c.query}`}`;
      const res = await exchange(f.sidecar.port, ca, request('DELETE', target, c.headers ?? '', c.body));
      const survived = (await f.admin(['get', 'configmap', name, '-n', ns, '--ignore-not-found', '-o', 'name'])) !== '';
      const entries = await f.sidecar.settledRecords();
      const decision = entries.find(
        (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes(`/configmaps/${name}`),
      );
      const recordedDryRun = / \(dry run\)$/.test(decision?.record.command?.text ?? '');
      const what = `${res.head}\n${res.body}\nrecorded: ${decision?.record.command?.text ?? '(none)'}`;
      if (c.effect === 'refused') {
        assert.equal(res.status, c.status, what);
        assert.doesNotMatch(res.head, ANSWERED_BY_API_SERVER, `the API server saw it:\n${what}`);
        assert.match(res.body, /"kind":"Status"/);
        assert.ok(survived, 'nothing was deleted');
        return;
      }
      assert.match(res.head, ANSWERED_BY_API_SERVER, what);
      assert.equal(res.status, 200, what);
      assert.equal(survived, c.effect === 'dry-run', `the API server ${survived ? 'kept' : 'deleted'} it`);
      assert.equal(recordedDryRun, survived, `the record says ${recordedDryRun ? 'dry run' : 'delete'}:\n${what}`);
    });
  }

  await t.test('a read with dryRun=All is recorded as the read it is', async () => {
    await f.admin(['create', 'configmap', 'read-dry', '--from-literal=k=v', '-n', ns]);
    const res = await exchange(
      f.sidecar.port,
      ca,
      request('GET', `/api/v1/namespaces/${ns}/configmaps/read-dry?dryRun=All`),
    );
    assert.equal(res.status, 200, res.body);
    assert.match(res.body, /"k":"v"/, 'the API server returned the data');
    const entries = await f.sidecar.settledRecords();
    const decision = entries.find(
      (e) => e.record.type === 'command.decision' && (e.record.command?.text ?? '').includes('/configmaps/read-dry'),
    );
    assert.doesNotMatch(decision?.record.command?.text ?? '', /dry run/);
  });

  const tokenRequest = JSON.stringify({
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenRequest',
    spec: { expirationSeconds: 600 },
  });
  await f.admin(['create', 'serviceaccount', 'builder', '-n', ns]);

  await t.test('why: the API server mints a real token for a TokenRequest with dryRun=All', async () => {
    const res = await asAdmin(
      'POST',
      `/api/v1/namespaces/${ns}/serviceaccounts/builder/token?dryRun=All`,
      tokenRequest,
      'application/json',
    );
    assert.equal(res.status, 201, res.body);
    const token = (JSON.parse(res.body) as { status?: { token?: string } }).status?.token ?? '';
    assert.match(token, /^ey/, 'a signed token');
  });

  await t.test('a TokenRequest with dryRun=All is refused, never recorded as a dry run', async () => {
    const res = await exchange(
      f.sidecar.port,
      ca,
      request('POST', `/api/v1/namespaces/${ns}/serviceaccounts/builder/token?dryRun=All`, json, tokenRequest),
    );
    assert.equal(res.status, 400, `${res.head}\n${res.body}`);
    assert.doesNotMatch(res.head, ANSWERED_BY_API_SERVER, 'the API server saw it');
    assert.doesNotMatch(res.body, /"token"/);
    assert.match(res.body, /dryRun/);
  });

  await t.test('a TokenRequest without dryRun is forwarded (the rule allows it)', async () => {
    const res = await exchange(
      f.sidecar.port,
      ca,
      request('POST', `/api/v1/namespaces/${ns}/serviceaccounts/builder/token`, json, tokenRequest),
    );
    assert.equal(res.status, 201, `${res.head}\n${res.body}`);
  });
});
