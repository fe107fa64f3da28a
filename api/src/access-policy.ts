// AccessPolicy: who may do what on which ProtectedResources, what needs approval, what is masked.
// Written by the security team; compiled by the operator into a WebAssembly bundle (docs/policy.md).
import { GRANT_SCOPES } from './approval-request.ts';
import { Type, type Static, StringEnum, StringMap, Conditions, Duration, DateTime, dnsSubdomain } from './schema.ts';
import type { KubernetesObject } from './meta.ts';

export const DECISIONS = ['allow', 'deny', 'approve'] as const;
export type Decision = (typeof DECISIONS)[number];

/** Statement kinds the PostgreSQL engine's analyser assigns (docs/policy.md lists what each covers). */
export const STATEMENT_KINDS = [
  'select',
  'insert',
  'update',
  'delete',
  'merge',
  'copy-to',
  'copy-from',
  'ddl',
  'dcl',
  'transaction',
  'set',
  'show',
  'call',
  'do',
  'prepare',
  'execute',
  'explain',
  'listen',
  'notify',
  'lock',
  'maintenance',
  'utility',
  'other',
] as const;
export type StatementKind = (typeof STATEMENT_KINDS)[number];

export const MASKING_STRATEGIES = ['redact', 'hash', 'partial', 'null', 'fixed'] as const;
export type MaskingStrategy = (typeof MASKING_STRATEGIES)[number];

export const UNTRACEABLE_ACTIONS = ['redact', 'detect', 'deny'] as const;
export type UntraceableAction = (typeof UNTRACEABLE_ACTIONS)[number];

export const CONTENT_DETECTORS = [
  'email',
  'credit-card',
  'us-ssn',
  'phone',
  'iban',
  'ipv4',
  'ipv6',
  'jwt',
  'secret-key',
] as const;
export type ContentDetector = (typeof CONTENT_DETECTORS)[number];

export const WEEKDAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'] as const;

const patternList = (description: string, maxItems = 64) =>
  Type.Optional(
    Type.Array(Type.String({ description: 'A pattern; * matches any run of characters.', maxLength: 253 }), {
      description,
      maxItems,
    }),
  );

/** A map of names (query parameters, headers) to value patterns. */
const valuePatternMap = (description: string) =>
  Type.Optional(
    Type.Unsafe<Record<string, string[]>>({
      type: 'object',
      description,
      maxProperties: 16,
      additionalProperties: {
        type: 'array',
        description: 'Value patterns; * matches any run of characters.',
        maxItems: 64,
        items: { type: 'string', description: 'A pattern.', maxLength: 253 },
      },
    }),
  );

const clockTime = (description: string) => Type.String({ description, pattern: '^([01][0-9]|2[0-3]):[0-5][0-9]$' });

export const SubjectMatcher = Type.Object(
  {
    issuer: Type.Optional(
      Type.String({ description: 'Token issuer the identity must come from (exact).', maxLength: 2048 }),
    ),
    subject: Type.Optional(
      Type.String({
        description: 'Pattern for the current subject, for example system:serviceaccount:ci:*.',
        maxLength: 512,
      }),
    ),
    actor: Type.Optional(
      Type.String({
        description: 'Pattern that some actor in the delegation chain must match (the parent that delegated).',
        maxLength: 512,
      }),
    ),
    groups: patternList('The identity must be in at least one of these groups.'),
    actorKinds: Type.Optional(
      Type.Array(Type.String({ description: 'An actor kind such as ci, ai-agent, script, human.', maxLength: 63 }), {
        description: 'Kinds of agent (the chaperone.dev/agent-kind claim) this matcher covers.',
        maxItems: 16,
      }),
    ),
    maxDelegationDepth: Type.Optional(
      Type.Integer({
        description: 'Largest delegation chain length covered (0 = only direct, undelegated identities).',
        minimum: 0,
        maximum: 16,
      }),
    ),
  },
  { description: 'Identities a policy covers. All set fields must match.' },
);
export type SubjectMatcher = Static<typeof SubjectMatcher>;

export const RuleMatch = Type.Object(
  {
    sql: Type.Optional(
      Type.Object(
        {
          statementKinds: Type.Optional(
            Type.Array(StringEnum(STATEMENT_KINDS, { description: 'A statement kind.' }), {
              description: 'Statement kinds matched. Empty matches every kind.',
              maxItems: STATEMENT_KINDS.length,
            }),
          ),
          relations: patternList(
            'Relations as schema.table patterns. deny and approve rules match when any relation matches; allow rules only when every relation does.',
          ),
          functions: patternList(
            'Functions as schema.name patterns. deny and approve rules match when any called function matches; allow rules only when every one does.',
          ),
          sideEffects: Type.Optional(
            Type.Boolean({
              description: 'When set, matches only statements whose side-effect flag equals this value.',
            }),
          ),
        },
        { description: 'SQL statement matcher (postgres resources).' },
      ),
    ),
    kubernetes: Type.Optional(
      Type.Object(
        {
          verbs: patternList('Kubernetes verbs (get, list, watch, create, update, patch, delete, ...).'),
          apiGroups: patternList('API groups; the core group is the empty string.'),
          resources: patternList('Resources, for example pods or deployments.'),
          subresources: patternList('Subresources, for example exec, log or status.'),
          namespaces: patternList('Namespaces.'),
          names: patternList('Object names.'),
          nonResourceURLs: patternList(
            'Paths of non-resource requests (/healthz, /metrics, /debug/**; * within a segment, /** across segments). A rule with it matches only non-resource requests, a rule without it only resource requests.',
          ),
        },
        { description: 'Kubernetes API request matcher (kubernetes resources).' },
      ),
    ),
    http: Type.Optional(
      Type.Object(
        {
          methods: patternList('HTTP methods.'),
          paths: patternList('URL path patterns; ** matches across slashes.'),
          hosts: patternList('Upstream host names (lower case; the agent cannot choose the host).'),
          query: valuePatternMap(
            'Query parameter name to value patterns. The parameter must be present; allow rules need every value (every reading) to match, deny and approve rules any one.',
          ),
          headers: valuePatternMap(
            'Request header name (any case) to value patterns. The header must be present; allow rules need every value to match, deny and approve rules any one.',
          ),
        },
        { description: 'HTTP request matcher (http resources).' },
      ),
    ),
  },
  { description: 'What a rule matches. All set matchers must match.' },
);

export const TimeWindow = Type.Object(
  {
    days: Type.Optional(
      Type.Array(StringEnum(WEEKDAYS, { description: 'A weekday.' }), {
        description: 'Weekdays the window applies to. Empty means every day.',
        maxItems: 7,
      }),
    ),
    start: clockTime('Start of the window, HH:MM, inclusive.'),
    end: clockTime('End of the window, HH:MM, exclusive. Earlier than start means the window crosses midnight.'),
    timeZone: Type.String({
      description: 'IANA time zone of start and end. Default UTC.',
      default: 'UTC',
      maxLength: 64,
    }),
  },
  { description: 'A recurring window of time.' },
);

export const ActorCondition = Type.Object(
  {
    subjects: patternList("The party's subject matches one of these patterns.", 32),
    issuers: Type.Optional(
      Type.Array(Type.String({ description: 'An issuer (exact).', maxLength: 2048 }), {
        description: 'The party was authenticated by one of these issuers.',
        maxItems: 16,
      }),
    ),
    kinds: Type.Optional(
      Type.Array(Type.String({ description: 'An agent kind such as ci, ai-agent, script, human.', maxLength: 63 }), {
        description: 'The party has one of these agent kinds.',
        maxItems: 16,
      }),
    ),
  },
  { description: 'A party of the delegation chain. All set fields must match the same party.' },
);
export type ActorCondition = Static<typeof ActorCondition>;

export const PolicyRule = Type.Object(
  {
    name: Type.String({
      description: 'Rule id, unique within the policy; decisions and audit records name it.',
      ...dnsSubdomain,
    }),
    decision: StringEnum(DECISIONS, { description: 'allow, deny, or approve (hold for human approval).' }),
    match: RuleMatch,
    when: Type.Optional(
      Type.Object(
        {
          timeWindows: Type.Optional(
            Type.Array(TimeWindow, { description: 'The rule applies only inside one of these windows.', maxItems: 16 }),
          ),
          actor: Type.Optional({
            ...ActorCondition,
            description: 'The party acting now matches: the current actor, or the subject when nothing was delegated.',
          }),
          anyActor: Type.Optional({
            ...ActorCondition,
            description:
              'Some party of the verified chain matches: the subject or any actor, current or earlier (goes past RFC 8693 §4.1, docs/policy.md).',
          }),
          minDelegationDepth: Type.Optional(
            Type.Integer({
              description: 'The chain has at least this many actors (1 = any delegated identity).',
              minimum: 1,
              maximum: 16,
            }),
          ),
          scopes: Type.Optional(
            Type.Array(Type.String({ description: 'A scope.', maxLength: 256 }), {
              description:
                'The token carries one of these scopes. A token the exchange did not narrow carries every scope.',
              maxItems: 32,
            }),
          ),
        },
        { description: 'Conditions on the request context.' },
      ),
    ),
    message: Type.Optional(
      Type.String({ description: 'Message shown to the client when this rule denies.', maxLength: 1024 }),
    ),
    wait: Type.Optional(
      Type.Boolean({
        description:
          'approve rules only. true (default): the command waits on its connection until it is decided. false: the client is answered at once with ApprovalPending (SQLSTATE 55000) naming the ApprovalRequest, and the identical command sent again on the same session runs once after approval (docs/approvals.md).',
      }),
    ),
  },
  { description: 'An ordered rule; the first rule that matches decides.' },
);
export type PolicyRule = Static<typeof PolicyRule>;

export const MaskingRule = Type.Object(
  {
    name: Type.String({ description: 'Masking rule id, unique within the policy.', ...dnsSubdomain }),
    columns: patternList('Result columns masked, as schema.table.column patterns (or just column).'),
    detectors: Type.Optional(
      Type.Array(StringEnum(CONTENT_DETECTORS, { description: 'A content detector.' }), {
        description: 'Content detectors applied to every text value in results.',
        maxItems: CONTENT_DETECTORS.length,
      }),
    ),
    types: Type.Optional(
      Type.Array(Type.String({ description: 'A PostgreSQL type name, for example inet or bytea.', maxLength: 63 }), {
        description: 'Result columns of these types are masked, whatever they derive from.',
        maxItems: 32,
      }),
    ),
    strategy: StringEnum(MASKING_STRATEGIES, {
      description:
        'redact ([MASKED] in text, a fixed value valid for other types), hash (keyed HMAC-SHA-256, stable for joins), partial (keep the last keepLast characters), null, fixed (value in text, a fixed value valid for other types).',
      default: 'redact',
    }),
    keepLast: Type.Optional(
      Type.Integer({
        description: 'Characters partial keeps at the end of a value. Default 4.',
        minimum: 0,
        maximum: 64,
      }),
    ),
    value: Type.Optional(
      Type.String({
        description: 'What fixed writes in text, json and bytea columns. Default the empty string.',
        maxLength: 256,
      }),
    ),
    untraceable: Type.Optional(
      StringEnum(UNTRACEABLE_ACTIONS, {
        description:
          'What happens to a result column whose lineage cannot be proven (an opaque function, an unknown relation): redact it (default), run every detector on it (detect), or deny the statement.',
        default: 'redact',
      }),
    ),
    denyPredicates: Type.Optional(
      Type.Boolean({
        description:
          'Deny statements that filter, join, group or order on a masked column (the predicate-oracle class). Default false.',
        default: false,
      }),
    ),
  },
  {
    description: 'Masks result fields by column or by content.',
    'x-kubernetes-validations': [
      {
        rule: 'has(self.columns) || has(self.detectors) || has(self.types)',
        message: 'a masking rule needs columns, types or detectors',
      },
    ],
  },
);
export type MaskingRule = Static<typeof MaskingRule>;

export const AccessPolicySpec = Type.Object(
  {
    resources: Type.Object(
      {
        names: Type.Optional(
          Type.Array(Type.String({ description: 'A ProtectedResource name.', ...dnsSubdomain }), {
            description: 'ProtectedResources in this namespace the policy applies to.',
            maxItems: 64,
          }),
        ),
        selector: Type.Optional(
          Type.Object(
            { matchLabels: StringMap({ description: 'Labels a ProtectedResource must carry.' }) },
            { description: 'Selects ProtectedResources by label.' },
          ),
        ),
      },
      {
        description: 'Which ProtectedResources this policy covers.',
        'x-kubernetes-validations': [
          { rule: 'has(self.names) || has(self.selector)', message: 'set resources.names or resources.selector' },
        ],
      },
    ),
    subjects: Type.Optional(
      Type.Array(SubjectMatcher, {
        description: 'Identities covered; one matching entry is enough. Empty covers every authenticated identity.',
        maxItems: 64,
      }),
    ),
    rules: Type.Array(PolicyRule, {
      description: 'Ordered rules; the first match decides. Names are unique.',
      maxItems: 256,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['name'],
    }),
    defaultDecision: StringEnum(['allow', 'deny'], {
      description: 'Decision when no rule matches. Default deny.',
      default: 'deny',
    }),
    approval: Type.Optional(
      Type.Object(
        {
          approverGroups: patternList('Groups (as the API server authenticates them) whose members may approve.', 32),
          approvers: patternList('User names (as the API server authenticates them) who may approve.', 32),
          requiredApprovals: Type.Integer({
            description: 'Distinct approvals needed. Default 1.',
            minimum: 1,
            maximum: 10,
            default: 1,
          }),
          timeout: Duration({
            description: 'How long a held command waits for approval. Default 15m.',
            default: '15m',
          }),
          allowSelfApproval: Type.Boolean({
            description: 'Whether anyone in the requester chain may approve. Default false.',
            default: false,
          }),
          grants: Type.Optional(
            Type.Object(
              {
                scopes: Type.Array(
                  StringEnum(GRANT_SCOPES, {
                    description:
                      'fingerprint: the same normalised statement by the same requester; session: any command this rule holds in the same session; resource: any command this rule holds for the same requester on the resource.',
                  }),
                  {
                    description: 'Scopes approvers may grant.',
                    minItems: 1,
                    maxItems: GRANT_SCOPES.length,
                    'x-kubernetes-list-type': 'set',
                  },
                ),
                maxDuration: Duration({ description: 'Longest grant, at most 24h. Default 1h.', default: '1h' }),
              },
              {
                description:
                  'Lets approvers approve, with the same approvals, later matching commands for a bounded time (a time-bound grant, docs/approvals.md). Absent: every approval covers one command.',
              },
            ),
          ),
        },
        {
          description: 'Who approves commands held by approve rules.',
          'x-kubernetes-validations': [
            {
              rule: 'has(self.approverGroups) || has(self.approvers)',
              message: 'approval needs approverGroups or approvers',
            },
          ],
        },
      ),
    ),
    masking: Type.Optional(
      Type.Array(MaskingRule, {
        description: 'Masking applied to results this policy allows.',
        maxItems: 64,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['name'],
      }),
    ),
    rego: Type.Optional(
      Type.String({
        description:
          'Optional raw Rego module evaluated after the declarative rules (package and entrypoints in docs/policy.md).',
        maxLength: 65536,
      }),
    ),
  },
  {
    description: 'Desired state of an AccessPolicy.',
    'x-kubernetes-validations': [
      {
        rule: "!has(self.rules) || !self.rules.exists(r, r.decision == 'approve') || has(self.approval)",
        message: 'a policy with approve rules needs an approval section',
        fieldPath: '.approval',
      },
    ],
  },
);
export type AccessPolicySpec = Static<typeof AccessPolicySpec>;

export const CompileError = Type.Object(
  {
    message: Type.String({ description: 'The compiler message.', maxLength: 4096 }),
    line: Type.Optional(Type.Integer({ description: 'Line in the Rego module, 1-based.', minimum: 0 })),
    column: Type.Optional(Type.Integer({ description: 'Column in the Rego module, 1-based.', minimum: 0 })),
    code: Type.Optional(Type.String({ description: 'OPA error code, for example rego_parse_error.', maxLength: 128 })),
  },
  { description: 'An error from compiling the policy.' },
);

export const AccessPolicyStatus = Type.Object(
  {
    observedGeneration: Type.Optional(
      Type.Integer({ description: 'The .metadata.generation last compiled.', format: 'int64', minimum: 0 }),
    ),
    conditions: Type.Optional(Conditions('Current state: Ready (compiled and published) with a reason.')),
    bundle: Type.Optional(
      Type.Object(
        {
          digest: Type.String({ description: 'sha256 digest of the compiled bundle, sha256:<hex>.', maxLength: 80 }),
          configMapName: Type.String({ description: 'ConfigMap holding the bundle.', ...dnsSubdomain }),
          sizeBytes: Type.Integer({ description: 'Size of the compiled bundle in bytes.', minimum: 0 }),
          compiledTime: DateTime({ description: 'When the bundle was compiled.' }),
        },
        { description: 'The compiled policy bundle sidecars load.' },
      ),
    ),
    errors: Type.Optional(Type.Array(CompileError, { description: 'Errors of the last compile.', maxItems: 32 })),
  },
  { description: 'Observed state of an AccessPolicy.' },
);
export type AccessPolicyStatus = Static<typeof AccessPolicyStatus>;

export type AccessPolicy = KubernetesObject<'AccessPolicy', AccessPolicySpec, AccessPolicyStatus>;
