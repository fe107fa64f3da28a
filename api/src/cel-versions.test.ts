// Which Kubernetes version accepts the CEL in crds/ (x-kubernetes-validations) and config/admission/
// (ValidatingAdmissionPolicies): every function, macro form and syntax they use is listed here with the first
// Kubernetes minor whose API server accepts it in a new CRD or policy, and the highest of those must be the
// minimum docs/install.md states. An API server compiles new expressions with the CEL environment of the
// release before its own (k8s.io/apiserver pkg/cel/environment: DefaultCompatibilityVersion is the minimum
// compatibility version, one minor back), so a library base.go introduces at 1.N is usable from 1.N+1.
// A function missing from the table fails the test: look it up in base.go before adding it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';

const REPO = join(import.meta.dirname, '..', '..');

/** The minimum Kubernetes version the documentation states (docs/install.md, README.md). */
const DOCUMENTED_MINIMUM = '1.33';

/** CEL for CRD validation rules is on by default from 1.25; the libraries base.go has from "1.0" on. */
const BASE = '1.25';
/** A feature → the first Kubernetes minor accepting it in a new expression (base.go IntroducedVersion + 1). */
const FIRST_VERSION: ReadonlyMap<string, string> = new Map([
  // cel-go standard functions and macros, Kubernetes' URL, regex and list (v0) libraries, strings v0.
  ...[
    'has',
    'size',
    'int',
    'uint',
    'double',
    'string',
    'bytes',
    'bool',
    'duration',
    'timestamp',
    'type',
    'dyn',
    'isURL',
    'url',
    '.all',
    '.exists',
    '.exists_one',
    '.map',
    '.filter',
    '.size',
    '.contains',
    '.startsWith',
    '.endsWith',
    '.matches',
    '.join',
    '.split',
    '.lowerAscii',
    '.upperAscii',
    '.replace',
    '.substring',
    '.trim',
    '.charAt',
    '.indexOf',
    '.lastIndexOf',
    '.find',
    '.findAll',
    '.isSorted',
    '.sum',
    '.min',
    '.max',
  ].map((name) => [name, BASE] as const),
  // Optional types (cel.OptionalTypes, 1.28): `.?field`, `[?key]`, orValue, hasValue.
  ...['optional syntax', '.orValue', '.hasValue', '.value', '.or', 'optional.of', 'optional.none'].map(
    (name) => [name, '1.29'] as const,
  ),
  ...['sets.contains', 'sets.equivalent', 'sets.intersects', '.format', 'strings.quote'].map(
    (name) => [name, '1.30'] as const, // ext.Sets and ext.Strings v2, 1.29
  ),
  ...['ip', 'cidr', 'isIP', 'isCIDR'].map((name) => [name, '1.31'] as const), // library.IP, library.CIDR, 1.30
  // Two-variable comprehensions (ext.TwoVarComprehensions, 1.32): all(i, v, p), exists(i, v, p), ...
  ...['two-variable comprehension', '.transformList', '.transformMap', '.transformMapEntry'].map(
    (name) => [name, '1.33'] as const,
  ),
  ...['semver', 'isSemver'].map((name) => [name, '1.34'] as const), // library.SemverLib, 1.33
  // ext.Lists v3 (1.34): distinct, slice and the rest of cel-go's list extension.
  ...['.distinct', '.slice', '.flatten', '.reverse', '.sort', '.sortBy', 'lists.range'].map(
    (name) => [name, '1.35'] as const,
  ),
]);

/** Every CEL expression of a YAML document: rules, validations, variables, match conditions, messages. */
function expressions(node: unknown, key = '', into: string[] = []): string[] {
  if (Array.isArray(node)) for (const item of node) expressions(item, key, into);
  else if (node !== null && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) expressions(v, k, into);
  } else if (typeof node === 'string' && ['rule', 'expression', 'messageExpression', 'valueExpression'].includes(key)) {
    into.push(node);
  }
  return into;
}

/** The text with its string literals emptied (their content is not code). */
function withoutStrings(cel: string): string {
  return cel.replace(/'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"/g, "''");
}

/** How many arguments the call whose `(` is at `open` has. */
function argumentCount(cel: string, open: number): number {
  let depth = 0;
  let commas = 0;
  let empty = true;
  for (let i = open; i < cel.length; i++) {
    const c = cel[i];
    if (c === '(' || c === '[' || c === '{') depth += 1;
    else if (c === ')' || c === ']' || c === '}') {
      depth -= 1;
      if (depth === 0) return empty ? 0 : commas + 1;
    } else if (c === ',' && depth === 1) commas += 1;
    else if (depth === 1 && c !== undefined && !/\s/.test(c)) empty = false;
  }
  throw new Error(`unbalanced call in ${cel}`);
}

/** The features (FIRST_VERSION's names) an expression uses. */
function celFeatures(expression: string): Set<string> {
  const cel = withoutStrings(expression);
  const used = new Set<string>();
  if (/\.\?|\[\?/.test(cel)) used.add('optional syntax');
  for (const m of cel.matchAll(/(\.\s*)?\b([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?\s*\(/g)) {
    const open = m.index + m[0].length - 1;
    const namespaced =
      m[1] === undefined && m[3] !== undefined && ['sets', 'lists', 'strings', 'optional'].includes(m[2]!);
    const name = namespaced
      ? `${m[2]!}.${m[3]!}`
      : m[3] !== undefined
        ? `.${m[3]}`
        : `${m[1] === undefined ? '' : '.'}${m[2]!}`;
    used.add(name);
    if (['.all', '.exists', '.exists_one'].includes(name) && argumentCount(cel, open) === 3) {
      used.add('two-variable comprehension');
    }
  }
  return used;
}

const minor = (v: string): number => Number(v.split('.')[1]);

function sources(): { file: string; expressions: string[] }[] {
  const files = [
    ...readdirSync(join(REPO, 'crds')).map((f) => join('crds', f)),
    ...readdirSync(join(REPO, 'config', 'admission')).map((f) => join('config', 'admission', f)),
  ].filter((f) => f.endsWith('.yaml'));
  return files.map((file) => ({
    file,
    expressions: parseAllDocuments(readFileSync(join(REPO, file), 'utf8')).flatMap((d) => expressions(d.toJSON())),
  }));
}

test('celFeatures finds functions, optional syntax and two-variable comprehensions, not words in strings', () => {
  assert.deepEqual(
    [...celFeatures(`self.all(i, r, r.x.startsWith('a(')) && size(l.map(d, d.n).distinct()) == 1`)].sort(),
    ['.all', '.distinct', '.map', '.startsWith', 'size', 'two-variable comprehension'],
  );
  assert.deepEqual([...celFeatures(`object.?spec.?a.orValue([]).all(g, sets.contains(g, ['x']))`)].sort(), [
    '.all',
    '.orValue',
    'optional syntax',
    'sets.contains',
  ]);
});

test(`every CEL feature of crds/ and config/admission/ is known, and the highest first version is the documented minimum (${DOCUMENTED_MINIMUM})`, () => {
  let highest = BASE;
  const unknown: string[] = [];
  const needs: string[] = [];
  for (const { file, expressions: list } of sources()) {
    for (const expression of list) {
      for (const feature of celFeatures(expression)) {
        const first = FIRST_VERSION.get(feature);
        if (first === undefined) unknown.push(`${file}: ${feature}`);
        else {
          if (minor(first) > minor(DOCUMENTED_MINIMUM)) needs.push(`${file}: ${feature} needs ${first}`);
          if (minor(first) > minor(highest)) highest = first;
        }
      }
    }
  }
  assert.deepEqual(unknown, [], 'look these up in k8s.io/apiserver pkg/cel/environment/base.go');
  assert.deepEqual(needs, []);
  assert.equal(highest, DOCUMENTED_MINIMUM, 'the documented minimum is what the CEL needs');
  const install = readFileSync(join(REPO, 'docs', 'install.md'), 'utf8');
  assert.match(install, new RegExp(`Kubernetes ${DOCUMENTED_MINIMUM.replace('.', '\\.')} or newer is needed`));
});
