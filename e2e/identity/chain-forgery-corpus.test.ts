// Forged delegation chains against the real token exchange (the operator on the shared API server), a real
// sidecar's Kubernetes engine in front of the real kube-apiserver (driven with kubectl) and a real sidecar's
// HTTP engine: hops an agent did not get from the exchange (self-signed, copied from another chain,
// reordered, spliced past the rule's depth, nested by hand), identities swapped or re-spelled, tokens
// carried to another resource or engine, header and claim tricks (crit, jku, x5u, x5c, jwk, hostile kids,
// duplicate members, 1e309 and -0 dates). Each case names what the exchange or the sidecar must answer;
// at the end the API server holds exactly the ConfigMaps of the accepted requests.
// Before the fix, six got through: exp 1e309 and exp past year 275760 made the exchange answer 500 (the
// record could not write the expiry), a token with exp 1e309 never expired at the sidecar, and a token that
// names a claim or header parameter twice was accepted by both (the last one counted).
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { exportJWK } from 'jose';
import type { AccessPolicySpec } from '@chaperone/api';
import { controlPlaneEnv, testDir } from '../harness/env.ts';
import { kubectl } from '../harness/kube.ts';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { spawnSidecar } from '../harness/sidecar-process.ts';
import { raw } from '../http/raw-request.ts';
import { runCli } from '../audit/run-cli.ts';
import { kubeconfigFor, runKubectl } from '../kubernetes/kube-fixture.ts';
import { exchangeForm, startExchangeFixture } from './exchange-fixture.ts';
import { ciDelegation, claimsOf, createIdentityWorld } from './identity-fixture.ts';

const b64 = (text: string) => Buffer.from(text).toString('base64url');
const json = (value: unknown) => JSON.stringify(value);
const decode = (part: string | undefined) =>
  JSON.parse(Buffer.from(part ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;

/** A token over `header` and `payload` (JSON text, byte for byte) signed ES256 with a key the attacker made. */
function attackerSigned(header: string, payload: string): string {
  const { privateKey } = attacker;
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${cryptoSign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}
const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });

/** `token` with its payload replaced, the original signature kept. */
function withPayload(token: string, payload: Record<string, unknown>): string {
  const [h, , s] = token.split('.');
  return `${h ?? ''}.${b64(json(payload))}.${s ?? ''}`;
}

test('chain forgery corpus: hops, splices, swaps and header tricks against the exchange, the Kubernetes and the HTTP engine', async (t) => {
  const ex = await startExchangeFixture(t);
  const world = await createIdentityWorld(t, ex);
  await ex.applyDelegationPolicy('ci', ciDelegation(world));
  const ns = world.namespace;
  const dir = testDir(t);
  mkdirSync(dir, { recursive: true });
  const cp = controlPlaneEnv();

  // The Kubernetes engine's own API credential: a service account allowed to manage the namespace.
  await kubectl(['create', 'serviceaccount', 'chaperone-sidecar', '-n', ns]);
  await kubectl([
    'create',
    'rolebinding',
    'chaperone-sidecar',
    '--clusterrole=edit',
    `--serviceaccount=${ns}:chaperone-sidecar`,
    '-n',
    ns,
  ]);
  writeFileSync(
    join(dir, 'upstream-token'),
    (await kubectl(['create', 'token', 'chaperone-sidecar', '-n', ns, '--duration=1h'])).trim(),
  );
  const allow = (name: string): Record<string, AccessPolicySpec> => ({
    all: {
      resources: { names: [name] },
      rules: [{ name: 'all', decision: 'allow', match: {} }],
      defaultDecision: 'deny',
    },
  });
  const servingCertFile = join(dir, 'kube-serving.crt');
  const kubeDir = join(dir, 'kube');
  mkdirSync(kubeDir, { recursive: true });
  const kube = await spawnSidecar({
    dir: kubeDir,
    policies: allow('kube'),
    policyNamespace: ns,
    listeners: [
      {
        name: 'kube',
        type: 'kubernetes',
        listen: '127.0.0.1:0',
        tls: { selfSignedCertFile: servingCertFile },
        agentKubeconfig: { path: join(kubeDir, 'agent.kubeconfig'), tokenFile: join(kubeDir, 'agent-token') },
        upstream: {
          url: cp.server,
          tls: { mode: 'verify-full', caFile: cp.caFile },
          tokenFile: join(dir, 'upstream-token'),
        },
        resource: { namespace: ns, labels: {} },
        auditFailureMode: 'FailClosed',
      },
    ],
    extraIssuers: [ex.sidecarIssuer()],
  });
  t.after(() => kube.stop());
  const received: string[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    received.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
  const httpDir = join(dir, 'http');
  mkdirSync(httpDir, { recursive: true });
  writeFileSync(join(httpDir, 'credential'), 'chain-corpus-upstream-key');
  const http = await spawnSidecar({
    dir: httpDir,
    policies: allow('api'),
    policyNamespace: ns,
    listeners: [
      {
        name: 'api',
        type: 'http',
        listen: '127.0.0.1:0',
        upstream: {
          url: `http://127.0.0.1:${String((upstream.address() as { port: number }).port)}`,
          tls: { mode: 'disable' },
          credential: { valueFile: join(httpDir, 'credential') },
        },
        resource: { namespace: ns, labels: {} },
        auditFailureMode: 'FailClosed',
      },
    ],
    extraIssuers: [ex.sidecarIssuer()],
  });
  t.after(() => http.stop());

  /** POST a ConfigMap named `name` through the Kubernetes engine as `token`: status and parsed body. */
  const createThroughKube = (name: string, token: string) =>
    new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
      const body = json({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name } });
      const req = request(
        {
          host: '127.0.0.1',
          port: kube.port,
          method: 'POST',
          path: `/api/v1/namespaces/${ns}/configmaps`,
          ca: readServingCert(),
          servername: 'localhost',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: Record<string, unknown>;
            try {
              parsed = JSON.parse(text) as Record<string, unknown>;
            } catch {
              parsed = { text };
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  const readServingCert = () => readFileSync(servingCertFile, 'utf8');
  const throughHttp = async (path: string, token: string) =>
    Number(
      /^HTTP\/1\.1 (\d{3})/.exec(
        await raw(
          http.port,
          `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
        ),
      )?.[1] ?? 0,
    );

  // The genuine chain, minted as a CI job would: kubectl chaperone token exchange, tokens in files.
  const file = (name: string, token: string) => {
    const path = join(dir, name);
    writeFileSync(path, token);
    return path;
  };
  const agentToken = await world.agents.sign({ sub: 'agent:report-writer' });
  const minted = await runCli([
    'token',
    'exchange',
    '--url',
    ex.issuer,
    '--cacert',
    ex.caFile,
    '--subject-token-file',
    file('ci-token', await world.ciToken()),
    '--actor-token-file',
    file('agent-token', agentToken),
    '--resource',
    `${ns}/kube`,
    '--resource',
    `${ns}/api`,
    '--scope',
    'db:read',
  ]);
  assert.equal(minted.code, 0, minted.stderr);
  const t1 = minted.stdout.trim();
  const script = await world.agents.sign({ sub: 'script:etl' });
  const t2 = await ex.exchange(t1, { actor: script });
  // A second chain of the same CI job, through another agent, narrowed to the HTTP resource only.
  const other = await world.agents.sign({ sub: 'agent:other' });
  const t1b = await ex.exchange(await world.ciToken(), {
    actor: other,
    resources: [world.resource('api')],
    scope: 'db:read',
  });
  // A chain as deep as the rules allow: agent → agent.
  const t2a = await ex.exchange(t1, { actor: await world.agents.sign({ sub: 'agent:helper' }) });
  const exchangeKid = String(decode(t1.split('.')[0]).kid);
  const attackerJwk = await exportJWK(attacker.publicKey);
  const now = Math.floor(Date.now() / 1000);
  /** Claims of an agent platform token as JSON text; `exp` given as it is to be spelled. */
  const oidcClaims = (extra: string, exp = String(now + 600)) =>
    `{"iss":${json(world.agents.issuer)},"aud":"chaperone","iat":${String(now)},"exp":${exp}${extra}}`;
  const oidcHeader = '{"alg":"ES256","kid":"{kid}","typ":"JWT"}';

  type ExchangeCase = { form: Record<string, string | string[]>; status: number; reason?: string; before?: string };
  const delegate = (subject: string, actor: string) => exchangeForm(subject, { actor });
  const exchangeCases: Record<string, ExchangeCase> = {
    'splice past maxDepth: a depth-2 agent chain extended by a third agent': {
      form: delegate(t2a, await world.agents.sign({ sub: 'agent:third' })),
      status: 400,
      reason: 'depth-exceeded',
    },
    'splice: another chain presented as the actor token': {
      form: delegate(t1, t1b),
      status: 400,
      reason: 'actor-is-delegated',
    },
    'self-signed hop: T1 with a script hop added, signed under the exchange kid by another key': {
      form: exchangeForm(
        attackerSigned(
          json({ alg: 'ES256', kid: exchangeKid, typ: 'JWT' }),
          json({ ...claimsOf(t1), act: { sub: 'script:etl', iss: world.agents.issuer, act: claimsOf(t1).act } }),
        ),
      ),
      status: 400,
      reason: 'signature',
    },
    'self-signed hop under its own kid': {
      form: exchangeForm(
        attackerSigned(
          json({ alg: 'ES256', kid: 'attacker', typ: 'JWT' }),
          json({ ...claimsOf(t1), act: { sub: 'script:etl', iss: world.agents.issuer, act: claimsOf(t1).act } }),
        ),
      ),
      status: 400,
      reason: 'unknown-key',
    },
    "a hop copied from another chain (T2's act in T1b, T1b's signature)": {
      form: exchangeForm(withPayload(t1b, { ...claimsOf(t1b), act: claimsOf(t2).act })),
      status: 400,
      reason: 'signature',
    },
    'hops reordered (the agent outermost again, the script inside)': {
      form: exchangeForm(
        withPayload(t2, {
          ...claimsOf(t2),
          act: {
            ...(claimsOf(t1).act as object),
            act: { ...(claimsOf(t2).act as Record<string, unknown>), act: undefined },
          },
        }),
      ),
      status: 400,
      reason: 'signature',
    },
    'act nested by hand, its name escaped ("\\u0061ct"), in an agent platform token': {
      form: exchangeForm(
        world.agents.signRaw(
          oidcHeader,
          oidcClaims(`,"sub":"agent:report-writer","\\u0061ct":{"sub":"system:serviceaccount:${ns}:ci-runner"}`),
        ),
      ),
      status: 400,
      reason: 'foreign-chain',
    },
    'azp/sub swap: the agent platform names the CI account as sub, the agent as azp': {
      form: delegate(
        await world.agents.sign({ sub: `system:serviceaccount:${ns}:ci-runner`, azp: 'agent:report-writer' }),
        script,
      ),
      status: 400,
      reason: 'claims',
      before: '400 no-delegation-rule: refused already, the platform gave it no kind',
    },
    'azp/sub swap, only narrowed (no actor, so no rule is asked)': {
      form: exchangeForm(
        await world.agents.sign({ sub: `system:serviceaccount:${ns}:ci-runner`, azp: 'agent:report-writer' }),
        { resources: [world.resource('kube')] },
      ),
      status: 400,
      reason: 'claims',
      before: "200: a child whose sub is the CI account; sidecars gave it the account's groups",
    },
    'a lookalike actor in fullwidth letters (NFKC would make it agent:report-writer)': {
      form: delegate(await world.ciToken(), await world.agents.sign({ sub: '\uff41gent:report-writer' })),
      status: 400,
      reason: 'no-delegation-rule',
    },
    'exp 1e309 (Infinity to a JSON parser)': {
      form: exchangeForm(world.agents.signRaw(oidcHeader, oidcClaims(',"sub":"agent:report-writer"', '1e309'))),
      status: 400,
      reason: 'claims',
      before: '500 internal: the record could not write an infinite expiry',
    },
    'exp past what a date holds (year 300000)': {
      form: exchangeForm(world.agents.signRaw(oidcHeader, oidcClaims(',"sub":"agent:report-writer"', '9.4e12'))),
      status: 400,
      reason: 'claims',
      before: '500 internal',
    },
    'nbf 1e309': {
      form: exchangeForm(world.agents.signRaw(oidcHeader, oidcClaims(',"sub":"agent:report-writer","nbf":1e309'))),
      status: 400,
      reason: 'claims',
      before: '400 not-yet-valid: refused already',
    },
    'exp -0': {
      form: exchangeForm(world.agents.signRaw(oidcHeader, oidcClaims(',"sub":"agent:report-writer"', '-0'))),
      status: 400,
      reason: 'expired',
    },
    'a duplicate sub in the actor token (first script:etl, last agent:report-writer)': {
      form: exchangeForm(await world.ciToken(), {
        actor: world.agents.signRaw(
          oidcHeader,
          `{"sub":"script:etl",${oidcClaims(',"sub":"agent:report-writer"').slice(1)}`,
        ),
        resources: [world.resource('api')],
        scope: 'db:read',
      }),
      status: 400,
      reason: 'malformed',
      before: '200: the last sub counted, an agent delegated to',
    },
    'a duplicate alg in the header (none first, ES256 last)': {
      form: exchangeForm(
        world.agents.signRaw('{"alg":"none","kid":"{kid}","alg":"ES256"}', oidcClaims(',"sub":"agent:report-writer"')),
      ),
      status: 400,
      reason: 'malformed',
      before: '200',
    },
    'crit naming an extension nobody understands, signed by the real key': {
      form: exchangeForm(
        world.agents.signRaw(
          '{"alg":"ES256","kid":"{kid}","crit":["x-chaperone"],"x-chaperone":1}',
          oidcClaims(',"sub":"agent:report-writer"'),
        ),
      ),
      status: 400,
      reason: 'malformed',
      before: '400 algorithm (jose does not support the extension): refused, for another reason than the sidecar gives',
    },
    'x5u naming the attacker, signed by the attacker': {
      form: exchangeForm(
        attackerSigned(
          json({ alg: 'ES256', x5u: 'https://127.0.0.1:1/cert.pem' }),
          oidcClaims(',"sub":"agent:report-writer"'),
        ),
      ),
      status: 400,
      reason: 'signature',
    },
    'x5c carrying a certificate chain of the attacker, signed by the attacker': {
      form: exchangeForm(
        attackerSigned(
          json({ alg: 'ES256', kid: 'x', x5c: [Buffer.alloc(64, 1).toString('base64')] }),
          oidcClaims(',"sub":"agent:report-writer"'),
        ),
      ),
      status: 400,
      reason: 'unknown-key',
    },
    'jwk of the attacker under the exchange issuer, signed by the attacker': {
      form: exchangeForm(
        attackerSigned(json({ alg: 'ES256', jwk: attackerJwk }), json({ ...claimsOf(t1), sub: 'admin' })),
      ),
      status: 400,
      reason: 'signature',
    },
    'kid as a path (../../identity/v1/jwks)': {
      form: exchangeForm(attackerSigned(json({ alg: 'ES256', kid: '../../identity/v1/jwks' }), json(claimsOf(t1)))),
      status: 400,
      reason: 'unknown-key',
    },
    'kid: the exchange kid with a NUL after it': {
      form: exchangeForm(attackerSigned(json({ alg: 'ES256', kid: `${exchangeKid}\u0000` }), json(claimsOf(t1)))),
      status: 400,
      reason: 'unknown-key',
    },
    'kid as an object ({"$ne": null})': {
      form: exchangeForm(attackerSigned(json({ alg: 'ES256', kid: { $ne: null } }), json(claimsOf(t1)))),
      status: 400,
      reason: 'unknown-key',
    },
  };
  for (const [name, c] of Object.entries(exchangeCases)) {
    await t.test(`exchange: ${name}`, async () => {
      const reply = await ex.post(c.form);
      assert.equal(
        reply.status,
        c.status,
        `${JSON.stringify(reply.body)}${c.before === undefined ? '' : ` (before the fix: ${c.before})`}`,
      );
      if (c.reason !== undefined) assert.equal(reply.body.chaperone_reason, c.reason, JSON.stringify(reply.body));
    });
  }

  await t.test(
    'exchange: a re-spelled name (\\u0061gent) is the same party; an invisible character is another',
    async () => {
      const escaped = world.agents.signRaw(oidcHeader, oidcClaims(',"sub":"\\u0061gent:report-writer"'));
      const child = await ex.exchange(await world.ciToken(), {
        actor: escaped,
        resources: [world.resource('api')],
        scope: 'db:read',
      });
      assert.equal((claimsOf(child).act as { sub: string }).sub, 'agent:report-writer');
      // A zero-width space: the kind pattern agent:* matches it, but it is never normalised into the agent.
      const hidden = await ex.exchange(await world.ciToken(), {
        actor: await world.agents.sign({ sub: 'agent:report-writer\u200b' }),
        resources: [world.resource('api')],
        scope: 'db:read',
      });
      assert.equal((claimsOf(hidden).act as { sub: string }).sub, 'agent:report-writer\u200b');
    },
  );

  // Tokens carried to another resource, audience or engine, and claim tricks, at the sidecars.
  const rsa = kube.issuer;
  const rsaClaims = (extra: string) =>
    `{"iss":${json(rsa.issuer)},"aud":"chaperone","exp":${String(now + 600)}${extra}}`;
  const rsaHeader = json({ alg: 'RS256', kid: rsa.kid });
  const offer = await ex.exchange(t1, {
    audiences: [ex.issuer],
    mayAct: { sub: 'script:etl', iss: world.agents.issuer },
  });
  type SidecarCase = { token: string; status: number; before?: string };
  const kubeCases: Record<string, SidecarCase> = {
    'the genuine depth-1 chain, narrowed to this resource': { token: t1, status: 201 },
    'the genuine depth-2 chain': { token: t2, status: 201 },
    'a child narrowed to the HTTP resource, carried to the Kubernetes engine': { token: t1b, status: 401 },
    'an offer (audience: the exchange) used as a credential': { token: offer, status: 401 },
    'a hop copied from another chain': {
      token: withPayload(t1b, { ...claimsOf(t1b), act: claimsOf(t2).act }),
      status: 401,
    },
    'a self-signed hop under the exchange kid': {
      token: attackerSigned(
        json({ alg: 'ES256', kid: exchangeKid }),
        json({ ...claimsOf(t1), act: { sub: 'script:etl', iss: world.agents.issuer, act: claimsOf(t1).act } }),
      ),
      status: 401,
    },
    'the chain cut to its subject (act removed, signature kept)': {
      token: withPayload(t2, { ...claimsOf(t2), act: undefined }),
      status: 401,
    },
    'exp 1e309': {
      token: rsa.signRaw(rsaHeader, rsaClaims(',"sub":"agent:forever","exp":1e309')),
      status: 401,
      before: '201: never expires',
    },
    'exp -0': { token: rsa.signRaw(rsaHeader, rsaClaims(',"sub":"agent:x","exp":-0')), status: 401 },
    'nbf -1e309 with exp 1e309': {
      token: rsa.signRaw(rsaHeader, rsaClaims(',"sub":"agent:forever","nbf":-1e309,"exp":1e309')),
      status: 401,
      before: '201',
    },
    'a duplicate sub (first system:admin, last the agent)': {
      token: rsa.signRaw(rsaHeader, `{"sub":"system:admin",${rsaClaims(',"sub":"agent:x"').slice(1)}`),
      status: 401,
      before: '201 as agent:x',
    },
    'a duplicate act': {
      token: rsa.signRaw(rsaHeader, rsaClaims(',"sub":"agent:x","act":{"sub":"ci"},"act":{"sub":"other"}')),
      status: 401,
      before: '201',
    },
    'a duplicate kid in the header': {
      token: rsa.signRaw(`{"alg":"RS256","kid":"nobody","kid":${json(rsa.kid)}}`, rsaClaims(',"sub":"agent:x"')),
      status: 401,
      before: '201',
    },
    'x5u naming the attacker': {
      token: attackerSigned(json({ alg: 'ES256', x5u: 'https://127.0.0.1:1/c.pem' }), json(claimsOf(t1))),
      status: 401,
    },
    'x5c of the attacker': {
      token: attackerSigned(json({ alg: 'ES256', kid: exchangeKid, x5c: ['MIIB'] }), json(claimsOf(t1))),
      status: 401,
    },
    'kid as a path': {
      token: rsa.signRaw(json({ alg: 'RS256', kid: '../jwks.json' }), rsaClaims(',"sub":"agent:x"')),
      status: 401,
    },
  };
  const created: string[] = [];
  let index = 0;
  for (const [name, c] of Object.entries(kubeCases)) {
    const configMap = `case-${String(index++)}`;
    await t.test(`Kubernetes engine: ${name}`, async () => {
      const reply = await createThroughKube(configMap, c.token);
      assert.equal(
        reply.status,
        c.status,
        `${JSON.stringify(reply.body)}${c.before === undefined ? '' : ` (before the fix: ${c.before})`}`,
      );
      if (c.status === 201) created.push(configMap);
      else {
        // A Kubernetes Status body, as the API server would answer.
        assert.equal(reply.body.kind, 'Status', JSON.stringify(reply.body));
        assert.equal(reply.body.code, 401);
        assert.equal(reply.body.reason, 'Unauthorized');
      }
    });
  }

  await t.test(
    'kubectl through the Kubernetes engine with a child narrowed to another resource is refused',
    async () => {
      const kubeconfig = join(dir, 'narrowed.kubeconfig');
      writeFileSync(kubeconfig, kubeconfigFor(`https://127.0.0.1:${String(kube.port)}`, t1b, servingCertFile));
      const refused = await runKubectl(kubeconfig, ['get', 'configmaps', '-n', ns, '--tls-server-name', 'localhost']);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /Unauthorized|must be logged in/);
      writeFileSync(kubeconfig, kubeconfigFor(`https://127.0.0.1:${String(kube.port)}`, t2, servingCertFile));
      const allowed = await runKubectl(kubeconfig, [
        'get',
        'configmaps',
        '-n',
        ns,
        '--tls-server-name',
        'localhost',
        '-o',
        'name',
      ]);
      assert.equal(allowed.code, 0, allowed.stderr);
    },
  );

  await t.test(
    'HTTP engine: the chain narrowed to it passes, the Kubernetes-only parent of another chain does not',
    async () => {
      assert.equal(await throughHttp('/t1b', t1b), 200);
      assert.equal(await throughHttp('/t2', t2), 200);
      const kubeOnly = await ex.exchange(t1, { resources: [world.resource('kube')] });
      assert.equal(await throughHttp('/kube-only', kubeOnly), 401);
      assert.deepEqual(received.toSorted(), ['/t1b', '/t2']);
    },
  );

  await t.test(
    'a parent outlives its expired child: the child is refused everywhere, the parent still works',
    async () => {
      const child = await ex.exchange(t1, { lifetime: 1 });
      // The exchange and the sidecar allow 5 s of clock skew.
      await sleep(7500);
      assert.equal((await createThroughKube('expired-child', child)).status, 401);
      const reply = await ex.post(exchangeForm(child));
      assert.deepEqual([reply.status, reply.body.chaperone_reason], [400, 'expired']);
      // No revocation (docs/identity.md): the parent stays valid within its own authority until its exp.
      assert.equal((await createThroughKube('parent-after-child', t1)).status, 201);
      created.push('parent-after-child');
    },
  );

  await t.test('the API server holds exactly the ConfigMaps of the accepted requests', async () => {
    const names = (await kubectl(['get', 'configmaps', '-n', ns, '-o', 'name']))
      .split('\n')
      .map((l) => l.trim().replace(/^configmap\//, ''))
      .filter((n) => n.startsWith('case-') || n.includes('-after-') || n === 'expired-child');
    assert.deepEqual(names.toSorted(), created.toSorted());
  });

  await t.test('the sidecars recorded every refusal as auth.failure and the chains as signed', async () => {
    const records = await kube.settledRecords();
    const refused = Object.values(kubeCases).filter((c) => c.status === 401).length + 1;
    assert.ok(records.filter((r) => r.record.type === 'auth.failure').length >= refused);
    const chains = records
      .filter((r) => r.record.type === 'session.start')
      .map((r) => r.record.identity?.chain?.map((a) => a.subject).join(' < '));
    assert.ok(chains.includes('script:etl < agent:report-writer'), JSON.stringify(chains));
    assert.ok(!chains.some((c) => c?.includes('agent:forever') === true), 'the never-expiring token opened no session');
  });
});
