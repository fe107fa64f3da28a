// Result plans from lineage and rules: a value computed from a partial or hashed column is redacted (the
// strategies keep something of their input: partial its tail, hash its equality), a bare reference keeps
// its rule's strategy, the strictest rule wins.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MaskingInstruction } from '@chaperone/api';
import { maskingRules, planResult, type ColumnAction, type ResultLineage } from './result-plan.ts';

const RULES: MaskingInstruction[] = [
  { rule: 'p/cards', columns: ['public.t.card'], detectors: [], strategy: 'partial', keepLast: 4 },
  { rule: 'p/emails', columns: ['public.t.email'], detectors: [], strategy: 'hash' },
  { rule: 'p/notes', columns: ['public.t.note'], detectors: [], strategy: 'fixed', value: 'n/a' },
];

function lineage(columns: { sources: string[]; direct: boolean }[]): ResultLineage {
  return {
    columns: columns.map((c) => ({ ...c, opaque: false })),
    touched: columns.flatMap((c) => c.sources),
    predicates: [],
    opaque: false,
    written: [],
  };
}

const strategyOf = (a: ColumnAction | undefined): string | undefined => (a?.kind === 'mask' ? a.strategy : a?.kind);

test('bare references keep their strategy; values derived from partial or hashed columns are redacted', () => {
  const plan = planResult(
    lineage([
      { sources: ['public.t.card'], direct: true },
      { sources: ['public.t.card'], direct: false },
      { sources: ['public.t.email'], direct: true },
      { sources: ['public.t.email'], direct: false },
      { sources: ['public.t.note'], direct: false },
      { sources: ['public.t.card', 'public.t.note'], direct: false },
      { sources: ['public.t.id'], direct: true },
    ]),
    maskingRules(RULES),
  );
  assert.ok(plan.kind === 'mask' && plan.columns !== undefined);
  assert.deepEqual(plan.columns.map(strategyOf), ['partial', 'redact', 'hash', 'redact', 'fixed', 'fixed', 'pass']);
  const derived = plan.columns[1];
  assert.equal(derived?.kind === 'mask' ? derived.source : undefined, 'public.t.card (derived)');
});
