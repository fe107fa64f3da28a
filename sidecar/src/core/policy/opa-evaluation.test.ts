import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { loadPolicy, type LoadedPolicy } from '@open-policy-agent/opa-wasm';
import { POLICY_ENTRYPOINT } from '@chaperone/api';
import { compilePolicy } from '@chaperone/operator/policy-compiler';
import { policyEvaluation } from './opa-evaluation.ts';
import { request, spec, sql, stmt } from './policy-fixtures.test-helpers.ts';

let wasm: Uint8Array;

async function load(): Promise<{ policy: LoadedPolicy; entrypoint: number }> {
  const policy = await loadPolicy(wasm);
  const entrypoint = (policy.entrypoints as Record<string, number>)[POLICY_ENTRYPOINT];
  assert.equal(typeof entrypoint, 'number');
  return { policy, entrypoint: entrypoint as number };
}

/** What the SDK returns for JSON text (an ArrayBuffer is taken as JSON text as it is). */
function sdkEvaluate(policy: LoadedPolicy, json: string, entrypoint: number): unknown {
  return policy.evaluate(new TextEncoder().encode(json).buffer, entrypoint) as unknown;
}

function inputJson(relations: string[], kind: 'select' | 'delete' = 'select'): string {
  return JSON.stringify({
    version: 1,
    ...request(sql(stmt(kind, relations))),
    time: { unixMillis: 1_700_000_000_000, zones: {} },
  });
}

describe('policyEvaluation (opa_eval called directly)', () => {
  before(async () => {
    const r = await compilePolicy({
      namespace: 'team',
      name: 'reads',
      spec: spec({
        rules: [
          { name: 'no-secrets', decision: 'deny', match: { sql: { relations: ['secret.*'] } } },
          { name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } },
        ],
        masking: [{ name: 'pii', columns: ['email'], strategy: 'hash' }],
      }),
    });
    if (!r.ok) throw new Error(JSON.stringify(r.errors));
    wasm = r.wasm;
  });

  it('returns the result set the SDK returns, for every input in turn, on one instance', async () => {
    const direct = await load();
    const sdk = await load();
    const evaluation = policyEvaluation(direct.policy);
    const inputs = [
      inputJson(['public.orders']),
      inputJson(['secret.keys']),
      inputJson(['public.örders', 'public."😀"', 'public.\u0000x']), // multi-byte and escaped characters
      inputJson(['public.orders'], 'delete'),
      inputJson(Array.from({ length: 20_000 }, (_, i) => `public.table_${String(i)}_with_a_long_name`)), // grows memory
      inputJson(['secret.keys']), // after the memory grew, and after a longer input
      inputJson(['public.orders']),
    ];
    const decisions = new Set<string>();
    for (const input of inputs) {
      const text = new TextDecoder().decode(evaluation.evaluate(input, direct.entrypoint));
      const expected = sdkEvaluate(sdk.policy, input, sdk.entrypoint);
      assert.deepEqual(JSON.parse(text), expected);
      decisions.add((JSON.parse(text) as [{ result: { decision: string } }])[0].result.decision);
    }
    assert.deepEqual([...decisions].sort(), ['allow', 'deny'], 'the inputs reach different rules');
  });

  it('answers input that is not JSON as the SDK does, and stays usable', async () => {
    const direct = await load();
    const sdk = await load();
    const evaluation = policyEvaluation(direct.policy);
    for (const input of ['{"version":', inputJson(['public.orders'])]) {
      assert.deepEqual(
        JSON.parse(new TextDecoder().decode(evaluation.evaluate(input, direct.entrypoint))),
        sdkEvaluate(sdk.policy, input, sdk.entrypoint),
      );
    }
  });

  it('leaves a module older than ABI 1.2 to the SDK', () => {
    const calls: unknown[] = [];
    const old = {
      minorVersion: 1,
      evaluate(input: ArrayBuffer, entrypoint: number) {
        calls.push([new TextDecoder().decode(input), entrypoint]);
        return [{ result: { decision: 'deny' } }];
      },
    } as unknown as LoadedPolicy;
    assert.equal(
      new TextDecoder().decode(policyEvaluation(old).evaluate('{"a":1}', 3)),
      '[{"result":{"decision":"deny"}}]',
    );
    assert.deepEqual(calls, [['{"a":1}', 3]]);
  });
});
