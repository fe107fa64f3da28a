// kubectl chaperone policy test: compiles AccessPolicies locally, exactly as the operator does, and
// evaluates test cases with the sidecar's PolicyEngine, so a policy can be tested before it is applied.
// The compiler and the engine are the operator's and the sidecar's own, imported through their packages'
// entry points: nothing is copied, so the CLI cannot drift from what runs in the cluster.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseAllDocuments, stringify } from 'yaml';
import {
  DECISIONS,
  type AccessPolicy,
  type Decision,
  type PolicyCommand,
  type PolicyIdentity,
  type PolicyInput,
} from '@chaperone/api';
import { compilePolicy, type CompileProblem } from '@chaperone/operator/policy-compiler';
import { PolicyEngine, type PolicyBundle } from '@chaperone/sidecar/policy-engine';
import { formatTable } from '../table.ts';
import type { CommandIo } from '../audit/cluster.ts';
import { executableDir, findOpa, OpaNotFoundError, opaVersionWarning, repositoryOpa } from '../opa.ts';

export const OUTPUT_FORMATS = ['table', 'json', 'yaml'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** A problem with the user's files (exit code 1 with a message, not a stack trace). */
export class PolicyTestInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PolicyTestInputError';
  }
}

/** One case as written in the inputs file: a PolicyInput without version and time, plus expectations. */
export interface PolicyTestCase {
  readonly name: string;
  readonly identity: PolicyIdentity;
  readonly resource: PolicyInput['resource'];
  readonly command: PolicyCommand;
  readonly session: PolicyInput['session'];
  /** Clock of the case, unix milliseconds (from `time`, RFC 3339). */
  readonly unixMillis: number;
  readonly expect: Decision;
  readonly rule?: string;
}

export interface CaseResult {
  readonly name: string;
  readonly expected: Decision;
  readonly expectedRule?: string;
  readonly decision: Decision;
  readonly rule: string;
  /** namespace/name of the deciding policy, "" when none applied. */
  readonly policy: string;
  readonly reasons: readonly string[];
  readonly message?: string;
  readonly passed: boolean;
}

export interface PolicyTestReport {
  readonly apiVersion: 'chaperone.dev/v1alpha1';
  readonly kind: 'PolicyTestReport';
  readonly policies: readonly { readonly name: string; readonly digest: string }[];
  readonly results: readonly CaseResult[];
  readonly summary: { readonly passed: number; readonly failed: number };
}

export interface PolicyTestOptions {
  readonly policyFiles: readonly string[];
  readonly inputsFile: string;
  readonly output: OutputFormat;
  readonly opaPath?: string;
}

export interface PolicyTestOutcome {
  /** 0 when every case passed, 1 otherwise. */
  readonly exitCode: 0 | 1;
  readonly stdout: string;
  readonly stderr: string;
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readYamlDocuments(file: string): unknown[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PolicyTestInputError(`cannot read ${file}: ${(err as Error).message}`);
  }
  const docs = parseAllDocuments(text);
  const out: unknown[] = [];
  for (const doc of Array.isArray(docs) ? docs : [docs]) {
    const first = doc.errors[0];
    if (first !== undefined) throw new PolicyTestInputError(`${file}: ${first.message}`);
    const value: unknown = doc.toJS();
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

/** Every AccessPolicy in the files (multi-document YAML and v1 List objects are accepted). */
export function loadPolicies(files: readonly string[]): AccessPolicy[] {
  const policies: AccessPolicy[] = [];
  for (const file of files) {
    for (const doc of readYamlDocuments(file)) {
      const items = isObject(doc) && doc.kind === 'List' && Array.isArray(doc.items) ? (doc.items as unknown[]) : [doc];
      for (const item of items) {
        if (!isObject(item) || item.kind !== 'AccessPolicy') {
          throw new PolicyTestInputError(
            `${file}: expected AccessPolicy objects, found ${JSON.stringify(isObject(item) ? item.kind : item)}`,
          );
        }
        const metadata = isObject(item.metadata) ? item.metadata : {};
        if (typeof metadata.name !== 'string' || !isObject(item.spec)) {
          throw new PolicyTestInputError(`${file}: an AccessPolicy needs metadata.name and spec`);
        }
        policies.push(item as unknown as AccessPolicy);
      }
    }
  }
  if (policies.length === 0) throw new PolicyTestInputError('no AccessPolicy in the policy files');
  return policies;
}

function stringList(v: unknown, where: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new PolicyTestInputError(`${where} must be a list of strings`);
  }
  return v;
}

/** A `{name: [values]}` map (query parameters, headers); a single string stands for a one-value list. */
function valuesMap(v: unknown, where: string): Record<string, string[]> {
  if (v === undefined) return {};
  if (!isObject(v)) throw new PolicyTestInputError(`${where} must be a map of names to lists of strings`);
  return Object.fromEntries(
    Object.entries(v).map(([k, x]) => [k, typeof x === 'string' ? [x] : stringList(x, `${where}.${k}`)]),
  );
}

/** Fills the defaults a hand-written case may leave out (statement lists, chain, depth, session, labels). */
function normaliseCase(raw: unknown, defaults: Json, index: number, namespace: string): PolicyTestCase {
  if (!isObject(raw)) throw new PolicyTestInputError(`case ${index + 1} is not an object`);
  const merged: Json = { ...defaults, ...raw };
  const name = typeof merged.name === 'string' ? merged.name : `case-${index + 1}`;
  const where = `case ${name}`;
  const expect = merged.expect;
  if (typeof expect !== 'string' || !(DECISIONS as readonly string[]).includes(expect)) {
    throw new PolicyTestInputError(`${where}: expect must be one of ${DECISIONS.join(', ')}`);
  }
  if (merged.rule !== undefined && typeof merged.rule !== 'string') {
    throw new PolicyTestInputError(`${where}: rule must be a string`);
  }
  const id = isObject(merged.identity) ? merged.identity : undefined;
  if (id === undefined || typeof id.subject !== 'string') {
    throw new PolicyTestInputError(`${where}: identity.subject is required`);
  }
  const chain = Array.isArray(id.chain) ? (id.chain as PolicyIdentity['chain']) : [];
  const issuer = typeof id.issuer === 'string' ? id.issuer : 'https://kubernetes.default.svc';
  const kind = typeof id.kind === 'string' ? { kind: id.kind } : {};
  const identity: PolicyIdentity = {
    subject: id.subject,
    issuer,
    groups: stringList(id.groups, `${where}: identity.groups`),
    ...kind,
    // The acting party: the current actor, or the subject when the case delegates nothing.
    actor: chain[0] ?? { subject: id.subject, issuer, ...kind },
    chain,
    depth: typeof id.depth === 'number' ? id.depth : chain.length,
    ...(Array.isArray(id.scopes) ? { scopes: stringList(id.scopes, `${where}: identity.scopes`) } : {}),
  };
  const res = isObject(merged.resource) ? merged.resource : undefined;
  if (res === undefined || typeof res.name !== 'string') {
    throw new PolicyTestInputError(`${where}: resource.name is required`);
  }
  const resource = {
    name: res.name,
    namespace: typeof res.namespace === 'string' ? res.namespace : namespace,
    type: (typeof res.type === 'string' ? res.type : 'postgres') as PolicyInput['resource']['type'],
    labels: isObject(res.labels) ? (res.labels as Record<string, string>) : {},
  };
  const cmd = merged.command;
  if (!isObject(cmd) || typeof cmd.type !== 'string') {
    throw new PolicyTestInputError(`${where}: command.type is required (sql, kubernetes or http)`);
  }
  let command: PolicyCommand;
  if (cmd.type === 'sql') {
    const statements = Array.isArray(cmd.statements) ? cmd.statements : [];
    command = {
      type: 'sql',
      statements: statements.map((s: unknown, i) => {
        if (!isObject(s) || typeof s.kind !== 'string') {
          throw new PolicyTestInputError(`${where}: statement ${i + 1} needs a kind`);
        }
        return {
          kind: s.kind as never,
          relations: stringList(s.relations, `${where}: relations`),
          functions: stringList(s.functions, `${where}: functions`),
          sideEffects: s.sideEffects === true,
        };
      }),
    };
  } else if (cmd.type === 'kubernetes') {
    const field = (k: string) => (typeof cmd[k] === 'string' ? cmd[k] : '');
    command = {
      type: 'kubernetes',
      verb: field('verb'),
      apiGroup: field('apiGroup'),
      resource: field('resource'),
      subresource: field('subresource'),
      namespace: field('namespace'),
      name: field('name'),
      nonResourcePath: field('nonResourcePath'),
    };
  } else if (cmd.type === 'http') {
    command = {
      type: 'http',
      method: typeof cmd.method === 'string' ? cmd.method : 'GET',
      path: typeof cmd.path === 'string' ? cmd.path : '/',
      host: typeof cmd.host === 'string' ? cmd.host.toLowerCase() : '',
      query: valuesMap(cmd.query, `${where}: query`),
      headers: valuesMap(cmd.headers, `${where}: headers`),
    };
  } else {
    throw new PolicyTestInputError(`${where}: unknown command type ${JSON.stringify(cmd.type)}`);
  }
  const ses = isObject(merged.session) ? merged.session : {};
  const session = {
    id: typeof ses.id === 'string' ? ses.id : `policy-test-${index + 1}`,
    applicationName: typeof ses.applicationName === 'string' ? ses.applicationName : 'kubectl-chaperone',
    clientAddress: typeof ses.clientAddress === 'string' ? ses.clientAddress : '127.0.0.1',
    inTransaction: ses.inTransaction === true,
  };
  let unixMillis = Date.now();
  if (merged.time !== undefined) {
    unixMillis = typeof merged.time === 'string' || merged.time instanceof Date ? new Date(merged.time).getTime() : NaN;
    if (Number.isNaN(unixMillis)) throw new PolicyTestInputError(`${where}: time must be an RFC 3339 timestamp`);
  }
  return {
    name,
    identity,
    resource,
    command,
    session,
    unixMillis,
    expect: expect as Decision,
    ...(typeof merged.rule === 'string' ? { rule: merged.rule } : {}),
  };
}

/**
 * The inputs file: `{defaults?, cases: [...]}` or a plain list of cases. `defaults` is merged into each
 * case (top-level fields only), so identity and resource need not be repeated.
 */
export function loadCases(file: string, namespace: string): PolicyTestCase[] {
  const docs = readYamlDocuments(file);
  const doc = docs[0];
  const defaults = isObject(doc) && isObject(doc.defaults) ? doc.defaults : {};
  const list: unknown = Array.isArray(doc) ? doc : isObject(doc) ? doc.cases : undefined;
  if (!Array.isArray(list) || list.length === 0) {
    throw new PolicyTestInputError(`${file}: expected a list of cases (or {defaults, cases})`);
  }
  return list.map((raw, i) => normaliseCase(raw, defaults, i, namespace));
}

function describeProblem(p: CompileProblem): string {
  const where = p.line === undefined ? '' : `line ${p.line}${p.column === undefined ? '' : `, column ${p.column}`}: `;
  return `${where}${p.code === undefined ? '' : `${p.code}: `}${p.message}`;
}

/** An AccessPolicy compiled exactly as the operator compiles it. */
export interface CompiledPolicy {
  readonly namespace: string;
  readonly name: string;
  readonly bundle: PolicyBundle;
}

/**
 * Compiles every AccessPolicy of the files with opa, as the operator does. Errors name the policy and, where
 * opa gives them, the line and column.
 */
export async function compilePolicyFiles(
  files: readonly string[],
  opaPath?: string,
): Promise<{
  readonly policies: readonly AccessPolicy[];
  readonly compiled: CompiledPolicy[];
  readonly errors: string[];
}> {
  const policies = loadPolicies(files);
  const compiled: CompiledPolicy[] = [];
  const errors: string[] = [];
  for (const policy of policies) {
    const namespace = policy.metadata.namespace ?? 'default';
    const name = policy.metadata.name ?? '';
    const result = await compilePolicy(
      { namespace, name, spec: policy.spec },
      opaPath === undefined ? {} : { opaPath },
    );
    if (!result.ok) {
      for (const p of result.errors) errors.push(`AccessPolicy ${namespace}/${name}: ${describeProblem(p)}`);
      continue;
    }
    compiled.push({ namespace, name, bundle: { wasm: result.wasm, manifest: result.manifest, digest: result.digest } });
  }
  return { policies, compiled, errors };
}

export async function runPolicyTest(options: PolicyTestOptions): Promise<PolicyTestOutcome> {
  const { policies, compiled, errors: compileErrors } = await compilePolicyFiles(options.policyFiles, options.opaPath);
  const bundles = compiled.map((c) => c.bundle);
  if (compileErrors.length > 0) {
    return { exitCode: 1, stdout: '', stderr: `${compileErrors.map((e) => `error: ${e}`).join('\n')}\n` };
  }
  const namespace = policies[0]?.metadata.namespace ?? 'default';
  const cases = loadCases(options.inputsFile, namespace);
  let now = Date.now();
  const engine = new PolicyEngine({ clock: () => now, cacheSize: 0 });
  await engine.replaceBundles(bundles);
  const broken = engine.bundles().filter((b) => b.error !== undefined);
  if (broken.length > 0) {
    return {
      exitCode: 1,
      stdout: '',
      stderr: broken.map((b) => `error: bundle of ${b.policy} does not load: ${b.error ?? ''}`).join('\n') + '\n',
    };
  }
  const results: CaseResult[] = cases.map((c) => {
    now = c.unixMillis;
    const { combined } = engine.evaluateAll({
      identity: c.identity,
      resource: c.resource,
      command: c.command,
      session: c.session,
    });
    const passed = combined.decision === c.expect && (c.rule === undefined || c.rule === combined.rule);
    return {
      name: c.name,
      expected: c.expect,
      ...(c.rule === undefined ? {} : { expectedRule: c.rule }),
      decision: combined.decision,
      rule: combined.rule,
      policy: combined.policy,
      reasons: combined.reasons,
      ...(combined.message === undefined ? {} : { message: combined.message }),
      passed,
    };
  });
  const failed = results.filter((r) => !r.passed).length;
  const report: PolicyTestReport = {
    apiVersion: 'chaperone.dev/v1alpha1',
    kind: 'PolicyTestReport',
    policies: engine.bundles().map((b) => ({ name: b.policy, digest: b.digest })),
    results,
    summary: { passed: results.length - failed, failed },
  };
  return {
    exitCode: failed === 0 ? 0 : 1,
    stdout: render(report, options.output),
    stderr: options.output === 'table' ? `${report.summary.passed} passed, ${failed} failed\n` : '',
  };
}

function render(report: PolicyTestReport, output: OutputFormat): string {
  switch (output) {
    case 'json':
      return `${JSON.stringify(report, null, 2)}\n`;
    case 'yaml':
      return stringify(report);
    case 'table':
      return formatTable(
        ['CASE', 'EXPECTED', 'GOT', 'RULE', 'RESULT'],
        report.results.map((r) => [
          r.name,
          r.expectedRule === undefined ? r.expected : `${r.expected} (${r.expectedRule})`,
          r.decision,
          r.rule,
          r.passed ? 'PASS' : 'FAIL',
        ]),
      );
  }
}

export const POLICY_TEST_USAGE = `Usage:
  kubectl chaperone policy test -f POLICY.yaml -i CASES.yaml [-o table|json|yaml] [--opa PATH]

Compiles AccessPolicies locally with opa, as the operator does, and evaluates each case with the sidecar's
policy engine. Prints CASE, EXPECTED, GOT, RULE, RESULT. Exit 0: every case passed; 1: a case failed, a
policy does not compile or a file cannot be read; 2: usage.

Flags:
  -f, --filename FILE   AccessPolicy YAML (repeatable; multi-document files and v1 Lists allowed)
  -i, --inputs FILE     test cases (see examples/policy-tests/)
  -o, --output FORMAT   table (default), json or yaml
      --opa PATH        the opa binary (default: $CHAPERONE_OPA, else opa beside kubectl-chaperone,
                        else opa on PATH)
`;

/** kubectl chaperone policy test: flags in, exit code out. */
export async function run(args: string[], io: CommandIo): Promise<number> {
  const usage = (message: string): number => {
    io.stderr.write(`error: ${message}\n\n${POLICY_TEST_USAGE}`);
    return 2;
  };
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        filename: { type: 'string', short: 'f', multiple: true },
        inputs: { type: 'string', short: 'i' },
        output: { type: 'string', short: 'o' },
        opa: { type: 'string' },
      },
    }));
  } catch (err) {
    return usage((err as Error).message);
  }
  const { filename, inputs, output = 'table' } = values;
  if (!(OUTPUT_FORMATS as readonly string[]).includes(output)) return usage('--output must be table, json or yaml');
  if (filename === undefined || filename.length === 0) return usage('policy test needs -f POLICY.yaml');
  if (inputs === undefined) return usage('policy test needs -i CASES.yaml');
  try {
    const opa = findOpa({
      flag: values.opa,
      env: process.env,
      executableDir: executableDir(),
      repositoryOpa: repositoryOpa(),
    });
    io.stderr.write(await opaVersionWarning(opa));
    const outcome = await runPolicyTest({
      policyFiles: filename,
      inputsFile: inputs,
      output: output as OutputFormat,
      opaPath: opa.path,
    });
    io.stdout.write(outcome.stdout);
    io.stderr.write(outcome.stderr);
    return outcome.exitCode;
  } catch (err) {
    if (err instanceof PolicyTestInputError || err instanceof OpaNotFoundError) {
      io.stderr.write(`error: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
