// The decision of one token exchange, pure: given the authenticated subject (and actor) token, what the
// client asked for and the DelegationPolicies, either the grant (who, which chain, audiences, resources,
// scopes, expiry, under which rule) or an ExchangeRefusal that says exactly why not. Narrowing holds at
// every hop: resources and scopes only shrink, the lifetime ends no later than the parent's (and the
// actor token's) and within the rule's maximum. docs/identity.md describes every rule applied here.
import {
  parseGoDuration,
  type Actor,
  type DelegationPolicy,
  type DelegationRule,
  type PartyMatcher,
} from '@chaperone/api';
import { ExchangeRefusal } from './exchange-refusal.ts';
import { matchesPattern } from './pattern.ts';
import type { AuthenticatedToken, MayAct, Party } from './token-authenticator.ts';

/** The longest chain the Identity schema (and so a Session) can hold. */
export const MAX_CHAIN_LENGTH = 16;

export interface ExchangeAsk {
  /** `audience` parameters; empty: the default audience. */
  readonly audiences: readonly string[];
  /** `resource` parameters; empty: inherit the parent's. */
  readonly resources: readonly string[];
  /** `scope`, split; undefined: inherit the parent's. */
  readonly scopes?: readonly string[];
  /** `requested_lifetime`, seconds. */
  readonly lifetimeSeconds?: number;
  /** `may_act`: the only party that may act next on the issued token. */
  readonly mayAct?: MayAct;
}

export interface DelegationSettings {
  /** iss of issued tokens; always an allowed audience (a token meant for further exchange). */
  readonly selfIssuer: string;
  /** Longest lifetime of any issued token, ms (rules cannot exceed it). */
  readonly maxLifetimeMs: number;
  /** Audiences allowed without a rule (narrowing exchanges) and the default audience list's first entry. */
  readonly defaultAudience: string;
}

export interface Grant {
  readonly subject: Party;
  /** Actors of the issued token, the current actor first. */
  readonly chain: readonly Actor[];
  readonly audiences: readonly string[];
  readonly resources?: readonly string[];
  readonly scopes?: readonly string[];
  readonly mayAct?: MayAct;
  /** Epoch ms. */
  readonly expiresAt: number;
  /** namespace/policy/rule, or "narrow" for an exchange without a new actor. */
  readonly rule: string;
}

/** Fields the API server defaults may be missing from objects built by hand. */
function orDefault<T>(value: T | undefined, fallback: T): T {
  return value ?? fallback;
}

function describe(p: Party): string {
  return `${p.subject} (${p.kind === undefined ? 'no kind' : `kind ${p.kind}`}, issuer ${p.issuer})`;
}

export function partyMatches(m: PartyMatcher, p: Party): boolean {
  if (m.issuer !== undefined && m.issuer !== p.issuer) return false;
  if (m.subject !== undefined && !matchesPattern(m.subject, p.subject)) return false;
  if (m.kinds !== undefined && m.kinds.length > 0 && (p.kind === undefined || !m.kinds.includes(p.kind))) return false;
  return true;
}

function asParty(a: Actor): Party {
  return { subject: a.subject, issuer: a.issuer ?? '', ...(a.kind === undefined ? {} : { kind: a.kind }) };
}

/** The party presenting the subject token: its current actor, or its subject when it has none. */
export function delegatorOf(subject: AuthenticatedToken): Party {
  const current = subject.chain[0];
  return current === undefined ? subject.party : asParty(current);
}

interface FoundRule {
  readonly id: string;
  readonly rule: DelegationRule;
}

/** The first rule (policies by name, rules in order) that lets `from` delegate to `to` for `subject`. */
export function findRule(
  policies: readonly DelegationPolicy[],
  from: Party,
  to: Party,
  subject: Party,
): FoundRule | undefined {
  const sorted = [...policies].sort((a, b) => ((a.metadata.name ?? '') < (b.metadata.name ?? '') ? -1 : 1));
  for (const policy of sorted) {
    for (const rule of policy.spec.rules) {
      if (!rule.from.some((m) => partyMatches(m, from))) continue;
      if (!rule.to.some((m) => partyMatches(m, to))) continue;
      if (
        rule.subjects !== undefined &&
        rule.subjects.length > 0 &&
        !rule.subjects.some((m) => partyMatches(m, subject))
      ) {
        continue;
      }
      return { id: `${policy.metadata.namespace ?? ''}/${policy.metadata.name ?? ''}/${rule.name}`, rule };
    }
  }
  return undefined;
}

function narrowList(
  kind: 'resource' | 'scope',
  asked: readonly string[] | undefined,
  parent: readonly string[] | undefined,
  allowed: readonly string[] | undefined,
  ruleId: string,
): string[] | undefined {
  const error = kind === 'resource' ? 'invalid_target' : 'invalid_scope';
  const chosen = asked ?? parent;
  if (chosen === undefined) {
    if (allowed !== undefined && allowed.length > 0) {
      throw new ExchangeRefusal(
        error,
        `${kind}-required`,
        `rule ${ruleId} allows only ${kind}s matching ${allowed.join(', ')}: name them with the ${kind} parameter`,
      );
    }
    return undefined;
  }
  for (const item of chosen) {
    if (parent !== undefined && !parent.includes(item)) {
      throw new ExchangeRefusal(
        error,
        `${kind}-widened`,
        `${kind} ${JSON.stringify(item)} is not among the subject token's ${kind}s (${parent.join(' ') || 'none'}): a child token can only narrow`,
      );
    }
    if (allowed !== undefined && allowed.length > 0 && !allowed.some((p) => matchesPattern(p, item))) {
      throw new ExchangeRefusal(
        error,
        `${kind}-not-allowed`,
        `${kind} ${JSON.stringify(item)} is not allowed by rule ${ruleId} (${allowed.join(', ')})`,
      );
    }
  }
  return [...new Set(chosen)];
}

/**
 * Decides an exchange. Without an actor token the subject only narrows its own token (no new hop, no rule
 * needed, the exchange's maximum lifetime); with one, a DelegationPolicy rule must let the subject token's
 * current party delegate to the actor, within the rule's depth, audiences, resources, scopes and lifetime.
 */
export function decideExchange(
  subject: AuthenticatedToken,
  actor: AuthenticatedToken | undefined,
  ask: ExchangeAsk,
  policies: readonly DelegationPolicy[],
  settings: DelegationSettings,
  now: number,
): Grant {
  if (subject.expiresAt <= now) {
    throw new ExchangeRefusal('invalid_grant', 'expired', 'subject_token has expired');
  }
  let chain: Actor[];
  let ruleId = 'narrow';
  let rule: DelegationRule | undefined;
  if (actor === undefined) {
    chain = [...subject.chain];
  } else {
    if (actor.expiresAt <= now) throw new ExchangeRefusal('invalid_grant', 'expired', 'actor_token has expired');
    const mayAct = subject.mayAct;
    if (mayAct !== undefined && (mayAct.subject !== actor.party.subject || mayAct.issuer !== actor.party.issuer)) {
      throw new ExchangeRefusal(
        'unauthorized_client',
        'may-act-mismatch',
        `the subject token's may_act names ${mayAct.subject}${mayAct.issuer === undefined ? '' : ` of ${mayAct.issuer}`}, not ${describe(actor.party)}`,
      );
    }
    const from = delegatorOf(subject);
    const found = findRule(policies, from, actor.party, subject.party);
    if (found === undefined) {
      throw new ExchangeRefusal(
        'unauthorized_client',
        'no-delegation-rule',
        `no DelegationPolicy rule lets ${describe(from)} delegate to ${describe(actor.party)}`,
      );
    }
    ruleId = found.id;
    rule = found.rule;
    const newActor: Actor = {
      issuer: actor.party.issuer,
      ...(actor.party.kind === undefined ? {} : { kind: actor.party.kind }),
      subject: actor.party.subject,
    };
    chain = [newActor, ...subject.chain];
    const maxDepth = Math.min(orDefault(rule.maxDepth, 1), MAX_CHAIN_LENGTH);
    if (chain.length > maxDepth) {
      throw new ExchangeRefusal(
        'unauthorized_client',
        'depth-exceeded',
        `delegation depth ${String(chain.length)} exceeds the maximum ${String(maxDepth)} of rule ${ruleId}`,
      );
    }
  }

  // Audiences: what the rule allows (without a rule: the default audience), plus the exchange itself.
  const allowedAudiences = [...(rule?.audiences ?? [settings.defaultAudience]), settings.selfIssuer];
  const audiences = ask.audiences.length === 0 ? [settings.defaultAudience] : [...new Set(ask.audiences)];
  for (const a of audiences) {
    if (!allowedAudiences.includes(a)) {
      throw new ExchangeRefusal(
        'invalid_target',
        'audience-not-allowed',
        `audience ${JSON.stringify(a)} is not allowed${rule === undefined ? '' : ` by rule ${ruleId}`} (${allowedAudiences.join(', ')})`,
      );
    }
    // Narrowing narrows audiences too: without an actor, a child is for the parent's audiences (or the
    // exchange). Before, a stolen offer (a token for the exchange alone, naming its actor in may_act) was
    // narrowed by its thief into a token for `chaperone`, which sidecars took as the offer's subject.
    if (actor === undefined && a !== settings.selfIssuer && !subject.audiences.includes(a)) {
      throw new ExchangeRefusal(
        'invalid_target',
        'audience-widened',
        `audience ${JSON.stringify(a)} is not among the subject token's (${subject.audiences.join(', ')}); a narrowed token keeps to them`,
      );
    }
  }
  const resources = narrowList(
    'resource',
    ask.resources.length === 0 ? undefined : ask.resources,
    subject.resources,
    rule?.resources,
    ruleId,
  );
  const scopes = narrowList('scope', ask.scopes, subject.scopes, rule?.scopes, ruleId);

  // Lifetime: never past the parent (nor the actor's own token), never past the maximum.
  const ruleMax = rule === undefined ? settings.maxLifetimeMs : parseGoDuration(orDefault(rule.maxLifetime, '15m'));
  const maxLifetimeMs = Math.min(ruleMax, settings.maxLifetimeMs);
  const parentEnds = Math.min(subject.expiresAt, actor?.expiresAt ?? Number.POSITIVE_INFINITY);
  let expiresAt: number;
  if (ask.lifetimeSeconds !== undefined) {
    const asked = ask.lifetimeSeconds * 1000;
    if (asked > maxLifetimeMs) {
      throw new ExchangeRefusal(
        'invalid_request',
        'lifetime-exceeds-maximum',
        `requested_lifetime ${String(ask.lifetimeSeconds)}s exceeds the maximum ${String(Math.floor(maxLifetimeMs / 1000))}s${rule === undefined ? '' : ` of rule ${ruleId}`}`,
      );
    }
    if (now + asked > parentEnds) {
      throw new ExchangeRefusal(
        'invalid_request',
        'lifetime-exceeds-parent',
        `requested_lifetime ${String(ask.lifetimeSeconds)}s would outlive the ${subject.expiresAt <= parentEnds ? 'subject' : 'actor'} token, which expires in ${String(Math.floor((parentEnds - now) / 1000))}s`,
      );
    }
    expiresAt = now + asked;
  } else {
    expiresAt = Math.min(parentEnds, now + maxLifetimeMs);
  }

  // may_act: a narrowing exchange keeps the subject token's (dropping it would widen the token).
  let mayAct = ask.mayAct;
  if (actor === undefined && subject.mayAct !== undefined) {
    if (
      mayAct !== undefined &&
      (mayAct.subject !== subject.mayAct.subject || mayAct.issuer !== subject.mayAct.issuer)
    ) {
      throw new ExchangeRefusal(
        'invalid_request',
        'may-act-widened',
        'the subject token already names who may act on it; a narrowed token keeps that may_act',
      );
    }
    mayAct = subject.mayAct;
  }
  return {
    subject: subject.party,
    chain,
    audiences,
    ...(resources === undefined ? {} : { resources }),
    ...(scopes === undefined ? {} : { scopes }),
    ...(mayAct === undefined ? {} : { mayAct }),
    expiresAt,
    rule: ruleId,
  };
}
