// Delegation claims against the real token exchange (the operator, on the shared API server) and a real
// sidecar's HTTP engine trusting it: offers (`may_act`) stolen and narrowed, `may_act` without an issuer met
// by a namesake of another trusted issuer, `may_act` and `act` in every shape that is not an object, a
// `may_act` contradicted, an issuer trusted for subjects presented as an actor, and the same subject token
// exchanged twice (no jti cache: decided, below); and token shapes at the exchange (JSON serialisations,
// `cty`, `b64`, `zip`). A refusal must be the exchange's; what got through is an issued token, and what it
// reached is the upstream behind the sidecar. Before the fix (fifteenth session), 8 of the 25 attacks got
// through: three narrowings of a stolen offer (asking no audience, `chaperone`, or both it and the exchange)
// each became a token the sidecar let reach the upstream as the CI job itself; a `may_act` naming
// `agent:helper` without an issuer was redeemed by another trusted issuer's `agent:helper` (and reached the
// upstream); the exchange issued an offer whose `may_act` named no issuer; and an agent platform's token
// with `cty: JWT`, `b64: false` or `zip: DEF` was exchanged for a clean-headed child that reached the upstream.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startLoopbackHttpServer } from '../harness/loopback-http.ts';
import { HTTP_ALLOW_ALL, spawnHttpEngineSidecar } from '../http/http-sidecar.ts';
import { raw } from '../http/raw-request.ts';
import { exchangeForm, startExchangeFixture, type ExchangeReply } from './exchange-fixture.ts';
import { ciDelegation, claimsOf, createIdentityWorld } from './identity-fixture.ts';
import { startOidcIssuer } from './oidc-issuer.ts';

test('chain claims corpus: offers, may_act and act shapes, namesakes of other issuers, replayed subject tokens', async (t) => {
  const ex = await startExchangeFixture(t);
  const world = await createIdentityWorld(t, ex);
  // A second agent platform, trusted for its own agents, and a rule written by kind alone (no issuer).
  const partners = await startOidcIssuer();
  t.after(() => partners.close());
  await ex.applyTrustedIssuer('partners', {
    issuer: partners.issuer,
    type: 'oidc',
    oidc: { caBundle: partners.caPem, algorithms: ['ES256'], cacheSeconds: 300 },
    kinds: [{ subject: 'agent:*', kind: 'ai-agent' }],
  });
  await ex.applyDelegationPolicy('ci', ciDelegation(world));
  await ex.applyDelegationPolicy('agents-by-kind', {
    rules: [
      {
        name: 'agents-to-agents',
        from: [{ kinds: ['ai-agent'] }],
        to: [{ kinds: ['ai-agent'] }],
        maxDepth: 2,
        maxLifetime: '5m',
        audiences: ['chaperone'],
      },
    ],
  });

  const reached: string[] = [];
  const upstream = await startLoopbackHttpServer(t, (req, res) => {
    reached.push(decodeURIComponent((req.url ?? '').replace(/^\/\?who=/, '')));
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
  const sidecar = await spawnHttpEngineSidecar(t, {
    upstreamPort: (upstream.address() as { port: number }).port,
    policies: { all: HTTP_ALLOW_ALL },
    credential: 'chain-claims-upstream-key',
    policyNamespace: world.namespace,
    resource: { namespace: world.namespace, labels: {} },
    extraIssuers: [ex.sidecarIssuer()],
  });
  const atUpstream = async (token: string, said: string) => {
    const answer = await raw(
      sidecar.port,
      `GET /?who=${encodeURIComponent(said)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
    );
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
  };

  const through: string[] = [];
  /** One attack: the exchange must refuse it with `reason`; a token it issues anyway is tried at the sidecar. */
  const attack = async (name: string, reply: Promise<ExchangeReply>, reason: string) => {
    const { status, body } = await reply;
    if (status === 200) {
      const token = String(body.access_token);
      const at = await atUpstream(token, name);
      through.push(
        `${name}: issued${at === 200 ? ', and it reached the upstream' : ` (the sidecar answered ${String(at)})`}`,
      );
      return;
    }
    assert.equal(status, 400, `${name}: ${JSON.stringify(body)}`);
    assert.equal(body.chaperone_reason, reason, `${name}: ${JSON.stringify(body)}`);
  };

  // The control: the CI job's offer redeemed by the agent it names reaches the upstream as that agent.
  const ci = await world.ciToken();
  const mayAct = { sub: 'agent:report-writer', iss: world.agents.issuer };
  const offer = await ex.exchange(ci, { audiences: [ex.issuer], mayAct, resources: [world.resource('api')] });
  const redeemed = await ex.exchange(offer, {
    actor: await world.agents.sign({ sub: 'agent:report-writer' }),
    scope: 'db:read',
  });
  assert.equal(await atUpstream(redeemed, 'control: the offer redeemed'), 200);
  assert.equal(await atUpstream(offer, 'the offer itself'), 401, 'an offer is not for sidecars');

  // A stolen offer, narrowed by its thief (no actor token): the child must stay an offer.
  await attack('a stolen offer narrowed', ex.post(exchangeForm(offer)), 'audience-widened');
  await attack(
    'a stolen offer narrowed to the chaperone audience',
    ex.post(exchangeForm(offer, { audiences: ['chaperone'] })),
    'audience-widened',
  );
  await attack(
    'a stolen offer narrowed to the exchange and chaperone',
    ex.post(exchangeForm(offer, { audiences: [ex.issuer, 'chaperone'] })),
    'audience-widened',
  );
  await attack(
    'a stolen offer redeemed by another agent of the named issuer',
    ex.post(exchangeForm(offer, { actor: await world.agents.sign({ sub: 'agent:intruder' }) })),
    'may-act-mismatch',
  );
  await attack(
    "a stolen offer redeemed by the named agent's namesake at another issuer",
    ex.post(exchangeForm(offer, { actor: await partners.sign({ sub: 'agent:report-writer' }) })),
    'may-act-mismatch',
  );

  // may_act without an issuer: a name of the token's own issuer, never of any trusted issuer.
  const boss = await world.agents.sign({ sub: 'agent:boss', may_act: { sub: 'agent:helper' } });
  await attack(
    "may_act without iss, redeemed by another issuer's agent:helper",
    ex.post(exchangeForm(boss, { actor: await partners.sign({ sub: 'agent:helper' }) })),
    'may-act-mismatch',
  );
  const helped = await ex.exchange(boss, { actor: await world.agents.sign({ sub: 'agent:helper' }) });
  assert.deepEqual(
    (claimsOf(helped).act as { sub: string; iss: string } | undefined)?.iss,
    world.agents.issuer,
    "control: the token's own issuer's agent:helper redeems it",
  );
  await attack(
    'an offer asked for with may_act without iss',
    ex.post(exchangeForm(ci, { audiences: [ex.issuer], mayAct: { sub: 'agent:report-writer' } })),
    'invalid-parameter',
  );

  // may_act and act in shapes that are not an object naming a party.
  for (const [what, value] of [
    ['null', null],
    ['a string', 'agent:helper'],
    ['a list', [{ sub: 'agent:helper' }]],
    ['an empty object', {}],
    ['a number as sub', { sub: 7 }],
  ] as const) {
    await attack(
      `may_act ${what}`,
      ex.post(
        exchangeForm(await world.agents.sign({ sub: 'agent:boss', may_act: value }), {
          actor: await world.agents.sign({ sub: 'agent:helper' }),
        }),
      ),
      'malformed',
    );
  }
  for (const [what, value] of [
    ['null', null],
    ['a string', 'agent:boss'],
    ['a list', [{ sub: 'agent:boss', iss: world.agents.issuer }]],
  ] as const) {
    await attack(
      `act ${what} in the subject token`,
      ex.post(exchangeForm(await world.agents.sign({ sub: 'agent:boss', act: value }))),
      'foreign-chain',
    );
    await attack(
      `act ${what} in the actor token`,
      ex.post(exchangeForm(ci, { actor: await world.agents.sign({ sub: 'agent:report-writer', act: value }) })),
      'foreign-chain',
    );
  }

  // may_act contradicted; an issuer trusted for subjects (the cluster's) presented as the actor.
  await attack(
    'may_act naming agent:other, agent:helper acting',
    ex.post(
      exchangeForm(
        await world.agents.sign({ sub: 'agent:boss', may_act: { sub: 'agent:other', iss: world.agents.issuer } }),
        {
          actor: await world.agents.sign({ sub: 'agent:helper' }),
        },
      ),
    ),
    'may-act-mismatch',
  );
  await attack(
    "the cluster's service-account token as the actor",
    ex.post(exchangeForm(await world.agents.sign({ sub: 'agent:boss' }), { actor: await world.ciToken() })),
    'no-delegation-rule',
  );

  // Token shapes at the exchange (as at the sidecars, token-shape-corpus.test.ts): the JSON serialisations
  // of a valid token, and headers that make the payload something else, signed by the agent platform.
  const [h, p, sig] = (await world.agents.sign({ sub: 'agent:boss' })).split('.') as [string, string, string];
  await attack(
    'the flattened JSON serialisation as the subject token',
    ex.post(exchangeForm(JSON.stringify({ protected: h, payload: p, signature: sig }))),
    'malformed',
  );
  await attack(
    'the general JSON serialisation as the actor token',
    ex.post(
      exchangeForm(ci, { actor: JSON.stringify({ payload: p, signatures: [{ protected: h, signature: sig }] }) }),
    ),
    'malformed',
  );
  const claims = (sub: string) =>
    JSON.stringify({ sub, iss: world.agents.issuer, aud: 'chaperone', exp: Math.floor(Date.now() / 1000) + 600 });
  for (const extra of ['"cty":"JWT"', '"b64":false', '"zip":"DEF"']) {
    await attack(
      `an agent platform's token with ${extra}`,
      ex.post(exchangeForm(world.agents.signRaw(`{"alg":"ES256","kid":"{kid}",${extra}}`, claims('agent:boss')))),
      'malformed',
    );
  }

  assert.deepEqual(through, [], `${String(through.length)} attacks got through`);

  // Decided: no jti cache. The same subject token exchanged twice gives two children, each with its own jti
  // and its own record naming the same parent hash (bearer tokens are presented again by design).
  const first = await ex.exchange(ci, { resources: [world.resource('api')] });
  const second = await ex.exchange(ci, { resources: [world.resource('api')] });
  assert.notEqual(claimsOf(first).jti, claimsOf(second).jti);
  const records = (await ex.logs()).flatMap((log) => log.spec.records);
  const ids = new Set(records.map((r) => r.id));
  assert.ok(ids.has(String(claimsOf(first).jti)) && ids.has(String(claimsOf(second).jti)), 'both recorded');
  assert.equal(await atUpstream(first, 'control: a sibling'), 200);
  assert.deepEqual(reached.sort(), ['control: a sibling', 'control: the offer redeemed']);
});
