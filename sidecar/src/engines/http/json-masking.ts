// The decision's masking instructions applied to a JSON response of the HTTP engine: a `columns` pattern
// names a field (its key, or its dotted path from the top with array indexes left out, `*` matching any run
// of characters) whose value is masked whole; detectors mask what they find in every string value. The
// strategies and detectors are the core's (core/masking/mask-value.ts), so a JSON field is masked exactly
// as a recorded parameter is. Pure; mutates the parsed document.
import type { MaskingInstruction } from '@chaperone/api';
import { applyStrategy, createValueMasker, PROCESS_HASH_KEY } from '../../core/masking/mask-value.ts';

function patternRegExp(pattern: string): RegExp {
  return new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
}

export interface JsonMasker {
  /** Masks `doc` in place; returns how many values were changed. */
  mask(doc: unknown): number;
}

export function createJsonMasker(instructions: readonly MaskingInstruction[]): JsonMasker | undefined {
  if (instructions.length === 0) return undefined;
  const fields = instructions.flatMap((i) =>
    i.columns.map((c) => ({ pattern: patternRegExp(c), strategy: i.strategy })),
  );
  const detectors = createValueMasker(
    instructions.filter((i) => i.detectors.length > 0).map((i) => ({ ...i, columns: [] })),
    PROCESS_HASH_KEY,
  );
  const fieldRule = (key: string, path: string) => fields.find((f) => f.pattern.test(key) || f.pattern.test(path));
  let changed = 0;
  const maskValue = (value: unknown, strategy: MaskingInstruction['strategy']): unknown => {
    changed++;
    if (strategy === 'null') return null;
    return applyStrategy(strategy, typeof value === 'string' ? value : JSON.stringify(value), PROCESS_HASH_KEY);
  };
  const walk = (node: unknown, path: string): unknown => {
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) node[i] = walk(node[i], path);
      return node;
    }
    if (typeof node === 'object' && node !== null) {
      const record = node as Record<string, unknown>;
      for (const key of Object.keys(record)) {
        const childPath = path === '' ? key : `${path}.${key}`;
        const rule = fieldRule(key, childPath);
        record[key] = rule === undefined ? walk(record[key], childPath) : maskValue(record[key], rule.strategy);
      }
      return record;
    }
    if (typeof node === 'string' && detectors !== undefined) {
      const masked = detectors.mask(node);
      if (masked !== node) changed++;
      return masked;
    }
    return node;
  };
  return {
    mask(doc: unknown): number {
      changed = 0;
      walk(doc, '');
      return changed;
    },
  };
}
