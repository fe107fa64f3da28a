// Authenticates the subject and actor tokens of an exchange against the trusted issuers: the cluster's
// service-account issuer by TokenReview (so a token bound to a deleted pod is refused at once), external
// OIDC issuers by their discovered JWKS, and the exchange's own earlier tokens by its key ring. Trust comes
// from the issuer's keys only; an unverified `iss` just picks which keys to try. A chain (`act`) is only
// accepted from the exchange itself, which verified every hop of it.
import { createHash } from 'node:crypto';
import type { V1TokenReviewStatus } from '@kubernetes/client-node';
import { decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type createLocalJWKSet } from 'jose';
import {
  CLAIMS,
  canonicalCompactJws,
  duplicateJsonMember,
  ecdsaHighS,
  jwsHeaderProblem,
  numericDateProblem,
  type Actor,
  type ExchangeLink,
  type TrustedIssuer,
  type TrustedIssuerSpec,
} from '@chaperone/api';
import { ExchangeRefusal } from './exchange-refusal.ts';
import { IssuerUnavailable, OidcKeySource, type FetchReport } from './oidc-keys.ts';
import { matchesPattern } from './pattern.ts';
import { SIGNING_ALGORITHM } from './signing-keys.ts';

const MAX_TOKEN_BYTES = 16 * 1024;
const MAX_CHAIN = 16;
const SERVICE_ACCOUNT_USER = /^system:serviceaccount:[a-z0-9.-]+:[a-z0-9.-]+$/;
const DEFAULT_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'];

/** A party as an exchange sees it: who, authenticated by which issuer, of which agent kind. */
export interface Party {
  readonly subject: string;
  readonly issuer: string;
  readonly kind?: string;
}

export interface MayAct {
  readonly subject: string;
  /** Undefined only in tokens an older exchange issued: such a may_act names nobody who can redeem it. */
  readonly issuer?: string;
}

export interface AuthenticatedToken {
  /** The token's subject (for the exchange's own tokens: the original subject and its issuer). */
  readonly party: Party;
  readonly tokenHash: string;
  /** exp, epoch ms. */
  readonly expiresAt: number;
  /** Actors of an exchange-issued token, current first; empty for every other token. */
  readonly chain: readonly Actor[];
  readonly scopes?: readonly string[];
  readonly resources?: readonly string[];
  readonly mayAct?: MayAct;
  /** The token's audiences (its verified `aud`; for a service-account token, those the TokenReview confirmed). */
  readonly audiences: readonly string[];
  /** The exchange record of an exchange-issued token. */
  readonly exchange?: ExchangeLink;
  /** Whether the exchange itself issued the token. */
  readonly own: boolean;
}

export type TokenRole = 'subject_token' | 'actor_token';

export type TokenReviewer = (token: string, audiences: readonly string[]) => Promise<V1TokenReviewStatus | undefined>;

export interface KeyRing {
  keySet(): ReturnType<typeof createLocalJWKSet>;
  refresh(): Promise<void>;
}

export interface TokenAuthenticatorOptions {
  /** iss of the exchange's own tokens. */
  readonly selfIssuer: string;
  readonly keys: KeyRing;
  /** aud values accepted on the exchange's own tokens. Default [chaperone, selfIssuer]. */
  readonly ownAudiences?: readonly string[];
  readonly tokenReview: TokenReviewer;
  /** Leeway for exp/nbf/iat of presented tokens, seconds. Default 5. */
  readonly clockToleranceSeconds?: number;
  readonly now?: () => number;
  /** Reports OIDC key fetches, by TrustedIssuer namespace/name (status). */
  readonly onFetch?: (issuer: TrustedIssuer, report: FetchReport) => void;
}

interface IssuerEntry {
  readonly object: TrustedIssuer;
  readonly spec: TrustedIssuerSpec;
  readonly keys?: OidcKeySource;
}

export function tokenHash(token: string): string {
  return `sha256:${createHash('sha256').update(token).digest('hex')}`;
}

/** A short, safe rendering of an untrusted string for an error message. */
function shown(value: unknown): string {
  const text = JSON.stringify(typeof value === 'string' ? value.slice(0, 200) : value) as string | undefined;
  return text ?? 'undefined';
}

function stringClaim(value: unknown, max = 512): string | undefined {
  return typeof value === 'string' && value.length > 0 && value.length <= max ? value : undefined;
}

function stringList(value: unknown, max: number): string[] | undefined {
  if (!Array.isArray(value)) return undefined;
  if (value.length > max || !value.every((v) => typeof v === 'string' && v.length > 0 && v.length <= 512)) {
    return undefined;
  }
  return value as string[];
}

/** The scope claim (RFC 8693 §4.2: space-separated), or undefined when absent. */
function scopesOf(payload: JWTPayload): string[] | undefined {
  if (payload.scope === undefined) return undefined;
  if (typeof payload.scope !== 'string') throw new Error('scope claim is not a string');
  return [...new Set(payload.scope.split(' ').filter((s) => s !== ''))];
}

/** The resources claim (`chaperone.dev/resources`), or undefined when absent; anything but a list is malformed. */
function resourcesOf(payload: JWTPayload): string[] | undefined {
  const claim = payload[CLAIMS.resources];
  if (claim === undefined) return undefined;
  const resources = stringList(claim, 64);
  if (resources === undefined) throw new Error('malformed resources claim');
  return resources;
}

/**
 * The may_act claim. A subject is unique only within its issuer (RFC 7519 §4.1.2), so a may_act without
 * `iss` names a party of `ownIssuer`, the issuer of the token carrying it; before, it named that subject at
 * any trusted issuer, and another issuer's namesake redeemed it. The exchange's own tokens pass no
 * `ownIssuer` (their parties come from other issuers; the exchange now always writes `iss`).
 */
function mayActOf(payload: JWTPayload, ownIssuer?: string): MayAct | undefined {
  const raw = payload.may_act;
  if (raw === undefined) return undefined;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('may_act is not an object');
  const m = raw as { sub?: unknown; iss?: unknown };
  const subject = stringClaim(m.sub);
  if (subject === undefined) throw new Error('may_act has no sub');
  if (m.iss !== undefined && stringClaim(m.iss, 2048) === undefined) throw new Error('may_act has a malformed iss');
  const issuer = stringClaim(m.iss, 2048) ?? ownIssuer;
  return issuer === undefined ? { subject } : { subject, issuer };
}

/** The verified `aud` claim as a list. */
function audiencesOf(payload: JWTPayload): string[] {
  return typeof payload.aud === 'string' ? [payload.aud] : [...(payload.aud ?? [])];
}

/** The chain of an exchange-issued token, strictly: every level names its subject and issuer. */
function chainOf(payload: JWTPayload): Actor[] {
  const chain: Actor[] = [];
  let act: unknown = payload.act;
  while (act !== undefined) {
    if (typeof act !== 'object' || act === null || chain.length >= MAX_CHAIN) throw new Error('malformed act claim');
    const a = act as Record<string, unknown>;
    const subject = stringClaim(a.sub);
    const issuer = stringClaim(a.iss, 2048);
    if (subject === undefined || issuer === undefined) throw new Error('act claim without sub and iss');
    const kind = stringClaim(a[CLAIMS.agentKind], 63);
    chain.push({ issuer, ...(kind === undefined ? {} : { kind }), subject });
    act = a.act;
  }
  return chain;
}

function kindOf(spec: TrustedIssuerSpec, subject: string, payload: JWTPayload): string | undefined {
  if (spec.kindClaim !== undefined) {
    const claimed = stringClaim(payload[spec.kindClaim], 63);
    if (claimed !== undefined) return claimed;
  }
  return spec.kinds?.find((k) => matchesPattern(k.subject, subject))?.kind;
}

function refusal(role: TokenRole, err: unknown): ExchangeRefusal {
  if (err instanceof ExchangeRefusal) return err;
  if (err instanceof IssuerUnavailable) {
    return new ExchangeRefusal('temporarily_unavailable', 'issuer-unavailable', `${role}: ${err.message}`, {
      cause: err,
    });
  }
  const refuse = (reason: string, what: string) =>
    new ExchangeRefusal('invalid_grant', reason, `${role} ${what}`, { cause: err });
  if (err instanceof errors.JWTExpired) return refuse('expired', 'has expired');
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'nbf') return refuse('not-yet-valid', 'is not valid yet');
    if (err.claim === 'aud') return refuse('audience', 'is not meant for the token exchange (aud)');
    if (err.claim === 'iss') return refuse('untrusted-issuer', 'has an unexpected issuer');
    return refuse('claims', `has an unacceptable ${err.claim} claim`);
  }
  if (err instanceof errors.JWKSMultipleMatchingKeys)
    return refuse('unknown-key', 'names no key id and its issuer publishes several keys that could have signed it');
  if (err instanceof errors.JWKSNoMatchingKey)
    return refuse('unknown-key', 'is signed with a key its issuer does not publish');
  if (err instanceof errors.JWSSignatureVerificationFailed) return refuse('signature', 'has an invalid signature');
  if (err instanceof errors.JOSEAlgNotAllowed || err instanceof errors.JOSENotSupported) {
    return refuse('algorithm', 'uses an algorithm that is not allowed');
  }
  return refuse('malformed', `could not be verified: ${err instanceof Error ? err.message : String(err)}`);
}

export class TokenAuthenticator {
  private readonly options: TokenAuthenticatorOptions;
  private readonly now: () => number;
  private readonly tolerance: number;
  private readonly ownAudiences: string[];
  private issuers = new Map<string, IssuerEntry>();
  private lastOwnRefresh = Number.NEGATIVE_INFINITY;

  constructor(options: TokenAuthenticatorOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.tolerance = options.clockToleranceSeconds ?? 5;
    this.ownAudiences = [...(options.ownAudiences ?? ['chaperone', options.selfIssuer])];
  }

  /** Replaces the trusted issuers; key caches of issuers whose spec did not change are kept. */
  setIssuers(objects: readonly TrustedIssuer[]): void {
    const next = new Map<string, IssuerEntry>();
    // Deterministic when two objects name the same issuer: the first by name wins.
    const sorted = [...objects].sort((a, b) => ((a.metadata.name ?? '') < (b.metadata.name ?? '') ? -1 : 1));
    for (const object of sorted) {
      const spec = object.spec;
      if (next.has(spec.issuer) || spec.issuer === this.options.selfIssuer) continue;
      const previous = this.issuers.get(spec.issuer);
      if (previous !== undefined && JSON.stringify(previous.spec) === JSON.stringify(spec)) {
        next.set(spec.issuer, { ...previous, object });
        continue;
      }
      let keys: OidcKeySource | undefined;
      if (spec.type === 'oidc') {
        const oidc = spec.oidc;
        keys = new OidcKeySource({
          issuer: spec.issuer,
          ...(oidc?.discoveryUrl === undefined ? {} : { discoveryUrl: oidc.discoveryUrl }),
          ...(oidc?.jwksUri === undefined ? {} : { jwksUri: oidc.jwksUri }),
          ...(oidc?.caBundle === undefined ? {} : { caBundle: oidc.caBundle }),
          cacheSeconds: oidc?.cacheSeconds ?? 300,
          now: this.now,
        });
        const onFetch = this.options.onFetch;
        // The spec is unchanged for as long as this source lives, so the object's name and generation are too.
        if (onFetch !== undefined) keys.onFetch = (report) => onFetch(object, report);
      }
      next.set(spec.issuer, { object, spec, ...(keys === undefined ? {} : { keys }) });
    }
    this.issuers = next;
  }

  /** The OIDC key source of an issuer (tests and status). */
  keySource(issuer: string): OidcKeySource | undefined {
    return this.issuers.get(issuer)?.keys;
  }

  /** Verifies one token; rejects with an ExchangeRefusal naming the role and what was wrong. */
  async authenticate(token: string, role: TokenRole): Promise<AuthenticatedToken> {
    try {
      return await this.verify(token, role);
    } catch (err) {
      throw refusal(role, err);
    }
  }

  private async verify(token: string, role: TokenRole): Promise<AuthenticatedToken> {
    if (token.length === 0 || token.length > MAX_TOKEN_BYTES) {
      throw new ExchangeRefusal('invalid_request', 'malformed', `${role} is empty or longer than 16 KiB`);
    }
    if (!canonicalCompactJws(token)) {
      throw new ExchangeRefusal(
        'invalid_grant',
        'malformed',
        `${role} is not a JWT in its one canonical text (compact, base64url without padding or whitespace)`,
      );
    }
    let unverified: JWTPayload;
    let alg: string | undefined;
    let duplicate: string | undefined;
    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      header = decodeProtectedHeader(token);
      ({ alg } = header);
      unverified = decodeJwt(token);
      const [headerPart = '', payloadPart = ''] = token.split('.');
      duplicate =
        duplicateJsonMember(Buffer.from(headerPart, 'base64url').toString('utf8')) ??
        duplicateJsonMember(Buffer.from(payloadPart, 'base64url').toString('utf8'));
    } catch {
      throw new ExchangeRefusal('invalid_grant', 'malformed', `${role} is not a JWT`);
    }
    // One name, one value (api/src/jwt-text.ts): a reader that takes the first of two `sub`s sees another party.
    if (duplicate !== undefined) {
      throw new ExchangeRefusal('invalid_grant', 'malformed', `${role} names a header parameter or claim twice`);
    }
    // crit, cty, b64, zip: the payload would be read another way by a reader honouring them (jwt-text.ts).
    const headerProblem = jwsHeaderProblem(header);
    if (headerProblem !== undefined)
      throw new ExchangeRefusal('invalid_grant', 'malformed', `${role} ${headerProblem}`);
    // Before: exp 1e309 (Infinity to a JSON parser) passed jose and failed writing the record, a 500.
    const badDate = numericDateProblem(unverified);
    if (badDate !== undefined) throw new ExchangeRefusal('invalid_grant', 'claims', `${role} ${badDate}`);
    if (unverified.iss === this.options.selfIssuer) return this.verifyOwn(token, role);
    const entry = typeof unverified.iss === 'string' ? this.issuers.get(unverified.iss) : undefined;
    if (entry === undefined) {
      throw new ExchangeRefusal(
        'invalid_grant',
        'untrusted-issuer',
        `${role} issuer ${shown(unverified.iss)} is not trusted (no TrustedIssuer names it)`,
      );
    }
    if (unverified.act !== undefined) {
      throw new ExchangeRefusal(
        'invalid_grant',
        'foreign-chain',
        `${role} carries an act claim from ${shown(unverified.iss)}; only chains the exchange built itself are accepted`,
      );
    }
    return entry.spec.type === 'kubernetes'
      ? this.verifyServiceAccount(token, role, entry, unverified)
      : this.verifyOidc(token, role, entry, alg);
  }

  private async verifyOwn(token: string, role: TokenRole): Promise<AuthenticatedToken> {
    const options = {
      issuer: this.options.selfIssuer,
      audience: this.ownAudiences,
      algorithms: [SIGNING_ALGORITHM],
      requiredClaims: ['exp', 'sub', 'jti', 'iat'],
      clockTolerance: this.tolerance,
      currentDate: new Date(this.now()),
    };
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.options.keys.keySet(), options));
    } catch (err) {
      // A key another replica added moments ago: reload the ring once (at most every 5 s) and retry.
      if (!(err instanceof errors.JWKSNoMatchingKey) || this.now() - this.lastOwnRefresh < 5000) throw err;
      this.lastOwnRefresh = this.now();
      await this.options.keys.refresh();
      ({ payload } = await jwtVerify(token, this.options.keys.keySet(), options));
    }
    // The exchange signs only low-S ECDSA signatures: the high-S twin verifies too, but is a re-spelling
    // whose hash no record names (canonical-jws.ts). Checked once the signature holds, so a forgery is
    // still refused for its signature or key.
    if (ecdsaHighS(token, SIGNING_ALGORITHM)) {
      throw new ExchangeRefusal(
        'invalid_grant',
        'malformed',
        `${role} is not in its one canonical text (an ECDSA signature with a high S)`,
      );
    }
    const subjectIssuer = stringClaim(payload[CLAIMS.subjectIssuer], 2048);
    const subject = stringClaim(payload.sub);
    const exchange = payload[CLAIMS.exchange] as { id?: unknown; record?: unknown } | undefined;
    if (subjectIssuer === undefined || subject === undefined || typeof exchange !== 'object') {
      throw new ExchangeRefusal('invalid_grant', 'malformed', `${role} lacks the claims the exchange issues`);
    }
    const id = stringClaim(exchange.id, 128);
    const record = stringClaim(exchange.record, 80);
    if (id === undefined || record === undefined || id !== payload.jti) {
      throw new ExchangeRefusal('invalid_grant', 'malformed', `${role} has a malformed exchange claim`);
    }
    const kind = stringClaim(payload[CLAIMS.agentKind], 63);
    const resources = resourcesOf(payload);
    const scopes = scopesOf(payload);
    const mayAct = mayActOf(payload);
    return {
      party: { subject, issuer: subjectIssuer, ...(kind === undefined ? {} : { kind }) },
      audiences: audiencesOf(payload),
      tokenHash: tokenHash(token),
      expiresAt: (payload.exp ?? 0) * 1000,
      chain: chainOf(payload),
      ...(scopes === undefined ? {} : { scopes }),
      ...(resources === undefined ? {} : { resources }),
      ...(mayAct === undefined ? {} : { mayAct }),
      exchange: { id, record },
      own: true,
    };
  }

  private async verifyServiceAccount(
    token: string,
    role: TokenRole,
    entry: IssuerEntry,
    unverified: JWTPayload,
  ): Promise<AuthenticatedToken> {
    const { spec } = entry;
    const now = this.now();
    if (typeof unverified.exp !== 'number') {
      throw new ExchangeRefusal('invalid_grant', 'malformed', `${role} has no exp claim`);
    }
    // The API server is the authority on its own tokens (signature, audience, expiry, bound pod alive).
    const status = await this.options.tokenReview(token, spec.audiences);
    if (status?.authenticated !== true) {
      const expired = unverified.exp * 1000 <= now;
      throw new ExchangeRefusal(
        'invalid_grant',
        expired ? 'expired' : 'rejected',
        expired
          ? `${role} has expired`
          : `${role} was rejected by the API server: ${(status?.error ?? 'not authenticated').slice(0, 300)}`,
      );
    }
    const username = status.user?.username ?? '';
    if (!SERVICE_ACCOUNT_USER.test(username) || username !== unverified.sub) {
      throw new ExchangeRefusal(
        'invalid_grant',
        'not-a-service-account',
        `${role} is not a service-account token of ${shown(spec.issuer)}`,
      );
    }
    if (!(status.audiences ?? []).some((a) => spec.audiences.includes(a))) {
      throw new ExchangeRefusal('invalid_grant', 'audience', `${role} is not meant for the token exchange (aud)`);
    }
    const kind = kindOf(spec, username, unverified);
    return {
      party: { subject: username, issuer: spec.issuer, ...(kind === undefined ? {} : { kind }) },
      audiences: (status.audiences ?? []).filter((a) => spec.audiences.includes(a)),
      tokenHash: tokenHash(token),
      expiresAt: unverified.exp * 1000,
      chain: [],
      own: false,
    };
  }

  private async verifyOidc(
    token: string,
    role: TokenRole,
    entry: IssuerEntry,
    alg: string | undefined,
  ): Promise<AuthenticatedToken> {
    const { spec } = entry;
    const source = entry.keys;
    if (source === undefined) throw new IssuerUnavailable(`issuer ${spec.issuer} has no key source`);
    const algorithms = spec.oidc?.algorithms ?? DEFAULT_ALGORITHMS;
    if (alg === undefined || !algorithms.includes(alg)) {
      throw new ExchangeRefusal('invalid_grant', 'algorithm', `${role} algorithm ${shown(alg)} is not allowed`);
    }
    const options = {
      issuer: spec.issuer,
      audience: spec.audiences,
      algorithms,
      requiredClaims: ['exp', 'sub'],
      clockTolerance: this.tolerance,
      currentDate: new Date(this.now()),
    };
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, await source.keys(), options));
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey) || !(await source.refresh())) throw err;
      ({ payload } = await jwtVerify(token, await source.keys(), options));
    }
    const subject = stringClaim(payload.sub);
    if (subject === undefined) throw new ExchangeRefusal('invalid_grant', 'malformed', `${role} has no usable sub`);
    // `system:` names are Kubernetes identities (service accounts, nodes), which only the cluster's issuer
    // vouches for. Before, an agent platform's token naming `system:serviceaccount:ci:ci-runner` was narrowed
    // into a child that sidecars took for that service account (its groups included) wherever a policy named
    // the subject without its issuer.
    if (subject.startsWith('system:')) {
      throw new ExchangeRefusal(
        'invalid_grant',
        'claims',
        `${role} of ${shown(spec.issuer)} names a Kubernetes identity (system:…), which only a kubernetes TrustedIssuer may`,
      );
    }
    const kind = kindOf(spec, subject, payload);
    const scopes = scopesOf(payload);
    // A token its issuer narrowed to resources stays narrowed: sidecars honour the claim from any issuer, so
    // ignoring it here would let a child name resources its parent is refused on.
    const resources = resourcesOf(payload);
    const mayAct = mayActOf(payload, spec.issuer);
    return {
      party: { subject, issuer: spec.issuer, ...(kind === undefined ? {} : { kind }) },
      audiences: audiencesOf(payload),
      tokenHash: tokenHash(token),
      expiresAt: (payload.exp ?? 0) * 1000,
      chain: [],
      ...(scopes === undefined ? {} : { scopes }),
      ...(resources === undefined ? {} : { resources }),
      ...(mayAct === undefined ? {} : { mayAct }),
      own: false,
    };
  }
}
