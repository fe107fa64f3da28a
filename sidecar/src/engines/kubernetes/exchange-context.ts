// What every part of a Kubernetes exchange shares: the endpoint's context, the decision cache's key of a
// command, the decision of non-resource URLs (discovery stays open) and which requests carry Secrets.
import type { CombinedDecision, KubernetesCommand } from '@chaperone/api';
import type { AgentSession, ResourceContext } from '../../core/agent-session.ts';
import { builtInDecision } from '../../core/command.ts';
import type { EngineServices } from '../../core/engine.ts';
import type { SidecarError } from '../../core/errors.ts';
import type { Logger } from '../../core/observability/logger.ts';
import type { KubernetesListenerConfig } from '../../config.ts';
import type { ClientSessions } from '../http-base/client-sessions.ts';
import type { CredentialFile, Upstream } from '../http-base/upstream.ts';
import type { IncomingMessage } from 'node:http';
import { impliedCommands } from './implied-commands.ts';
import { proxyRefusal } from './kubelet-paths.ts';
import type { RequestInfo } from './request-info.ts';

/** What an exchange needs from its endpoint (kubernetes-engine.ts), so the two do not import each other. */
export interface ExchangeContext {
  readonly config: KubernetesListenerConfig;
  readonly services: EngineServices;
  readonly resource: ResourceContext;
  readonly logger: Logger;
  readonly upstream: Upstream;
  readonly credential: CredentialFile;
  readonly sessions: ClientSessions;
  connectionRefusal(req: IncomingMessage): SidecarError | undefined;
}

export const OUTSIDE_TRANSACTION = { inTransaction: false } as const;

/** Non-resource URLs every authenticated client may read (the API server's system:discovery and public-info roles). */
const DISCOVERY = /^\/(?:apis?(?:\/[^/]+){0,2}|version|openapi\/v2|openapi\/v3(?:\/.*)?|healthz|livez|readyz)\/?$/;

/** The decision cache's key of a Kubernetes command: every field the policy reads. */
export function kubernetesFingerprint(c: KubernetesCommand): string {
  return `k8s\0${c.verb}\0${c.apiGroup}\0${c.resource}\0${c.subresource}\0${c.namespace}\0${c.name}\0${c.nonResourcePath}`;
}

/**
 * A non-resource request (`/healthz`, `/metrics`, `/apis`) is decided by policy (rules with
 * `nonResourceURLs`). Discovery, version and health documents, which the API server opens to every
 * authenticated client (system:discovery, system:public-info-viewer), stay readable when no rule names
 * them — kubectl cannot work without them — and a rule can still deny them.
 */
export function decideNonResource(session: AgentSession, command: KubernetesCommand, path: string): CombinedDecision {
  const description = { command, fingerprint: kubernetesFingerprint(command), text: `${command.verb} ${path}` };
  const decision = session.evaluate(description, OUTSIDE_TRANSACTION);
  const noRule = decision.rule === 'default' || decision.rule === 'no-policy';
  if (noRule && DISCOVERY.test(path) && (command.verb === 'get' || command.verb === 'head')) {
    return builtInDecision('allow', 'discovery', 'discovery documents are public to every authenticated client');
  }
  return decision;
}

const STRICTNESS = { allow: 0, approve: 1, deny: 2 } as const;

/**
 * The decision of a resource request: the strictest of its own and of every command it implies
 * (implied-commands.ts; `parts` as RequestInfo.parts), ties to its own; a proxy the engine cannot read
 * (an unknown kubelet path, kubelet-paths.ts) is denied whatever the policy says. Evaluated, not recorded.
 */
export function decideResource(
  session: AgentSession,
  command: KubernetesCommand,
  parts: readonly string[],
  text: string,
): CombinedDecision {
  const refused = proxyRefusal(command, parts);
  if (refused !== undefined) return builtInDecision('deny', 'undecidable-proxy', refused);
  let decision = session.evaluate({ command, fingerprint: kubernetesFingerprint(command), text }, OUTSIDE_TRANSACTION);
  for (const implied of impliedCommands(command, parts)) {
    const description = { command: implied.command, fingerprint: kubernetesFingerprint(implied.command), text };
    const other = session.evaluate(description, OUTSIDE_TRANSACTION);
    if (STRICTNESS[other.decision] > STRICTNESS[decision.decision]) {
      decision = { ...other, reasons: [implied.why, ...other.reasons] };
    }
  }
  return decision;
}

/** Whether a request's responses carry Secret values. */
export function touchesSecrets(info: RequestInfo): boolean {
  return info.isResourceRequest && info.apiGroup === '' && info.resource === 'secrets';
}
