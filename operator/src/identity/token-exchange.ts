// One RFC 8693 token exchange, end to end: parse the request strictly, authenticate the subject (and actor)
// token, decide under the DelegationPolicies with narrowing, write the exchange record, sign the token.
// The token is handed out only once its record is stored: no token without evidence.
import { randomUUID } from 'node:crypto';
import { SignJWT, importJWK } from 'jose';
import { Counter, Histogram, type Registry } from 'prom-client';
import {
  ACCEPTED_TOKEN_TYPES,
  CLAIMS,
  EXTENSION_PARAMETERS,
  lowSEcdsa,
  TOKEN_EXCHANGE_GRANT_TYPE,
  TOKEN_TYPES,
  type Actor,
  type DelegationPolicy,
  type ExchangeParty,
  type TokenExchangeResponse,
} from '@chaperone/api';
import type { Logger } from '../observability/logger.ts';
import { decideExchange, type DelegationSettings, type ExchangeAsk, type Grant } from './delegation.ts';
import { ExchangeRefusal } from './exchange-refusal.ts';
import { EvidenceUnavailable, type ExchangeLog } from './exchange-log.ts';
import { SIGNING_ALGORITHM, type ExchangeSigningKey } from './signing-keys.ts';
import { tokenHash, type AuthenticatedToken, type MayAct, type TokenAuthenticator } from './token-authenticator.ts';

/** Parameters that may appear more than once (RFC 8693 §2.1); every other one at most once (RFC 6749 §3.2). */
const REPEATABLE = new Set(['resource', 'audience']);
/** RFC 6749 §3.3 scope-token. */
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]{1,256}$/;
const MAX_LIST = 64;

export interface TokenExchangeServiceOptions {
  readonly issuer: string;
  readonly signingKey: () => ExchangeSigningKey;
  readonly authenticator: TokenAuthenticator;
  readonly log: ExchangeLog;
  readonly policies: () => readonly DelegationPolicy[];
  readonly settings: DelegationSettings;
  readonly logger: Logger;
  readonly registry?: Registry;
  readonly now?: () => number;
}

export interface ExchangeResult {
  readonly response: TokenExchangeResponse;
  /** jti of the issued token (the id of its exchange record). */
  readonly id: string;
}

function one(params: URLSearchParams, name: string): string | undefined {
  const values = params.getAll(name);
  return values[0];
}

function required(params: URLSearchParams, name: string): string {
  const value = one(params, name);
  if (value === undefined || value === '') {
    throw new ExchangeRefusal('invalid_request', 'missing-parameter', `${name} is required`);
  }
  return value;
}

function tokenType(name: string, value: string): string {
  if (!ACCEPTED_TOKEN_TYPES.includes(value)) {
    throw new ExchangeRefusal(
      'invalid_request',
      'unsupported-token-type',
      `${name} ${JSON.stringify(value.slice(0, 100))} is not supported (${ACCEPTED_TOKEN_TYPES.join(', ')}; every token must be a JWT)`,
    );
  }
  return value;
}

function parseMayAct(text: string): MayAct {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new ExchangeRefusal('invalid_request', 'invalid-parameter', 'may_act is not a JSON object');
  }
  const m = parsed as { sub?: unknown; iss?: unknown } | null;
  if (
    typeof m !== 'object' ||
    m === null ||
    Array.isArray(m) ||
    typeof m.sub !== 'string' ||
    m.sub === '' ||
    m.sub.length > 512
  ) {
    throw new ExchangeRefusal('invalid_request', 'invalid-parameter', 'may_act must be {"sub": "...", "iss": "..."}');
  }
  // A subject is unique only within its issuer: a may_act without iss would name that subject at every
  // trusted issuer (before, any of them could redeem the offer with a namesake).
  if (typeof m.iss !== 'string' || m.iss === '' || m.iss.length > 2048) {
    throw new ExchangeRefusal(
      'invalid_request',
      'invalid-parameter',
      'may_act.iss must name the issuer of the party that may act (a subject is unique only within its issuer)',
    );
  }
  return { subject: m.sub, issuer: m.iss };
}

export interface ParsedRequest {
  readonly subjectToken: string;
  readonly actorToken?: string;
  readonly issuedTokenType: string;
  readonly ask: ExchangeAsk;
}

/**
 * A token read from a file keeps the file's last line break (curl's `--data-urlencode name@file`, a file
 * written by `kubectl create token > file`): one trailing LF or CRLF is not part of the token. The token is
 * then checked as its one canonical text (token-authenticator.ts), and its record's hash is of that text.
 */
export function withoutLineBreak(token: string): string {
  if (token.endsWith('\r\n')) return token.slice(0, -2);
  return token.endsWith('\n') ? token.slice(0, -1) : token;
}

function optionalToken(token: string | undefined): string | undefined {
  return token === undefined ? undefined : withoutLineBreak(token);
}

/** Validates the form parameters of a token exchange request (RFC 8693 §2.1 plus the extensions). */
export function parseExchangeRequest(params: URLSearchParams): ParsedRequest {
  for (const name of new Set(params.keys())) {
    if (!REPEATABLE.has(name) && params.getAll(name).length > 1) {
      throw new ExchangeRefusal('invalid_request', 'duplicate-parameter', `${name} appears more than once`);
    }
  }
  const grantType = required(params, 'grant_type');
  if (grantType !== TOKEN_EXCHANGE_GRANT_TYPE) {
    throw new ExchangeRefusal(
      'unsupported_grant_type',
      'unsupported-grant-type',
      `grant_type must be ${TOKEN_EXCHANGE_GRANT_TYPE}`,
    );
  }
  const subjectToken = withoutLineBreak(required(params, 'subject_token'));
  tokenType('subject_token_type', required(params, 'subject_token_type'));
  const actorToken = optionalToken(one(params, 'actor_token'));
  const actorType = one(params, 'actor_token_type');
  if (actorToken !== undefined && actorToken !== '') {
    if (actorType === undefined) {
      throw new ExchangeRefusal(
        'invalid_request',
        'missing-parameter',
        'actor_token_type is required with actor_token',
      );
    }
    tokenType('actor_token_type', actorType);
  } else if (actorType !== undefined) {
    throw new ExchangeRefusal('invalid_request', 'invalid-parameter', 'actor_token_type without actor_token');
  }
  const requested = one(params, 'requested_token_type');
  if (requested !== undefined && requested !== TOKEN_TYPES.jwt && requested !== TOKEN_TYPES.accessToken) {
    throw new ExchangeRefusal(
      'invalid_request',
      'unsupported-token-type',
      `requested_token_type must be ${TOKEN_TYPES.jwt} or ${TOKEN_TYPES.accessToken}`,
    );
  }
  const resources = params.getAll('resource');
  if (resources.length > MAX_LIST) throw new ExchangeRefusal('invalid_target', 'too-many', 'more than 64 resources');
  for (const r of resources) {
    // RFC 8707 §2: an absolute URI without a fragment.
    if (r.length > 512 || !URL.canParse(r) || r.includes('#')) {
      throw new ExchangeRefusal(
        'invalid_target',
        'resource-invalid',
        `resource ${JSON.stringify(r.slice(0, 100))} is not an absolute URI`,
      );
    }
  }
  const audiences = params.getAll('audience');
  if (audiences.length > 16 || audiences.some((a) => a === '' || a.length > 512)) {
    throw new ExchangeRefusal(
      'invalid_target',
      'audience-invalid',
      'audience values must be 1..512 characters, at most 16',
    );
  }
  const scopeText = one(params, 'scope');
  let scopes: string[] | undefined;
  if (scopeText !== undefined && scopeText.trim() !== '') {
    scopes = [...new Set(scopeText.split(' ').filter((s) => s !== ''))];
    if (scopes.length > MAX_LIST || !scopes.every((s) => SCOPE_TOKEN.test(s))) {
      throw new ExchangeRefusal(
        'invalid_scope',
        'scope-invalid',
        'scope must be at most 64 space-separated scope tokens',
      );
    }
  }
  const lifetimeText = one(params, EXTENSION_PARAMETERS.requestedLifetime);
  let lifetimeSeconds: number | undefined;
  if (lifetimeText !== undefined) {
    if (!/^[1-9][0-9]{0,8}$/.test(lifetimeText)) {
      throw new ExchangeRefusal(
        'invalid_request',
        'invalid-parameter',
        'requested_lifetime must be a positive number of seconds',
      );
    }
    lifetimeSeconds = Number(lifetimeText);
  }
  const mayActText = one(params, EXTENSION_PARAMETERS.mayAct);
  const mayAct = mayActText === undefined ? undefined : parseMayAct(mayActText);
  return {
    subjectToken,
    ...(actorToken === undefined || actorToken === '' ? {} : { actorToken }),
    issuedTokenType: requested ?? TOKEN_TYPES.jwt,
    ask: {
      audiences,
      resources,
      ...(scopes === undefined ? {} : { scopes }),
      ...(lifetimeSeconds === undefined ? {} : { lifetimeSeconds }),
      ...(mayAct === undefined ? {} : { mayAct }),
    },
  };
}

/** The nested act claim of a chain (current actor outermost, RFC 8693 §4.1). */
function actClaim(chain: readonly Actor[]): Record<string, unknown> | undefined {
  let act: Record<string, unknown> | undefined;
  for (let i = chain.length - 1; i >= 0; i--) {
    const a = chain[i];
    if (a === undefined) continue;
    act = {
      sub: a.subject,
      ...(a.issuer === undefined ? {} : { iss: a.issuer }),
      ...(a.kind === undefined ? {} : { [CLAIMS.agentKind]: a.kind }),
      ...(act === undefined ? {} : { act }),
    };
  }
  return act;
}

function party(token: AuthenticatedToken): ExchangeParty {
  const p = token.party;
  return {
    issuer: p.issuer,
    ...(p.kind === undefined ? {} : { kind: p.kind }),
    subject: p.subject,
    tokenHash: token.tokenHash,
  };
}

export class TokenExchangeService {
  private readonly options: TokenExchangeServiceOptions;
  private readonly now: () => number;
  private readonly total: Counter<'result'>;
  private readonly duration: Histogram<'result'>;
  /** Imported signing keys by kid (importing costs more than signing). */
  private readonly imported = new Map<string, ReturnType<typeof importJWK>>();

  constructor(options: TokenExchangeServiceOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    const registers = options.registry === undefined ? [] : [options.registry];
    this.total = new Counter({
      name: 'chaperone_token_exchanges_total',
      help: 'Token exchange requests answered, by result (issued, or the refusal reason).',
      labelNames: ['result'],
      registers,
    });
    this.duration = new Histogram({
      name: 'chaperone_token_exchange_duration_seconds',
      help: 'Time to answer a token exchange, including writing its evidence, by result (issued or refused).',
      labelNames: ['result'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
  }

  /** Answers one request; rejects with an ExchangeRefusal (never echoing a token). */
  async exchange(params: URLSearchParams): Promise<ExchangeResult> {
    const started = process.hrtime.bigint();
    const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
    let subjectHash: string | undefined;
    try {
      const request = parseExchangeRequest(params);
      subjectHash = tokenHash(request.subjectToken);
      const result = await this.issue(request);
      this.total.inc({ result: 'issued' });
      this.duration.observe({ result: 'issued' }, seconds());
      return result;
    } catch (err) {
      const refusal =
        err instanceof ExchangeRefusal
          ? err
          : err instanceof EvidenceUnavailable
            ? new ExchangeRefusal('temporarily_unavailable', 'evidence-unavailable', err.message, { cause: err })
            : new ExchangeRefusal('server_error', 'internal', 'the token exchange failed', { cause: err });
      this.total.inc({ result: refusal.reason });
      this.duration.observe({ result: 'refused' }, seconds());
      const fields = {
        error: refusal.error,
        reason: refusal.reason,
        message: refusal.message,
        subjectTokenHash: subjectHash,
      };
      if (refusal.status >= 500) this.options.logger.error('token exchange failed', { ...fields, cause: err });
      else this.options.logger.info('token exchange refused', fields);
      throw refusal;
    }
  }

  private async issue(request: ParsedRequest): Promise<ExchangeResult> {
    const { authenticator } = this.options;
    const [subject, actor] = await Promise.all([
      authenticator.authenticate(request.subjectToken, 'subject_token'),
      request.actorToken === undefined ? undefined : authenticator.authenticate(request.actorToken, 'actor_token'),
    ]);
    // An actor proves itself with its own credential. A token the exchange issued names its *subject*, not
    // whoever holds it: accepted as an actor token, it would let a delegate act under its principal's name
    // and drop itself from the chain.
    if (actor?.own === true) {
      throw new ExchangeRefusal(
        'invalid_grant',
        'actor-is-delegated',
        'actor_token was issued by the token exchange; an actor presents its own token from a trusted issuer',
      );
    }
    const now = this.now();
    const grant = decideExchange(subject, actor, request.ask, this.options.policies(), this.options.settings, now);
    const key = this.options.signingKey();
    const jti = randomUUID();
    const issuedAt = Math.floor(now / 1000);
    const expiresAt = Math.floor(grant.expiresAt / 1000);
    if (expiresAt <= issuedAt) {
      throw new ExchangeRefusal('invalid_grant', 'expired', 'the subject token expires within the second');
    }
    const { record, durable } = this.options.log.append({
      id: jti,
      subject: party(subject),
      ...(actor === undefined ? {} : { actor: party(actor) }),
      parent: {
        tokenHash: subject.tokenHash,
        ...(subject.exchange === undefined
          ? {}
          : { exchangeId: subject.exchange.id, exchangeRecord: subject.exchange.record }),
        expiresAt: new Date(subject.expiresAt).toISOString(),
      },
      chain: [...grant.chain],
      audiences: [...grant.audiences],
      ...(grant.resources === undefined ? {} : { resources: [...grant.resources] }),
      ...(grant.scopes === undefined ? {} : { scopes: [...grant.scopes] }),
      ...(grant.mayAct === undefined
        ? {}
        : {
            mayAct: {
              ...(grant.mayAct.issuer === undefined ? {} : { issuer: grant.mayAct.issuer }),
              subject: grant.mayAct.subject,
            },
          }),
      issuedAt: new Date(issuedAt * 1000).toISOString(),
      expiresAt: new Date(expiresAt * 1000).toISOString(),
      rule: grant.rule,
      keyId: key.kid,
    });
    const token = await this.sign(grant, key, jti, issuedAt, expiresAt, record.hash);
    await durable;
    this.options.logger.info('token exchanged', {
      id: jti,
      subject: grant.subject.subject,
      actor: grant.chain[0]?.subject,
      depth: grant.chain.length,
      rule: grant.rule,
      expiresAt: new Date(expiresAt * 1000).toISOString(),
      subjectTokenHash: subject.tokenHash,
      record: record.hash,
    });
    return {
      id: jti,
      response: {
        access_token: token,
        issued_token_type: request.issuedTokenType,
        token_type: 'N_A',
        expires_in: expiresAt - issuedAt,
        ...(grant.scopes === undefined ? {} : { scope: grant.scopes.join(' ') }),
      },
    };
  }

  private async sign(
    grant: Grant,
    key: ExchangeSigningKey,
    jti: string,
    issuedAt: number,
    expiresAt: number,
    recordHash: string,
  ): Promise<string> {
    const act = actClaim(grant.chain);
    const claims: Record<string, unknown> = {
      [CLAIMS.subjectIssuer]: grant.subject.issuer,
      ...(grant.subject.kind === undefined ? {} : { [CLAIMS.agentKind]: grant.subject.kind }),
      ...(act === undefined ? {} : { act }),
      ...(grant.scopes === undefined ? {} : { scope: grant.scopes.join(' ') }),
      ...(grant.resources === undefined ? {} : { [CLAIMS.resources]: grant.resources }),
      ...(grant.mayAct === undefined
        ? {}
        : {
            may_act: {
              sub: grant.mayAct.subject,
              ...(grant.mayAct.issuer === undefined ? {} : { iss: grant.mayAct.issuer }),
            },
          }),
      [CLAIMS.exchange]: { id: jti, record: recordHash },
    };
    // The low-S twin of the ECDSA signature: the one text of the token, the only one sidecars and this
    // exchange accept (canonical-jws.ts).
    const signed = new SignJWT(claims)
      .setProtectedHeader({ alg: SIGNING_ALGORITHM, kid: key.kid, typ: 'JWT' })
      .setIssuer(this.options.issuer)
      .setSubject(grant.subject.subject)
      .setAudience([...grant.audiences])
      .setIssuedAt(issuedAt)
      .setNotBefore(issuedAt)
      .setExpirationTime(expiresAt)
      .setJti(jti)
      .sign(await this.importKey(key));
    return lowSEcdsa(await signed, SIGNING_ALGORITHM);
  }

  private importKey(key: ExchangeSigningKey): ReturnType<typeof importJWK> {
    let imported = this.imported.get(key.kid);
    if (imported === undefined) {
      imported = importJWK(key.privateJwk, SIGNING_ALGORITHM);
      if (this.imported.size > 16) this.imported.clear();
      this.imported.set(key.kid, imported);
    }
    return imported;
  }
}
