// Builders for policy tests: plain objects, written out by hand, so tests do not depend on production code
// to make their inputs.
import type {
  AccessPolicySpec,
  HttpCommand,
  KubernetesCommand,
  PolicyCommand,
  PolicyIdentity,
  SqlCommand,
  SqlStatementFacts,
  StatementKind,
} from '@chaperone/api';
import type { PolicyRequest } from './policy-engine.ts';

export const DEFAULT_ISSUER = 'https://kubernetes.default.svc';

export function identity(overrides: Partial<PolicyIdentity> = {}): PolicyIdentity {
  const chain = overrides.chain ?? [];
  const subject = overrides.subject ?? 'system:serviceaccount:ci:builder';
  const issuer = overrides.issuer ?? DEFAULT_ISSUER;
  const kind = overrides.kind === undefined ? {} : { kind: overrides.kind };
  return {
    subject,
    issuer,
    groups: ['dev'],
    actor: chain[0] ?? { subject, issuer, ...kind },
    chain,
    depth: chain.length,
    ...overrides,
  };
}

export function stmt(
  kind: StatementKind,
  relations: string[] = [],
  functions: string[] = [],
  sideEffects = false,
): SqlStatementFacts {
  return { kind, relations, functions, sideEffects };
}

export function sql(...statements: SqlStatementFacts[]): SqlCommand {
  return { type: 'sql', statements };
}

export function kube(overrides: Partial<Omit<KubernetesCommand, 'type'>> = {}): KubernetesCommand {
  return {
    type: 'kubernetes',
    verb: 'get',
    apiGroup: '',
    resource: 'pods',
    subresource: '',
    namespace: 'dev',
    name: '',
    nonResourcePath: '',
    ...overrides,
  };
}

export function http(method: string, path: string, more: Partial<Omit<HttpCommand, 'type'>> = {}): HttpCommand {
  return { type: 'http', method, path, host: 'api.example.com', query: {}, headers: {}, ...more };
}

export function request(command: PolicyCommand, overrides: Partial<PolicyRequest> = {}): PolicyRequest {
  return {
    identity: identity(),
    resource: { name: 'db', namespace: 'team', type: 'postgres', labels: { app: 'pg' } },
    command,
    session: { id: 's-1', applicationName: 'psql', clientAddress: '127.0.0.1', inTransaction: false },
    ...overrides,
  };
}

/** A spec with the defaults the API server would fill in. */
export function spec(partial: Partial<AccessPolicySpec> & Pick<AccessPolicySpec, 'rules'>): AccessPolicySpec {
  return { resources: { names: ['db'] }, defaultDecision: 'deny', ...partial };
}
