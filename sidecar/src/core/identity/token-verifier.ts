// Verifies the identity token an agent presents (as its Postgres password, or a bearer token) and turns
// it into an Identity: subject, issuer, groups, agent kind and the RFC 8693 delegation chain (`act`), plus
// what Chaperone's token exchange narrowed the token to (resources, scopes) and which exchange issued it.
// A token narrowed to resources is refused on any other resource. Trust comes only from the configured
// issuers' keys; the startup user name is never identity.
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { request } from 'node:https';
import { createLocalJWKSet, decodeProtectedHeader, errors, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import {
  CLAIMS,
  canonicalCompactJws,
  duplicateJsonMember,
  ecdsaHighS,
  jwsHeaderProblem,
  numericDateProblem,
  resourceUri,
  type Actor,
  type Identity,
} from '@chaperone/api';
import type { TrustedIssuerConfig } from '../../config.ts';

/** Claim naming the kind of agent (ci, ai-agent, script, human) in tokens Chaperone issues. */
export const AGENT_KIND_CLAIM = CLAIMS.agentKind;
const MAX_TOKEN_BYTES = 16 * 1024;
const MAX_CHAIN = 16;
/** Limits of the Identity schema (api/src/identity.ts): a claim past them is refused, never cut to fit. */
const MAX_GROUPS = 64;
const MAX_GROUP_LENGTH = 256;
const MAX_KIND_LENGTH = 63;
const MAX_SCOPES = 64;
const MAX_SCOPE_LENGTH = 256;
export class AuthenticationFailed extends Error {
  override name = 'AuthenticationFailed';
  /** Machine-readable reason, also the metrics label: expired, not-yet-valid, audience, issuer, algorithm, signature, unknown-key, malformed, claims, untrusted-claim, jwks-unavailable, resource. */
  readonly reason: string;
  constructor(reason: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.reason = reason;
  }
}

/** sha256 of a token, the only form in which a token may appear in logs and records. */
export function tokenHash(token: string): string {
  return `sha256:${createHash('sha256').update(token).digest('hex')}`;
}

interface KeySource {
  keys(): Promise<ReturnType<typeof createLocalJWKSet>>;
  /** Called when no key matched: a remote source refetches (rate-limited) so rotated keys are picked up. */
  refresh(): Promise<boolean>;
}

/** How often a jwksFile is checked for a change at most (ms): a rotated-away key stops working within it. */
export const JWKS_FILE_CHECK_MS = 1000;

/**
 * A JWKS file, re-read when it changed. Whether it changed is asked of the file system at most once per
 * JWKS_FILE_CHECK_MS (and at once when a token names a kid the keys lack), not on every token: the check is
 * a synchronous stat on the event loop. Changed means another inode (a ConfigMap or Secret volume swaps a
 * symlink to a new file), size, modification or status-change time.
 */
class FileKeySource implements KeySource {
  private version = '';
  private checkedAt = Number.NEGATIVE_INFINITY;
  private set: ReturnType<typeof createLocalJWKSet> | undefined;
  private readonly path: string;
  private readonly now: () => number;
  constructor(path: string, now: () => number) {
    this.path = path;
    this.now = now;
  }
  keys(): Promise<ReturnType<typeof createLocalJWKSet>> {
    const sinceCheck = this.now() - this.checkedAt;
    // A clock that went back counts as due, so a check is never postponed by more than the interval.
    if (this.set === undefined || sinceCheck < 0 || sinceCheck >= JWKS_FILE_CHECK_MS) this.check();
    if (this.set === undefined) {
      return Promise.reject(new AuthenticationFailed('jwks-unavailable', 'token issuer keys file cannot be read'));
    }
    return Promise.resolve(this.set);
  }
  refresh(): Promise<boolean> {
    const before = this.set;
    this.check();
    return Promise.resolve(this.set !== before);
  }
  /** Re-reads the file when it changed; a file that cannot be read or parsed leaves no keys (fail closed). */
  private check(): void {
    this.checkedAt = this.now();
    try {
      const stat = statSync(this.path);
      const version = `${String(stat.ino)}:${String(stat.size)}:${String(stat.mtimeMs)}:${String(stat.ctimeMs)}`;
      if (this.set !== undefined && version === this.version) return;
      this.set = createLocalJWKSet(JSON.parse(readFileSync(this.path, 'utf8')) as JSONWebKeySet);
      this.version = version;
    } catch {
      // Half-written or removed: no key is trusted until the file is whole again (checked again next time).
      this.set = undefined;
      this.version = '';
    }
  }
}

/** How long a remote JWKS is cached (ms); rotation in between is picked up by refresh() on an unknown kid. */
const JWKS_CACHE_MS = 300_000;
/** At most one refetch for unknown kids per this interval (ms), so bad kids can't hammer the issuer. */
export const JWKS_REFRESH_MS = 10_000;
/** After a failed fetch, no new one for this long (ms): tokens are refused meanwhile without asking again. */
export const JWKS_FAILED_FETCH_RETRY_MS = 1000;

/**
 * A JWKS fetched over HTTPS. Every fetch counts towards the intervals above, whether it succeeded or not: an
 * issuer that is down, or that answers the sidecar 429, is otherwise asked again on every token, and a flood
 * of tokens (with unknown kids, or any token while no keys are cached) becomes a flood of JWKS downloads,
 * each agent request waiting on one. A failed fetch never trusts stale keys past JWKS_CACHE_MS (fail closed).
 */
class RemoteKeySource implements KeySource {
  private set: ReturnType<typeof createLocalJWKSet> | undefined;
  private fetchedAt = 0;
  /** When the last fetch started, whatever its outcome. */
  private attemptedAt = Number.NEGATIVE_INFINITY;
  /** Why the last fetch failed; undefined once one succeeded. */
  private failure: AuthenticationFailed | undefined;
  private inflight: Promise<void> | undefined;
  private readonly url: string;
  private readonly caFile: string | undefined;
  private readonly bearerTokenFile: string | undefined;
  private readonly now: () => number;
  private readonly ca: string | undefined;
  private readonly fetchJwks: ((url: string) => Promise<JSONWebKeySet>) | undefined;
  constructor(
    url: string,
    caFile: string | undefined,
    bearerTokenFile: string | undefined,
    now: () => number,
    ca?: string,
    fetchJwks?: (url: string) => Promise<JSONWebKeySet>,
  ) {
    this.url = url;
    this.caFile = caFile;
    this.ca = ca;
    this.bearerTokenFile = bearerTokenFile;
    this.now = now;
    this.fetchJwks = fetchJwks;
  }

  async keys(): Promise<ReturnType<typeof createLocalJWKSet>> {
    if (this.set === undefined || this.now() - this.fetchedAt > JWKS_CACHE_MS) {
      if (this.failure !== undefined && this.sinceAttempt() < JWKS_FAILED_FETCH_RETRY_MS) throw this.failure;
      await this.fetch();
    }
    if (this.set === undefined) throw new AuthenticationFailed('jwks-unavailable', 'token issuer keys are unavailable');
    return this.set;
  }

  async refresh(): Promise<boolean> {
    if (this.sinceAttempt() < JWKS_REFRESH_MS) return false;
    await this.fetch();
    return true;
  }

  /** ms since the last fetch started; a clock that went back counts as due, so no fetch is postponed for long. */
  private sinceAttempt(): number {
    const since = this.now() - this.attemptedAt;
    return since < 0 ? Number.POSITIVE_INFINITY : since;
  }

  private fetch(): Promise<void> {
    if (this.inflight === undefined) {
      this.attemptedAt = this.now();
      this.inflight = this.replaceKeys().finally(() => {
        this.inflight = undefined;
      });
    }
    return this.inflight;
  }

  private async replaceKeys(): Promise<void> {
    try {
      this.set = createLocalJWKSet(await (this.fetchJwks === undefined ? this.download() : this.fetchJwks(this.url)));
      this.fetchedAt = this.now();
      this.failure = undefined;
    } catch (err) {
      this.failure =
        err instanceof AuthenticationFailed
          ? err
          : new AuthenticationFailed('jwks-unavailable', 'token issuer keys are unavailable', { cause: err });
      throw this.failure;
    }
  }

  private download(): Promise<JSONWebKeySet> {
    // The API server serves its JWKS as application/jwk-set+json and answers 406 to application/json alone.
    const headers: Record<string, string> = { accept: 'application/jwk-set+json, application/json' };
    if (this.bearerTokenFile !== undefined) {
      headers.authorization = `Bearer ${readFileSync(this.bearerTokenFile, 'utf8').trim()}`;
    }
    const ca = this.caFile === undefined ? this.ca : readFileSync(this.caFile);
    return new Promise((resolve, reject) => {
      const req = request(this.url, { headers, ...(ca === undefined ? {} : { ca }), timeout: 5000 }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > 1024 * 1024) req.destroy(new Error('JWKS larger than 1 MiB'));
          else chunks.push(c);
        });
        res.on('end', () => {
          if (res.statusCode !== 200) {
            reject(new AuthenticationFailed('jwks-unavailable', `JWKS fetch returned HTTP ${String(res.statusCode)}`));
            return;
          }
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as JSONWebKeySet);
          } catch (err) {
            reject(new AuthenticationFailed('jwks-unavailable', 'JWKS is not JSON', { cause: err }));
          }
        });
      });
      req.on('timeout', () => req.destroy(new Error('JWKS fetch timed out')));
      req.on('error', (err) => {
        reject(new AuthenticationFailed('jwks-unavailable', `JWKS fetch failed: ${err.message}`, { cause: err }));
      });
      req.end();
    });
  }
}

interface TrustedIssuer {
  config: TrustedIssuerConfig;
  source: KeySource;
}

/** Verified tokens kept; the oldest is dropped first. */
const VERIFIED_TOKENS_KEPT = 256;
/** How long a verification is reused at most, even for a token that expires later (ms). */
const VERIFIED_TOKEN_REUSE_MS = 60_000;

/**
 * A token whose signature and claims were verified, reused for the same token text while the key set it
 * was verified with is still the issuer's, it has not expired (checked at every use, with the clock
 * tolerance jose applies), and for at most VERIFIED_TOKEN_REUSE_MS. An agent that opens a connection per
 * statement presents the same token each time; its RSA/ECDSA verification was the largest single cost of
 * a connection in the storm profile (bench/README.md). Refusals are never kept: every bad token is verified.
 */
interface VerifiedToken {
  readonly identity: Identity;
  /** The issuer's key source, and the key set the signature was checked with. */
  readonly source: KeySource;
  readonly keys: ReturnType<typeof createLocalJWKSet>;
  /** exp claim, seconds since epoch. */
  readonly exp: number;
  readonly verifiedAt: number;
}

/** Deep-frozen, because one verified Identity is shared by every session that presents the same token. */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

export interface TokenVerifierOptions {
  issuers: readonly TrustedIssuerConfig[];
  clockToleranceSeconds: number;
  /** Injected clock, ms since epoch. */
  now?: () => number;
  /** Injected download of a jwksUrl issuer's key set (unit tests of the refetch intervals): no HTTPS request. */
  fetchJwks?: (url: string) => Promise<JSONWebKeySet>;
}

/** The protected resource a verifier admits tokens for. */
export interface ResourceRef {
  readonly namespace: string;
  readonly name: string;
}

export class TokenVerifier {
  private readonly issuers: Map<string, TrustedIssuer>;
  private readonly now: () => number;
  private readonly clockTolerance: number;
  /** URI of the resource this verifier serves; tokens narrowed to other resources are refused. */
  private readonly resource: string | undefined;
  /**
   * Verified tokens by tokenHash, shared with the verifiers forResource() makes (the verification does not
   * depend on the resource; the narrowing is checked at every use).
   */
  private readonly verified: Map<string, VerifiedToken>;

  constructor(
    options: TokenVerifierOptions,
    shared?: { issuers: Map<string, TrustedIssuer>; resource: string; verified: Map<string, VerifiedToken> },
  ) {
    this.now = options.now ?? Date.now;
    this.clockTolerance = options.clockToleranceSeconds;
    this.resource = shared?.resource;
    if (shared !== undefined) {
      this.issuers = shared.issuers;
      this.verified = shared.verified;
      return;
    }
    this.verified = new Map();
    this.issuers = new Map();
    for (const config of options.issuers) {
      const source =
        config.jwksFile !== undefined
          ? new FileKeySource(config.jwksFile, this.now)
          : new RemoteKeySource(
              config.jwksUrl ?? '',
              config.jwksCaFile,
              config.jwksBearerTokenFile,
              this.now,
              config.jwksCa,
              options.fetchJwks,
            );
      this.issuers.set(config.issuer, { config, source });
    }
  }

  /**
   * A verifier for one protected resource, sharing this one's issuers and key caches: a token that the
   * token exchange narrowed to resources must name this one (urn:chaperone:resource:<namespace>:<name>).
   */
  forResource(resource: ResourceRef): TokenVerifier {
    return new TokenVerifier(
      { issuers: [], clockToleranceSeconds: this.clockTolerance, now: this.now },
      { issuers: this.issuers, resource: resourceUri(resource.namespace, resource.name), verified: this.verified },
    );
  }

  /** Verifies `token`; resolves to the caller's Identity or rejects with AuthenticationFailed. */
  async verify(token: string): Promise<Identity> {
    if (token.length === 0 || token.length > MAX_TOKEN_BYTES) {
      throw new AuthenticationFailed('malformed', 'identity token missing or too long');
    }
    if (!canonicalCompactJws(token)) {
      throw new AuthenticationFailed(
        'malformed',
        'identity token is not a JWT in its one canonical text (compact, base64url without padding or whitespace)',
      );
    }
    const identity = (await this.reuseVerified(token)) ?? (await this.verifySignature(token));
    if (
      this.resource !== undefined &&
      identity.resources !== undefined &&
      !identity.resources.includes(this.resource)
    ) {
      throw new AuthenticationFailed(
        'resource',
        `identity token is narrowed to other resources and not valid for ${this.resource}`,
      );
    }
    return identity;
  }

  /** How many verifications were reused rather than repeated (for tests). */
  reusedVerifications = 0;

  /** The identity of an earlier verification of exactly this token, when it may still be used. */
  private async reuseVerified(token: string): Promise<Identity | undefined> {
    const key = tokenHash(token);
    const entry = this.verified.get(key);
    if (entry === undefined) return undefined;
    const now = this.now();
    // As jose: expired once exp is at or before now minus the tolerance. Then the full verification runs
    // and refuses the token with its reason.
    const expired = entry.exp <= now / 1000 - this.clockTolerance;
    if (expired || now - entry.verifiedAt > VERIFIED_TOKEN_REUSE_MS || (await entry.source.keys()) !== entry.keys) {
      this.verified.delete(key);
      return undefined;
    }
    this.reusedVerifications++;
    return entry.identity;
  }

  /** The full verification: the issuer's keys, the signature, the claims; kept for reuse when it passes. */
  private async verifySignature(token: string): Promise<Identity> {
    let header: ReturnType<typeof decodeProtectedHeader>;
    let unverified: JWTPayload;
    let duplicate: string | undefined;
    try {
      header = decodeProtectedHeader(token);
      const [headerPart = '', payloadPart = ''] = token.split('.');
      const payloadText = Buffer.from(payloadPart, 'base64url').toString('utf8');
      unverified = JSON.parse(payloadText) as JWTPayload;
      duplicate =
        duplicateJsonMember(Buffer.from(headerPart, 'base64url').toString('utf8')) ?? duplicateJsonMember(payloadText);
    } catch (err) {
      throw new AuthenticationFailed('malformed', 'identity token is not a JWT', { cause: err });
    }
    // One name, one value (api/src/jwt-text.ts): a reader that takes the first of two `sub`s sees another party.
    if (duplicate !== undefined) {
      throw new AuthenticationFailed('malformed', 'identity token names a header parameter or claim twice');
    }
    const badDate = numericDateProblem(unverified);
    if (badDate !== undefined) throw new AuthenticationFailed('claims', `identity token ${badDate}`);
    // The issuer picks the key set; the signature check below is what makes the claim trustworthy.
    const trusted = typeof unverified.iss === 'string' ? this.issuers.get(unverified.iss) : undefined;
    if (trusted === undefined) throw new AuthenticationFailed('issuer', 'identity token issuer is not trusted');
    // crit, cty, b64, zip: the payload would be read another way by a reader honouring them (jwt-text.ts).
    const headerProblem = jwsHeaderProblem(header);
    if (headerProblem !== undefined) throw new AuthenticationFailed('malformed', `identity token ${headerProblem}`);
    if (header.alg === undefined || !trusted.config.algorithms.includes(header.alg)) {
      throw new AuthenticationFailed('algorithm', `identity token algorithm ${String(header.alg)} is not allowed`);
    }
    const options = {
      issuer: trusted.config.issuer,
      audience: trusted.config.audiences,
      algorithms: trusted.config.algorithms,
      clockTolerance: this.clockTolerance,
      currentDate: new Date(this.now()),
      requiredClaims: ['exp', 'sub'],
    };
    let payload: JWTPayload;
    let keys = await trusted.source.keys();
    try {
      ({ payload } = await jwtVerify(token, keys, options));
    } catch (err) {
      if (err instanceof errors.JWKSNoMatchingKey && (await trusted.source.refresh())) {
        try {
          keys = await trusted.source.keys();
          ({ payload } = await jwtVerify(token, keys, options));
        } catch (retryErr) {
          throw mapJoseError(retryErr);
        }
      } else {
        throw mapJoseError(err);
      }
    }
    // ECDSA's twin signature (r, n − s) verifies too: the exchange issues only the low-S twin, so the other
    // is a re-spelling by the holder, with a tokenHash the exchange never issued (canonical-jws.ts). Checked
    // once the signature holds, so a forgery is still refused for its signature or key.
    if (trusted.config.tokenExchange === true && ecdsaHighS(token, header.alg)) {
      throw new AuthenticationFailed(
        'malformed',
        'identity token is not in its one canonical text (an ECDSA signature with a high S)',
      );
    }
    let identity: Identity;
    try {
      identity = deepFreeze(
        identityFromClaims(payload, token, {
          exchange: trusted.config.tokenExchange === true,
          serviceAccounts: trusted.config.serviceAccounts === true,
          agentKind: trusted.config.agentKind === true,
        }),
      );
    } catch (err) {
      if (err instanceof AuthenticationFailed) throw err;
      throw new AuthenticationFailed('malformed', `identity token claims are malformed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (typeof payload.exp === 'number' && identity.tokenHash !== undefined) {
      if (this.verified.size >= VERIFIED_TOKENS_KEPT) {
        for (const oldest of this.verified.keys()) {
          this.verified.delete(oldest);
          break;
        }
      }
      this.verified.set(identity.tokenHash, {
        identity,
        source: trusted.source,
        keys,
        exp: payload.exp,
        verifiedAt: this.now(),
      });
    }
    return identity;
  }
}

function mapJoseError(err: unknown): AuthenticationFailed {
  if (err instanceof AuthenticationFailed) return err;
  if (err instanceof errors.JWTExpired)
    return new AuthenticationFailed('expired', 'identity token has expired', { cause: err });
  if (err instanceof errors.JWTClaimValidationFailed) {
    // A claim of the wrong type (exp as a string) or a required one missing is malformed, not out of range.
    if (err.reason === 'invalid' || err.reason === 'missing') {
      return new AuthenticationFailed('claims', `identity token has an unacceptable ${err.claim} claim`, {
        cause: err,
      });
    }
    const reason =
      err.claim === 'nbf'
        ? 'not-yet-valid'
        : err.claim === 'aud'
          ? 'audience'
          : err.claim === 'iss'
            ? 'issuer'
            : 'claims';
    const what = reason === 'not-yet-valid' ? 'is not valid yet' : `has an unacceptable ${err.claim} claim`;
    return new AuthenticationFailed(reason, `identity token ${what}`, { cause: err });
  }
  // No kid, and more than one key of the set fits the header's alg: the issuer's tokens must say which one.
  if (err instanceof errors.JWKSMultipleMatchingKeys) {
    return new AuthenticationFailed(
      'unknown-key',
      'identity token names no key id (kid) and the issuer publishes several keys that could have signed it',
      { cause: err },
    );
  }
  if (err instanceof errors.JWKSNoMatchingKey) {
    return new AuthenticationFailed('unknown-key', 'identity token key id is not among the issuer keys', {
      cause: err,
    });
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return new AuthenticationFailed('signature', 'identity token signature is invalid', { cause: err });
  }
  if (err instanceof errors.JOSEAlgNotAllowed || err instanceof errors.JOSENotSupported) {
    return new AuthenticationFailed('algorithm', 'identity token algorithm is not allowed', { cause: err });
  }
  return new AuthenticationFailed('malformed', 'identity token could not be verified', { cause: err });
}

function stringClaim(value: unknown): string | undefined {
  return typeof value === 'string' && value.length <= 512 ? value : undefined;
}

/** An optional string claim: absent, or a string of 1 to `max` characters; anything else is malformed. */
function optionalString(value: unknown, what: string, max: number): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new Error(`${what} is not a string of at most ${String(max)} characters`);
  }
  return value;
}

function stringList(value: unknown, what: string, maxItems = 64, maxLength = 512): string[] {
  if (
    !Array.isArray(value) ||
    value.length > maxItems ||
    !value.every((v) => typeof v === 'string' && v.length <= maxLength)
  ) {
    throw new Error(`${what} is not a list of at most ${String(maxItems)} strings`);
  }
  return value as string[];
}

/**
 * The delegation chain of nested `act` claims (read only from the exchange's tokens), current actor first.
 * Every actor must be an object with a `sub` and the `iss` that authenticated it; a chain is never cut short: an actor the sidecar cannot read, or a chain deeper than MAX_CHAIN,
 * refuses the token, because policies match on the chain's depth and on every actor in it
 * (maxDelegationDepth, actor, actorKinds) and a shortened chain would match where the whole one does not.
 */
function chainFromClaims(act: unknown): Actor[] {
  const chain: Actor[] = [];
  while (act !== undefined) {
    if (typeof act !== 'object' || act === null || Array.isArray(act)) throw new Error('an act claim is not an object');
    if (chain.length >= MAX_CHAIN) throw new Error(`the act chain is deeper than ${String(MAX_CHAIN)}`);
    const a = act as Record<string, unknown>;
    const actorSubject = optionalString(a.sub, "an act claim's sub", 512);
    if (actorSubject === undefined) throw new Error('an act claim without sub');
    const actorIssuer = optionalString(a.iss, "an act claim's iss", 2048);
    if (actorIssuer === undefined) throw new Error('an act claim without iss');
    const actorKind = optionalString(a[AGENT_KIND_CLAIM], `an act claim's ${AGENT_KIND_CLAIM}`, MAX_KIND_LENGTH);
    const actor = {} as Actor;
    actor.issuer = actorIssuer;
    if (actorKind !== undefined) actor.kind = actorKind;
    actor.subject = actorSubject;
    chain.push(actor);
    act = a.act;
  }
  return chain;
}

/** What an issuer is trusted to assert beyond a plain subject (its TrustedIssuerConfig marks). */
export interface IssuerTrust {
  /** Chaperone's token exchange: its chains (`act`) are believed, and it names the subject's issuer. */
  readonly exchange?: boolean;
  /** The cluster's service-account issuer: it alone names `system:` subjects (and its service accounts get their groups). */
  readonly serviceAccounts?: boolean;
  /** An issuer marked to assign agent kinds: its `chaperone.dev/agent-kind` claim is believed. */
  readonly agentKind?: boolean;
}

/**
 * Claims only some issuers may make, refused (never stripped) from the others. A chain (`act`) is believed
 * only from the exchange, which verified every hop; dropping it would record the subject as the party
 * acting where the issuer says a delegate did. A `system:` subject is a Kubernetes identity that only the
 * cluster's issuer vouches for (the exchange refuses it from other issuers too); dropping only its groups
 * would leave a subject that policies naming `system:serviceaccount:ci:*` still match. `system:` groups
 * are never taken from a claim: the sidecar derives the service-account groups from the subject itself.
 * An agent kind (`chaperone.dev/agent-kind`) only from the exchange and issuers marked `agentKind`: policies
 * match on it (actorKinds), so a kind dropped would turn a refused claim into a different decision.
 */
function refuseUntrustedClaims(payload: JWTPayload, subject: string, trust: IssuerTrust): void {
  if (trust.exchange === true) return;
  if (payload.act !== undefined) {
    throw new AuthenticationFailed(
      'untrusted-claim',
      "identity token carries a delegation chain (act), which only Chaperone's token exchange may assert",
    );
  }
  if (subject.startsWith('system:') && trust.serviceAccounts !== true) {
    throw new AuthenticationFailed(
      'untrusted-claim',
      "identity token names a Kubernetes identity (system:…), which only the cluster's service-account issuer may",
    );
  }
  if (Array.isArray(payload.groups) && payload.groups.some((g) => typeof g === 'string' && g.startsWith('system:'))) {
    throw new AuthenticationFailed(
      'untrusted-claim',
      'identity token claims a system: group, which the sidecar derives and never takes from a claim',
    );
  }
  if (payload[AGENT_KIND_CLAIM] !== undefined && trust.agentKind !== true) {
    throw new AuthenticationFailed(
      'untrusted-claim',
      `identity token asserts an agent kind (${AGENT_KIND_CLAIM}), which this issuer is not marked to assign (agentKind)`,
    );
  }
}

/**
 * Builds the Identity from verified claims; `act` claims nest outward (RFC 8693 §4.1), the current actor
 * outermost. `trust.exchange`: the issuer is Chaperone's token exchange, whose `chaperone.dev/subject-issuer`
 * names the issuer that authenticated the subject and whose every actor names its issuer. The object is
 * built with its keys in sorted order at every level, so audit records carrying it canonicalise fast.
 * A claim the Identity cannot hold as signed (a `sub` that is not a short string, groups past the schema's
 * limits, a kind too long) refuses the token rather than being dropped or cut: policies match on them.
 */
export function identityFromClaims(payload: JWTPayload, token: string, trust: IssuerTrust = {}): Identity {
  const exchange = trust.exchange === true;
  const subject = optionalString(payload.sub, 'sub', 512);
  if (subject === undefined) throw new Error('no sub');
  refuseUntrustedClaims(payload, subject, trust);
  const groups =
    payload.groups === undefined ? [] : [...stringList(payload.groups, 'groups', MAX_GROUPS, MAX_GROUP_LENGTH)];
  // Kubernetes adds these groups at authentication time rather than in the token.
  const sa = /^system:serviceaccount:([^:]+):[^:]+$/.exec(subject);
  if (sa !== null) groups.push('system:serviceaccounts', `system:serviceaccounts:${sa[1] ?? ''}`);
  if (groups.length > MAX_GROUPS) throw new Error(`more than ${String(MAX_GROUPS)} groups`);
  const chain = chainFromClaims(payload.act);
  const claims: Record<string, string> = {};
  const k8s = payload['kubernetes.io'] as { pod?: { name?: unknown; uid?: unknown }; namespace?: unknown } | undefined;
  if (typeof k8s?.namespace === 'string') claims.namespace = k8s.namespace;
  if (typeof k8s?.pod?.name === 'string') claims['pod.name'] = k8s.pod.name;
  if (typeof k8s?.pod?.uid === 'string') claims['pod.uid'] = k8s.pod.uid;
  let issuer = stringClaim(payload.iss) ?? '';
  let link: Identity['exchange'];
  if (exchange) {
    const subjectIssuer = stringClaim(payload[CLAIMS.subjectIssuer]);
    if (subjectIssuer === undefined) throw new Error(`no ${CLAIMS.subjectIssuer} claim`);
    issuer = subjectIssuer;
    const e = payload[CLAIMS.exchange] as { id?: unknown; record?: unknown } | undefined;
    const id = stringClaim(e?.id);
    const record = stringClaim(e?.record);
    if (id === undefined || record === undefined) throw new Error(`no ${CLAIMS.exchange} claim`);
    link = { id, record };
  }
  const resourcesClaim = payload[CLAIMS.resources];
  const resources = resourcesClaim === undefined ? undefined : stringList(resourcesClaim, CLAIMS.resources);
  let scopes: string[] | undefined;
  if (payload.scope !== undefined) {
    if (typeof payload.scope !== 'string') throw new Error('scope is not a string');
    scopes = [...new Set(payload.scope.split(' ').filter((s) => s !== ''))];
    if (scopes.length > MAX_SCOPES || scopes.some((s) => s.length > MAX_SCOPE_LENGTH)) {
      throw new Error(
        `scope names more than ${String(MAX_SCOPES)} scopes or one longer than ${String(MAX_SCOPE_LENGTH)}`,
      );
    }
  }
  // Keys in sorted order (see above).
  const identity = {} as Identity;
  identity.chain = chain;
  if (Object.keys(claims).length > 0) identity.claims = claims;
  if (link !== undefined) identity.exchange = link;
  identity.groups = groups;
  identity.issuer = issuer;
  const kind = optionalString(payload[AGENT_KIND_CLAIM], AGENT_KIND_CLAIM, MAX_KIND_LENGTH);
  if (kind !== undefined) identity.kind = kind;
  if (resources !== undefined) identity.resources = resources;
  if (scopes !== undefined) identity.scopes = scopes;
  identity.subject = subject;
  identity.tokenHash = tokenHash(token);
  return identity;
}
