// Bound parameters are recorded masked where the deciding policies' masking rules cover them: detector
// rules mask what they find, column rules mask every parameter (its column is unknown at that point).
// The statement still runs with the real values.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessPolicySpec } from '@chaperone/api';
import { startTestSidecar } from '../harness/sidecar.ts';
import { connectAgent } from '../harness/agent-client.ts';

function policy(masking: NonNullable<AccessPolicySpec['masking']>): AccessPolicySpec {
  return {
    resources: { names: ['test-db'] },
    rules: [{ name: 'reads', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
    masking,
    defaultDecision: 'deny',
  };
}

async function recordedParameters(
  t: Parameters<typeof startTestSidecar>[0],
  spec: AccessPolicySpec,
  values: string[],
): Promise<{ rows: unknown[]; parameters: readonly string[] | undefined }> {
  const sidecar = await startTestSidecar(t, { policies: { masked: spec } });
  const c = await connectAgent(sidecar, { sub: 'system:serviceaccount:ci:agent' });
  try {
    const result = await c.query('select $1::text as a, $2::text as b', values);
    const records = await sidecar.settledRecords();
    const decision = records.find((r) => r.record.command?.text === 'select $1::text as a, $2::text as b');
    return { rows: result.rows, parameters: decision?.record.command?.parameters };
  } finally {
    await c.end();
  }
}

test('detector rules mask what they find in recorded parameters and in the result (docs/masking.md)', async (t) => {
  const values = ['ada@example.com', 'no personal data'];
  const { rows, parameters } = await recordedParameters(
    t,
    policy([{ name: 'emails', detectors: ['email'], strategy: 'partial' }]),
    values,
  );
  // The server ran with the real values; what comes back goes through the same detectors.
  assert.deepEqual(rows, [{ a: '***********.com', b: 'no personal data' }]);
  assert.deepEqual(parameters, ['***********.com', 'no personal data']);
});

test('a column rule masks every recorded parameter of the statements it covers', async (t) => {
  const { parameters } = await recordedParameters(
    t,
    policy([{ name: 'customer-email', columns: ['public.customers.email'], strategy: 'redact' }]),
    ['ada@example.com', '42'],
  );
  assert.deepEqual(parameters, ['[MASKED]', '[MASKED]']);
});

test('without masking rules parameters are recorded as sent', async (t) => {
  const { parameters } = await recordedParameters(t, policy([]), ['ada@example.com', '42']);
  assert.deepEqual(parameters, ['ada@example.com', '42']);
});
