// Which sessions are read-only: real AccessPolicy specs compiled by the real opa binary, asked with the
// write probes. A session may write when any policy could allow (or hold for approval) any write.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import type { AccessPolicySpec, PolicyRule } from '@chaperone/api';
import { compilePolicy } from '@chaperone/operator/policy-compiler';
import { PolicyEngine, type PolicyBundle } from '../../core/policy/policy-engine.ts';
import { identity, request, spec, sql, stmt } from '../../core/policy/policy-fixtures.test-helpers.ts';
import { policiesGrantWrite, WRITE_PROBES } from './write-grant.ts';

const CASES: readonly { name: string; rules: PolicyRule[]; mayWrite: boolean }[] = [
  {
    name: 'reads without side effects only',
    rules: [
      { name: 'r', decision: 'allow', match: { sql: { statementKinds: ['select', 'show'], sideEffects: false } } },
    ],
    mayWrite: false,
  },
  {
    name: 'reads, SET and transaction control of any kind (READ WRITE included): the pins refuse those',
    rules: [
      { name: 'r', decision: 'allow', match: { sql: { statementKinds: ['select', 'explain'], sideEffects: false } } },
      { name: 't', decision: 'allow', match: { sql: { statementKinds: ['set', 'transaction', 'prepare', 'show'] } } },
    ],
    mayWrite: false,
  },
  {
    name: 'reads with side effects (a function that writes)',
    rules: [{ name: 'r', decision: 'allow', match: { sql: { statementKinds: ['select'] } } }],
    mayWrite: true,
  },
  {
    name: 'inserts into one table only',
    rules: [
      { name: 'w', decision: 'allow', match: { sql: { statementKinds: ['insert'], relations: ['public.orders'] } } },
    ],
    mayWrite: true,
  },
  {
    name: 'deletes held for approval',
    rules: [{ name: 'a', decision: 'approve', match: { sql: { statementKinds: ['delete'] } } }],
    mayWrite: true,
  },
  {
    name: 'calls of one procedure',
    rules: [
      { name: 'c', decision: 'allow', match: { sql: { statementKinds: ['call'], functions: ['public.close_day'] } } },
    ],
    mayWrite: true,
  },
  {
    name: 'everything, with writes denied by a later deny rule on every relation',
    rules: [
      { name: 'no-writes', decision: 'deny', match: { sql: { statementKinds: ['insert', 'update', 'delete'] } } },
      { name: 'all', decision: 'allow', match: {} },
    ],
    mayWrite: true, // ddl, copy-from, ... are still allowed
  },
  { name: 'nothing at all', rules: [], mayWrite: false },
];

const APPROVAL = { approverGroups: ['dba'], requiredApprovals: 1, timeout: '30m', allowSelfApproval: false };
const bundles = new Map<string, PolicyBundle>();

describe('policiesGrantWrite', () => {
  before(async () => {
    await Promise.all(
      CASES.map(async (c, i) => {
        const approves = c.rules.some((r) => r.decision === 'approve');
        const s = spec({ rules: c.rules, ...(approves ? { approval: APPROVAL } : {}) });
        const r = await compilePolicy({ namespace: 'team', name: `p${String(i)}`, spec: s });
        if (!r.ok) throw new Error(`${c.name}: ${JSON.stringify(r.errors)}`);
        bundles.set(c.name, { wasm: r.wasm, manifest: r.manifest, digest: r.digest });
      }),
    );
  });

  for (const c of CASES) {
    it(`${c.name}: ${c.mayWrite ? 'may write' : 'read-only'}`, async () => {
      const engine = new PolicyEngine();
      await engine.replaceBundles([bundles.get(c.name) ?? assert.fail('no bundle')]);
      const { command: _command, ...base } = request(sql());
      assert.equal(policiesGrantWrite(engine, base), c.mayWrite);
    });
  }

  it("the repository's examples: the read-only policy makes sessions read-only (the demo's reader login), the approval one does not", async () => {
    const examples = join(import.meta.dirname, '..', '..', '..', '..', 'examples');
    for (const [file, subject, mayWrite] of [
      ['accesspolicy-readonly.yaml', 'system:serviceaccount:ci:report-agent', false],
      ['accesspolicy-refunds-approval.yaml', 'system:serviceaccount:payments:refund-agent', true],
    ] as const) {
      const policy = parse(readFileSync(join(examples, file), 'utf8')) as {
        metadata: { name: string };
        spec: AccessPolicySpec;
      };
      const r = await compilePolicy({ namespace: 'ci', name: policy.metadata.name, spec: policy.spec });
      if (!r.ok) throw new Error(`${file}: ${JSON.stringify(r.errors)}`);
      const engine = new PolicyEngine();
      await engine.replaceBundles([{ wasm: r.wasm, manifest: r.manifest, digest: r.digest }]);
      const { command: _command, ...base } = request(sql(), {
        identity: identity({ subject, issuer: 'https://kubernetes.default.svc.cluster.local' }),
        resource: { name: 'orders-db', namespace: 'ci', type: 'postgres', labels: {} },
      });
      assert.equal(policiesGrantWrite(engine, base), mayWrite, file);
      assert.equal(
        engine.decide({ ...base, command: sql(stmt('select', ['public.orders'])) }).decision,
        'allow',
        `${file} lets its own subjects read`,
      );
    }
  });

  it('probes every writing kind with and without side effects, and reads with side effects', () => {
    const probes = WRITE_PROBES.map((p) => {
      const [s] = p.command.type === 'sql' ? p.command.statements : [];
      return `${s?.kind ?? ''}:${String(s?.sideEffects)}`;
    });
    for (const k of ['insert', 'update', 'delete', 'merge', 'copy-from', 'ddl', 'dcl', 'call', 'do', 'execute']) {
      assert.ok(probes.includes(`${k}:true`) && probes.includes(`${k}:false`), k);
    }
    for (const k of ['select', 'explain', 'copy-to']) {
      assert.ok(probes.includes(`${k}:true`) && !probes.includes(`${k}:false`), k);
    }
    for (const k of ['set', 'transaction', 'show']) assert.ok(!probes.some((p) => p.startsWith(`${k}:`)), k);
  });
});
