// Renders an AccessPolicy spec into one Rego module (package chaperone.policy) whose rule `result`
// implements the PolicyResult contract of @chaperone/api (docs/policy.md). Every user string reaches the
// module as a JSON literal, never as raw text, and the output depends only on the spec, so the same spec
// always renders the same bytes (and the compiled bundle gets the same digest).
import type { BundleManifest } from '@chaperone/api';
import type { AccessPolicySpec, ActorCondition, MaskingRule, PolicyRule, ApprovalRequirement } from '@chaperone/api';
import { POLICY_ENTRYPOINT, CUSTOM_REGO_PACKAGE, MAX_GRANT_SECONDS, WEEKDAYS } from '@chaperone/api';

export interface PolicySource {
  readonly namespace: string;
  readonly name: string;
  readonly spec: AccessPolicySpec;
}

/** Shipped next to the wasm; the sidecar fills input.time.zones for `timeZones` (plus UTC). */
export type { BundleManifest } from '@chaperone/api';

export interface RenderedPolicy {
  readonly rego: string;
  /** The user's raw Rego module, verbatim, when spec.rego is set. */
  readonly customRego?: string;
  readonly manifest: BundleManifest;
}

export interface RenderProblem {
  readonly message: string;
  readonly code: string;
  readonly line?: number;
  readonly column?: number;
}

/** The spec cannot be rendered (errors the CRD schema should have caught, or a bad raw Rego package). */
export class PolicyRenderError extends Error {
  readonly problems: readonly RenderProblem[];
  constructor(problems: readonly RenderProblem[]) {
    super(problems.map((p) => p.message).join('; '));
    this.name = 'PolicyRenderError';
    this.problems = problems;
  }
}

type PatternMode = 'plain' | 'path' | 'method';

const DEFAULT_TIMEOUT_SECONDS = 900;
/** Rule names the result uses for non-rule outcomes; a declarative rule may not take them. */
export const RESERVED_RULE_NAMES: readonly string[] = [
  'default',
  'rego',
  'invalid-input',
  'no-policy',
  'invalid-result',
  'evaluation-error',
  'load-error',
];

/** Fields the API server defaults may still be missing in objects built by hand. */
function orDefault<T>(value: T | undefined, fallback: T): T {
  return value ?? fallback;
}
const CLOCK = /^([01][0-9]|2[0-3]):([0-5][0-9])$/;

/** A Rego literal for any JSON value; strings are made well-formed so no lone surrogate reaches OPA. */
export function regoLiteral(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'string' ? v.toWellFormed() : v));
}

/** Parses a Go-style duration (1h30m, 90s, 1.5h) into whole seconds, rounding up. */
export function durationSeconds(duration: string): number {
  const unit: Readonly<Record<string, number>> = { ns: 1e-9, us: 1e-6, µs: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };
  const re = /([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let consumed = 0;
  for (const m of duration.matchAll(re)) {
    total += Number(m[1]) * (unit[m[2] ?? ''] ?? 0);
    consumed += m[0].length;
  }
  if (duration.length === 0 || consumed !== duration.length)
    throw new Error(`invalid duration ${JSON.stringify(duration)}`);
  return Math.ceil(total);
}

function escapeRegex(text: string): string {
  return text.replace(/[\\^$.|?*+()[\]{}]/g, '\\$&');
}

/** Translates a pattern to an anchored RE2 expression. */
export function globToRegex(pattern: string, mode: PatternMode): string {
  if (mode !== 'path') return '(?s)^' + pattern.split('*').map(escapeRegex).join('.*') + '$';
  let out = '';
  let i = 0;
  while (i < pattern.length) {
    if (pattern.startsWith('/**', i) && (i + 3 === pattern.length || pattern[i + 3] === '/')) {
      out += '(?:/.*)?'; // "/**" stands for zero or more whole segments
      i += 3;
    } else if (pattern.startsWith('**', i)) {
      out += '.*';
      i += 2;
    } else if (pattern[i] === '*') {
      out += '[^/]*';
      i += 1;
    } else {
      out += escapeRegex(pattern[i] ?? '');
      i += 1;
    }
  }
  return '(?s)^' + out + '$';
}

/** Collects pattern-list helper functions, de-duplicated by content, named in order of first use. */
class PatternHelpers {
  private readonly byKey = new Map<string, string>();
  private readonly bodies: string[] = [];
  private verbsDoneUsed = false;

  helper(patterns: readonly string[], mode: PatternMode): string {
    const normalised = [...new Set(mode === 'method' ? patterns.map((p) => p.toUpperCase()) : patterns)].sort();
    const key = mode + '\u0000' + JSON.stringify(normalised);
    const existing = this.byKey.get(key);
    if (existing !== undefined) return existing;
    const name = `pattern_${this.byKey.size}`;
    this.byKey.set(key, name);
    const literals: string[] = [];
    const clauses: string[] = [];
    for (const p of normalised) {
      if (!p.includes('*')) {
        literals.push(p);
      } else if (/^\*+$/.test(p)) {
        clauses.push(`${name}(x) if is_string(x)`);
      } else if (mode !== 'path' && /^[^*]+\*+$/.test(p)) {
        clauses.push(`${name}(x) if startswith(x, ${regoLiteral(p.replace(/\*+$/, ''))})`);
      } else if (mode !== 'path' && /^\*+[^*]+$/.test(p)) {
        clauses.push(`${name}(x) if endswith(x, ${regoLiteral(p.replace(/^\*+/, ''))})`);
      } else if (mode !== 'path' && /^\*+[^*]+\*+$/.test(p)) {
        clauses.push(`${name}(x) if contains(x, ${regoLiteral(p.replace(/^\*+|\*+$/g, ''))})`);
      } else {
        clauses.push(`${name}(x) if regex.match(${regoLiteral(globToRegex(p, mode))}, x)`);
      }
    }
    if (literals.length > 0) clauses.unshift(`${name}(x) if x in ${regoSet(literals)}`);
    this.bodies.push(`# ${regoLiteral(normalised)} (${mode})`, ...clauses, '');
    return name;
  }

  /**
   * The verbs a Kubernetes request does, for deny and approve rules: its own, and `delete` for an eviction
   * (`create` of `pods/eviction`), which deletes the pod as surely as a delete does.
   */
  verbsDone(): string {
    if (!this.verbsDoneUsed) {
      this.verbsDoneUsed = true;
      this.bodies.push(
        '# The verbs a Kubernetes request does: an eviction deletes its pod.',
        'kubernetes_verbs_done(c) := {c.verb, "delete"} if {',
        '\tc.verb == "create"',
        '\tc.subresource == "eviction"',
        '} else := {c.verb}',
        '',
      );
    }
    return 'kubernetes_verbs_done';
  }

  render(): string[] {
    return this.bodies;
  }
}

function regoSet(values: readonly string[]): string {
  return '{' + [...new Set(values)].sort().map(regoLiteral).join(', ') + '}';
}

function parseClock(value: string, where: string, problems: RenderProblem[]): number {
  const m = CLOCK.exec(value);
  if (m === null) {
    problems.push({ code: 'invalid_time', message: `${where}: ${JSON.stringify(value)} is not HH:MM` });
    return 0;
  }
  return Number(m[1]) * 60 + Number(m[2]);
}

function validTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** Qualifies a schema.name pattern: an unqualified pattern matches the name in any schema. */
function qualify(pattern: string): string {
  return pattern.includes('.') ? pattern : '*.' + pattern;
}

function nonEmpty(list: readonly string[] | undefined): list is readonly string[] {
  return list !== undefined && list.length > 0;
}

/** approval.grants.maxDuration when absent. */
const DEFAULT_GRANT_SECONDS = 3600;

function approvalOf(spec: AccessPolicySpec): ApprovalRequirement | undefined {
  const a = spec.approval;
  if (a === undefined) return undefined;
  return {
    approverGroups: a.approverGroups ?? [],
    approvers: a.approvers ?? [],
    requiredApprovals: orDefault(a.requiredApprovals, 1),
    timeoutSeconds: durationSeconds(orDefault(a.timeout, `${DEFAULT_TIMEOUT_SECONDS}s`)),
    allowSelfApproval: orDefault(a.allowSelfApproval, false),
    ...(a.grants === undefined
      ? {}
      : {
          grants: {
            scopes: [...new Set(a.grants.scopes)],
            maxSeconds: Math.min(
              MAX_GRANT_SECONDS,
              Math.max(1, durationSeconds(orDefault(a.grants.maxDuration, `${DEFAULT_GRANT_SECONDS}s`))),
            ),
          },
        }),
  };
}

function maskingOf(policy: string, masking: readonly MaskingRule[] | undefined): unknown[] {
  return (masking ?? []).map((m) => ({
    rule: `${policy}/${m.name}`,
    columns: m.columns ?? [],
    detectors: m.detectors ?? [],
    strategy: orDefault(m.strategy, 'redact'),
    types: m.types ?? [],
    keepLast: orDefault(m.keepLast, 4),
    value: orDefault(m.value, ''),
    untraceable: orDefault(m.untraceable, 'redact'),
    denyPredicates: orDefault(m.denyPredicates, false),
  }));
}

/** Finds the package clause of a raw Rego module (comments skipped) and checks it. */
export function checkCustomPackage(source: string): RenderProblem | undefined {
  const lines = source.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const text = (lines[i] ?? '').replace(/#.*$/, '');
    if (text.trim() === '') continue;
    const m = /^(\s*)package\s+(\S+)\s*$/.exec(text);
    if (m === null) break;
    if (m[2] === CUSTOM_REGO_PACKAGE) return undefined;
    return {
      code: 'chaperone_package_error',
      message: `spec.rego must declare "package ${CUSTOM_REGO_PACKAGE}", found "package ${m[2] ?? ''}"`,
      line: i + 1,
      column: (m[1]?.length ?? 0) + 1,
    };
  }
  return {
    code: 'chaperone_package_error',
    message: `spec.rego must start with "package ${CUSTOM_REGO_PACKAGE}"`,
    line: 1,
    column: 1,
  };
}

interface RuleContext {
  readonly helpers: PatternHelpers;
  readonly zones: Set<string>;
  readonly problems: RenderProblem[];
}

function renderTimeWindows(rule: PolicyRule, index: number, ctx: RuleContext): string[] {
  const windows = rule.when?.timeWindows ?? [];
  if (windows.length === 0) return [];
  const out: string[] = [];
  windows.forEach((w, wi) => {
    const where = `rules[${index}].when.timeWindows[${wi}]`;
    const zone = orDefault(w.timeZone, 'UTC');
    if (!validTimeZone(zone)) {
      ctx.problems.push({ code: 'invalid_time_zone', message: `${where}: unknown time zone ${JSON.stringify(zone)}` });
    }
    ctx.zones.add(zone);
    const start = parseClock(w.start, `${where}.start`, ctx.problems);
    const end = parseClock(w.end, `${where}.end`, ctx.problems);
    const days = w.days ?? [];
    const z = `input.time.zones[${regoLiteral(zone)}]`;
    const dayCheck = (set: readonly string[]) =>
      set.length > 0 && set.length < 7 ? [`\t${z}.weekday in ${regoSet(set)}`] : [];
    const body = (lines: string[]) => out.push(`rule_${index}_when if {`, ...lines, '}', '');
    if (start === end) {
      body([...dayCheck(days), `\tis_number(${z}.minute)`]); // 24 hours of each listed day
    } else if (start < end) {
      body([...dayCheck(days), `\t${z}.minute >= ${start}`, `\t${z}.minute < ${end}`]);
    } else {
      // Crossing midnight: the part after midnight belongs to the day the window started on.
      const nextDays = days.map((d) => WEEKDAYS[(WEEKDAYS.indexOf(d) + 1) % 7] ?? d);
      body([...dayCheck(days), `\t${z}.minute >= ${start}`]);
      body([...dayCheck(nextDays), `\t${z}.minute < ${end}`]);
    }
  });
  return out;
}

/** The verbs that do what a deny or approve rule's verbs name (see renderRule). */
const COVERED_VERBS: Readonly<Record<string, readonly string[]>> = {
  get: ['list', 'watch'],
  delete: ['deletecollection'],
  update: ['patch'],
  patch: ['update'],
};

function coveringVerbs(verbs: readonly string[] | undefined): readonly string[] | undefined {
  if (verbs === undefined) return undefined;
  return [...new Set(verbs.flatMap((v) => [v, ...(COVERED_VERBS[v] ?? [])]))];
}

function renderRule(rule: PolicyRule, index: number, ctx: RuleContext): string[] {
  const { helpers } = ctx;
  const allow = rule.decision === 'allow';
  const conds: string[] = [];
  const m = rule.match;
  let usesStatement = false;
  if (m.sql !== undefined) {
    usesStatement = true;
    conds.push('input.command.type == "sql"');
    if (nonEmpty(m.sql.statementKinds)) conds.push(`st.kind in ${regoSet(m.sql.statementKinds)}`);
    // Allow rules need every relation / function to match; deny and approve rules need any one.
    const listCond = (field: string, patterns: readonly string[] | undefined, v: string) => {
      if (!nonEmpty(patterns)) return;
      const h = helpers.helper(patterns.map(qualify), 'plain');
      conds.push(
        allow ? `every ${v} in st.${field} { ${h}(${v}) }` : `some ${v} in st.${field}`,
        ...(allow ? [] : [`${h}(${v})`]),
      );
    };
    listCond('relations', m.sql.relations, 'rel');
    listCond('functions', m.sql.functions, 'fn');
    if (m.sql.sideEffects !== undefined) conds.push(`st.sideEffects == ${m.sql.sideEffects ? 'true' : 'false'}`);
  }
  if (m.kubernetes !== undefined) {
    conds.push('input.command.type == "kubernetes"');
    const k = m.kubernetes;
    // A deny or approve rule covers every request that can do what it names to the objects it names: a
    // collection request (no name: list, watch, deletecollection, create) may touch a named object, and
    // list/watch read what get reads, deletecollection deletes, patch and update both change an object.
    // Allow rules keep RBAC's exact reading (docs/policy.md "Kubernetes").
    const fields: [readonly string[] | undefined, string][] = [
      [allow ? k.verbs : undefined, 'verb'],
      [k.apiGroups, 'apiGroup'],
      [k.resources, 'resource'],
      [k.subresources, 'subresource'],
      [k.namespaces, 'namespace'],
      [allow || !nonEmpty(k.names) ? k.names : [...k.names, ''], 'name'],
    ];
    for (const [patterns, field] of fields) {
      if (nonEmpty(patterns)) conds.push(`${helpers.helper(patterns, 'plain')}(input.command.${field})`);
    }
    const covering = coveringVerbs(k.verbs);
    if (!allow && nonEmpty(covering)) {
      conds.push(`some verb in ${helpers.verbsDone()}(input.command)`, `${helpers.helper(covering, 'plain')}(verb)`);
    }
    // RBAC's reading for allow rules: `pods` is the pods themselves, not pods/exec, pods/log, pods/eviction,
    // pods/ephemeralcontainers or serviceaccounts/token; a subresource is allowed only by a rule naming it
    // (or naming no resources, or `*`). Deny and approve rules without subresources cover them all.
    if (allow && nonEmpty(k.resources) && !nonEmpty(k.subresources) && !k.resources.some((r) => /^\*+$/.test(r))) {
      conds.push('input.command.subresource == ""');
    }
    // RBAC's split: resource rules never match a non-resource request, nonResourceURLs rules only those.
    const nonResource = 'object.get(input.command, "nonResourcePath", "")';
    if (nonEmpty(k.nonResourceURLs)) {
      conds.push(`${nonResource} != ""`, `${helpers.helper(k.nonResourceURLs, 'path')}(${nonResource})`);
    } else conds.push(`${nonResource} == ""`);
  }
  if (m.http !== undefined) {
    conds.push('input.command.type == "http"');
    if (nonEmpty(m.http.methods))
      conds.push(`${helpers.helper(m.http.methods, 'method')}(upper(input.command.method))`);
    if (nonEmpty(m.http.paths)) conds.push(`${helpers.helper(m.http.paths, 'path')}(input.command.path)`);
    if (nonEmpty(m.http.hosts)) {
      const h = helpers.helper(
        m.http.hosts.map((p) => p.toLowerCase()),
        'plain',
      );
      conds.push(`${h}(lower(object.get(input.command, "host", "")))`);
    }
    // Every reading of a named parameter (header) must match for allow rules, any one for deny/approve;
    // a missing one never matches.
    const valuesCond = (field: 'query' | 'headers', entries: [string, readonly string[]][]) => {
      entries.forEach(([name, patterns], i) => {
        if (patterns.length === 0) return;
        const h = helpers.helper(patterns, 'plain');
        const values = `object.get(object.get(input.command, ${regoLiteral(field)}, {}), ${regoLiteral(name)}, [])`;
        const v = `${field === 'query' ? 'q' : 'h'}${String(i)}`;
        conds.push(`count(${values}) > 0`);
        conds.push(...(allow ? [`every ${v} in ${values} { ${h}(${v}) }`] : [`some ${v} in ${values}`, `${h}(${v})`]));
      });
    };
    valuesCond('query', Object.entries(m.http.query ?? {}));
    valuesCond(
      'headers',
      Object.entries(m.http.headers ?? {}).map(([n, p]): [string, readonly string[]] => [n.toLowerCase(), p]),
    );
  }
  const windows = renderTimeWindows(rule, index, ctx);
  if (windows.length > 0) conds.push(`rule_${index}_when`);
  const chain = renderChainConditions(rule, index, ctx);
  conds.push(...chain.conds);
  const header = `# rules[${index}] ${regoLiteral(rule.name)} -> ${rule.decision}`;
  const arg = usesStatement ? 'st' : '_';
  const def =
    conds.length === 0
      ? [`rule_${index}(_) := true`]
      : [`rule_${index}(${arg}) if {`, ...conds.map((c) => '\t' + c), '}'];
  return [header, ...def, '', ...windows, ...chain.helpers];
}

/** Body lines matching party `p` against an actor condition (all set fields). */
function partyConditions(c: ActorCondition, ctx: RuleContext): string[] {
  const lines: string[] = [];
  if (nonEmpty(c.subjects)) lines.push(`${ctx.helpers.helper(c.subjects, 'plain')}(p.subject)`);
  if (nonEmpty(c.issuers)) lines.push(`p.issuer in ${regoSet(c.issuers)}`);
  if (nonEmpty(c.kinds)) lines.push(`p.kind in ${regoSet(c.kinds)}`);
  return lines;
}

/**
 * Conditions on the verified delegation chain (when.actor, when.anyActor, when.minDelegationDepth,
 * when.scopes): the rule's extra body lines and the helper rules they call.
 */
function renderChainConditions(
  rule: PolicyRule,
  index: number,
  ctx: RuleContext,
): { conds: string[]; helpers: string[] } {
  const when = rule.when;
  const conds: string[] = [];
  const helpers: string[] = [];
  const party = (tag: string, c: ActorCondition): string => {
    const name = `rule_${index}_${tag}`;
    const lines = partyConditions(c, ctx);
    if (lines.length === 0) helpers.push(`${name}(p) if is_object(p)`, '');
    else helpers.push(`${name}(p) if {`, ...lines.map((l) => '\t' + l), '}', '');
    return name;
  };
  if (when?.actor !== undefined) conds.push(`${party('actor', when.actor)}(input.identity.actor)`);
  if (when?.anyActor !== undefined) {
    const name = party('any_actor', when.anyActor);
    conds.push('some p in chain_parties', `${name}(p)`);
  }
  if (when?.minDelegationDepth !== undefined) {
    conds.push(`input.identity.depth >= ${Math.trunc(when.minDelegationDepth)}`);
  }
  if (when?.scopes !== undefined && when.scopes.length > 0) {
    const name = `rule_${index}_scopes`;
    helpers.push(
      '# A token the exchange did not narrow carries every scope.',
      // `not input.x` (a reference) is true when x is undefined; `not f(input.x)` is not (OPA rewrites the
      // argument out of the negation), and valid_scopes makes scopes an array when it is defined.
      `${name} if not input.identity.scopes`,
      '',
      `${name} if {`,
      '\tsome s in input.identity.scopes',
      `\ts in ${regoSet(when.scopes)}`,
      '}',
      '',
    );
    conds.push(name);
  }
  return { conds, helpers };
}

/**
 * Renders the Rego module for one AccessPolicy. Throws PolicyRenderError for specs the compiler must
 * reject (bad time zone, approve rules without an approval section, bad raw Rego package, ...).
 */
export function renderRego(source: PolicySource): RenderedPolicy {
  const { spec } = source;
  const policy = `${source.namespace}/${source.name}`;
  const problems: RenderProblem[] = [];
  const helpers = new PatternHelpers();
  const zones = new Set<string>();
  const ctx: RuleContext = { helpers, zones, problems };

  const seen = new Set<string>();
  for (const r of spec.rules) {
    if (seen.has(r.name))
      problems.push({ code: 'duplicate_rule', message: `rule name ${JSON.stringify(r.name)} is used twice` });
    seen.add(r.name);
    if (RESERVED_RULE_NAMES.includes(r.name)) {
      problems.push({ code: 'reserved_rule_name', message: `rule name ${JSON.stringify(r.name)} is reserved` });
    }
  }
  let approval: ApprovalRequirement | undefined;
  try {
    approval = approvalOf(spec);
  } catch (e) {
    problems.push({ code: 'invalid_duration', message: `approval: ${(e as Error).message}` });
  }
  const grants = spec.approval?.grants;
  if (grants !== undefined) {
    try {
      if (durationSeconds(orDefault(grants.maxDuration, '1h')) > MAX_GRANT_SECONDS) {
        problems.push({ code: 'invalid_duration', message: 'approval.grants.maxDuration: at most 24h' });
      }
    } catch {
      // reported above
    }
    if (grants.scopes.length === 0) {
      problems.push({ code: 'invalid_grants', message: 'approval.grants.scopes: name at least one scope' });
    }
  }
  if (approval === undefined && spec.rules.some((r) => r.decision === 'approve')) {
    problems.push({ code: 'missing_approval', message: 'a policy with approve rules needs an approval section' });
  }
  for (const r of spec.rules) {
    if (r.wait !== undefined && r.decision !== 'approve') {
      problems.push({
        code: 'wait_without_approve',
        message: `rule ${JSON.stringify(r.name)}: wait applies to approve rules only`,
      });
    }
  }
  const rawRego = spec.rego !== undefined && spec.rego.trim() !== '';
  if (rawRego) {
    const p = checkCustomPackage(spec.rego ?? '');
    if (p !== undefined) problems.push(p);
  }

  const out: string[] = [
    `# Generated by the Chaperone operator from AccessPolicy ${regoLiteral(policy)}. Do not edit.`,
    '# Contract: PolicyResult in @chaperone/api (api/src/policy.ts); semantics in docs/policy.md.',
    'package chaperone.policy',
    '',
    `policy_name := ${regoLiteral(policy)}`,
    '',
    `default_decision := ${regoLiteral(orDefault(spec.defaultDecision, 'deny') === 'allow' ? 'allow' : 'deny')}`,
    '',
    'strictness := {"allow": 0, "approve": 1, "deny": 2}',
    '',
    `rule_ids := ${regoLiteral(spec.rules.map((r) => r.name))}`,
    '',
    `rule_decisions := ${regoLiteral(spec.rules.map((r) => r.decision))}`,
    '',
    `rule_messages := ${regoLiteral(Object.fromEntries(spec.rules.filter((r) => r.message !== undefined).map((r) => [r.name, r.message])))}`,
    '',
    `masking := ${regoLiteral(maskingOf(policy, spec.masking))}`,
    '',
  ];

  // Input validation: a malformed input is denied, never silently unmatched.
  const ruleLines = spec.rules.flatMap((r, i) => renderRule(r, i, ctx));
  const zoneList = [...zones].sort();
  out.push(
    'input_errors contains "input.version must be 1" if not input.version == 1',
    '',
    'input_errors contains "input.identity is malformed" if not valid_identity',
    '',
    'valid_identity if {',
    '\tis_string(input.identity.subject)',
    '\tis_string(input.identity.issuer)',
    '\tis_array(input.identity.groups)',
    '\tis_array(input.identity.chain)',
    '\tis_number(input.identity.depth)',
    '\tis_string(input.identity.actor.subject)',
    '\tvalid_scopes',
    '}',
    '',
    'valid_scopes if not input.identity.scopes',
    '',
    'valid_scopes if is_array(input.identity.scopes)',
    '',
    '# Every party of the verified chain: the subject, then each actor (current first).',
    'chain_parties := array.concat([subject_party], input.identity.chain)',
    '',
    'subject_party := {"subject": input.identity.subject, "issuer": input.identity.issuer, "kind": input.identity.kind} if {',
    '\tis_string(input.identity.kind)',
    '}',
    '',
    'subject_party := {"subject": input.identity.subject, "issuer": input.identity.issuer} if {',
    '\tnot input.identity.kind',
    '}',
    '',
    'input_errors contains "input.command is malformed" if not valid_command',
    '',
    'valid_command if {',
    '\tinput.command.type == "sql"',
    '\tis_array(input.command.statements)',
    '\tevery st in input.command.statements {',
    '\t\tis_string(st.kind)',
    '\t\tis_array(st.relations)',
    '\t\tis_array(st.functions)',
    '\t\tis_boolean(st.sideEffects)',
    '\t}',
    '}',
    '',
    'valid_command if {',
    '\tinput.command.type == "kubernetes"',
    '\tevery f in ["verb", "apiGroup", "resource", "subresource", "namespace", "name"] {',
    '\t\tis_string(input.command[f])',
    '\t}',
    '}',
    '',
    'valid_command if {',
    '\tinput.command.type == "http"',
    '\tis_string(input.command.method)',
    '\tis_string(input.command.path)',
    '}',
    '',
  );
  if (zoneList.length > 0) {
    out.push(
      `time_zones := ${regoLiteral(zoneList)}`,
      '',
      'input_errors contains concat("", ["input.time.zones lacks ", tz]) if {',
      '\tsome tz in time_zones',
      '\tnot valid_zone(tz)',
      '}',
      '',
      'valid_zone(tz) if {',
      '\tis_string(input.time.zones[tz].weekday)',
      '\tis_number(input.time.zones[tz].minute)',
      '}',
      '',
    );
  }

  // Applicability: the resource (namespace, names or selector) and the identity (subjects).
  const res = spec.resources;
  const resourceBodies: string[][] = [];
  if (res.names !== undefined) resourceBodies.push([`input.resource.name in ${regoSet(res.names)}`]);
  if (res.selector !== undefined) {
    const labels = Object.entries(
      orDefault(res.selector.matchLabels as Readonly<Record<string, string>> | undefined, {}),
    ).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    resourceBodies.push(
      labels.length === 0
        ? ['is_object(input.resource.labels)']
        : labels.map(([k, v]) => `input.resource.labels[${regoLiteral(k)}] == ${regoLiteral(v)}`),
    );
  }
  for (const body of resourceBodies) {
    out.push(
      'covers_resource if {',
      `\tinput.resource.namespace == ${regoLiteral(source.namespace)}`,
      ...body.map((c) => '\t' + c),
      '}',
      '',
    );
  }
  const subjects = spec.subjects ?? [];
  if (subjects.length === 0) {
    out.push('covers_identity := true', '');
  }
  subjects.forEach((s, i) => {
    const conds: string[] = [];
    if (s.issuer !== undefined) conds.push(`input.identity.issuer == ${regoLiteral(s.issuer)}`);
    if (s.subject !== undefined) conds.push(`${helpers.helper([s.subject], 'plain')}(input.identity.subject)`);
    if (s.actor !== undefined)
      conds.push('some actor in input.identity.chain', `${helpers.helper([s.actor], 'plain')}(actor.subject)`);
    if (nonEmpty(s.groups))
      conds.push('some group in input.identity.groups', `${helpers.helper(s.groups, 'plain')}(group)`);
    if (nonEmpty(s.actorKinds)) conds.push(`input.identity.kind in ${regoSet(s.actorKinds)}`);
    if (s.maxDelegationDepth !== undefined) conds.push(`input.identity.depth <= ${Math.trunc(s.maxDelegationDepth)}`);
    out.push(`# subjects[${i}]`);
    if (conds.length === 0) out.push('covers_identity := true', '');
    else out.push('covers_identity if {', ...conds.map((c) => '\t' + c), '}', '');
  });
  out.push(
    'default covers_resource := false',
    '',
    'default covers_identity := false',
    '',
    'default applicable := false',
    '',
    'applicable if {',
    '\tcovers_resource',
    '\tcovers_identity',
    '}',
    '',
    ...ruleLines,
  );

  // First match per unit (each SQL statement, or the one Kubernetes / HTTP request); strictest unit wins.
  if (spec.rules.length === 0) {
    out.push('first_rule(_) := -1', '');
  } else {
    out.push('first_rule(st) := 0 if {', '\trule_0(st)');
    for (let i = 1; i < spec.rules.length; i++) out.push(`} else := ${i} if {`, `\trule_${i}(st)`);
    out.push('} else := -1', '');
  }
  out.push(
    'unit_rules := [first_rule(st) | some st in input.command.statements] if input.command.type == "sql"',
    '',
    'unit_rules := [first_rule(null)] if input.command.type != "sql"',
    '',
    'decision_of(i) := rule_decisions[i] if i >= 0',
    '',
    'decision_of(i) := default_decision if i < 0',
    '',
    'unit_strictness := [strictness[decision_of(i)] | some i in unit_rules]',
    '',
    '# Position of the deciding unit: the strictest, the first one on ties; undefined for an empty command.',
    'winner := min([k | some k, s in unit_strictness; s == max(unit_strictness)])',
    '',
    'default decl_rule_index := -1',
    '',
    'decl_rule_index := unit_rules[winner]',
    '',
    'decl_decision := decision_of(decl_rule_index)',
    '',
    'decl_rule := rule_ids[decl_rule_index] if decl_rule_index >= 0',
    '',
    'decl_rule := "default" if decl_rule_index < 0',
    '',
    'decl_reasons := [concat("", ["rule ", decl_rule, " decided ", decl_decision, " for statement ", format_int(winner + 1, 10), " (", input.command.statements[winner].kind, ")"])] if {',
    '\tdecl_rule_index >= 0',
    '\tinput.command.type == "sql"',
    '}',
    '',
    'decl_reasons := [concat("", ["rule ", decl_rule, " decided ", decl_decision])] if {',
    '\tdecl_rule_index >= 0',
    '\tinput.command.type != "sql"',
    '}',
    '',
    'decl_reasons := [concat("", ["no rule matched; the default decision is ", decl_decision])] if decl_rule_index < 0',
    '',
  );

  if (rawRego) {
    out.push(
      `# Raw Rego (package ${CUSTOM_REGO_PACKAGE}): any deny message denies; approve messages turn an allow into approve.`,
      `custom_deny := {m | some m in data.${CUSTOM_REGO_PACKAGE}.deny}`,
      '',
      `custom_approve := {m | some m in data.${CUSTOM_REGO_PACKAGE}.approve}`,
      '',
      'custom_messages(set, fallback) := msgs if {',
      '\tstrings := sort([m | some m in set; is_string(m)])',
      '\tcount(strings) == count(set)',
      '\tmsgs := strings',
      '} else := array.concat(sort([m | some m in set; is_string(m)]), [fallback])',
      '',
      `custom_shape_errors contains "data.${CUSTOM_REGO_PACKAGE}.deny must be a set" if {`,
      `\tx := data.${CUSTOM_REGO_PACKAGE}.deny`,
      '\tnot is_set(x)',
      '}',
      '',
      `custom_shape_errors contains "data.${CUSTOM_REGO_PACKAGE}.approve must be a set" if {`,
      `\tx := data.${CUSTOM_REGO_PACKAGE}.approve`,
      '\tnot is_set(x)',
      '}',
      '',
      'outcome := {"decision": "deny", "rule": "rego", "reasons": sort(custom_shape_errors)} if {',
      '\tcount(custom_shape_errors) > 0',
      '} else := {"decision": "deny", "rule": "rego", "reasons": custom_messages(custom_deny, "denied by raw Rego")} if {',
      '\tcount(custom_deny) > 0',
      '} else := {"decision": "approve", "rule": "rego", "reasons": custom_messages(custom_approve, "approval required by raw Rego")} if {',
      '\tdecl_decision == "allow"',
      '\tcount(custom_approve) > 0',
      '} else := {"decision": decl_decision, "rule": decl_rule, "reasons": decl_reasons}',
      '',
    );
  } else {
    out.push('outcome := {"decision": decl_decision, "rule": decl_rule, "reasons": decl_reasons}', '');
  }

  out.push(
    'message_part := {"message": rule_messages[outcome.rule]} if rule_messages[outcome.rule]',
    '',
    'default message_part := {}',
    '',
  );
  if (approval === undefined) {
    out.push(
      '# No approval section: nobody could approve, so an approve outcome is denied.',
      'final := object.union(outcome, {"decision": "deny", "reasons": array.concat(outcome.reasons, ["approval required but the policy has no approval section"])}) if outcome.decision == "approve"',
      '',
      'final := outcome if outcome.decision != "approve"',
      '',
      'approval_part := {}',
      '',
    );
  } else {
    out.push(
      'final := outcome',
      '',
      `approval_part := {"approval": object.union(${regoLiteral(approval)}, wait_part)} if final.decision == "approve"`,
      '',
      'default approval_part := {}',
      '',
      '# Approve rules with wait: false answer at once; an identical retry runs once approved.',
      `rule_no_wait := ${regoLiteral(Object.fromEntries(spec.rules.filter((r) => r.wait === false).map((r) => [r.name, true])))}`,
      '',
      'wait_part := {"wait": false} if rule_no_wait[final.rule]',
      '',
      'default wait_part := {}',
      '',
    );
  }
  out.push(
    `# Entrypoint ${POLICY_ENTRYPOINT}.`,
    'result := {',
    '\t"applicable": true,',
    '\t"decision": "deny",',
    '\t"rule": "invalid-input",',
    '\t"reasons": sort(input_errors),',
    '\t"masking": [],',
    '} if count(input_errors) > 0',
    '',
    'result := object.union(object.union(final, message_part), object.union(approval_part, {"applicable": applicable, "masking": masking})) if {',
    '\tcount(input_errors) == 0',
    '}',
    '',
    ...helpers.render(),
  );
  if (problems.length > 0) throw new PolicyRenderError(problems);

  return {
    rego: out.join('\n').replace(/\n+$/, '') + '\n',
    ...(rawRego ? { customRego: spec.rego } : {}),
    manifest: { timeZones: zoneList, policy, entrypoint: POLICY_ENTRYPOINT, rawRego },
  };
}
