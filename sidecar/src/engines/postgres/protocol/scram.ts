/**
 * Client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it, plus the legacy MD5 response.
 * Used by the sidecar to log in to the real server with the credential only it holds. Nothing here logs,
 * and error messages never include passwords, proofs or keys.
 *
 * @see https://www.postgresql.org/docs/current/sasl-authentication.html
 * @see https://www.rfc-editor.org/rfc/rfc7677
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

/** SASL mechanism name PostgreSQL advertises for SCRAM without channel binding. */
export const SCRAM_SHA_256 = 'SCRAM-SHA-256';

/** Why a SCRAM exchange failed. `server-signature` means the server could not prove it knows the password. */
export class ScramError extends Error {
  readonly reason: 'malformed-server-message' | 'nonce-mismatch' | 'server-error' | 'server-signature' | 'state';

  constructor(reason: ScramError['reason'], message: string) {
    super(message);
    this.name = 'ScramError';
    this.reason = reason;
  }
}

export interface ScramClientOptions {
  readonly password: string;
  /**
   * Name sent in `n=`. Default `''`: PostgreSQL ignores it and uses the StartupMessage `user`, and libpq
   * sends it empty.
   */
  readonly username?: string;
  /** Client nonce; only tests should set it. Default: 18 random bytes, base64 (24 printable characters). */
  readonly nonce?: string;
  /** Smallest iteration count accepted from the server, against downgrade; default 4096 (RFC 7677). */
  readonly minIterations?: number;
}

/**
 * One SCRAM-SHA-256 exchange: call {@link clientFirstMessage}, then {@link clientFinalMessage} with the
 * server-first message (AuthenticationSASLContinue data), then {@link verifyServerFinal} with the
 * server-final message (AuthenticationSASLFinal data). Authentication must not be considered done until
 * `verifyServerFinal` returned: otherwise an impostor server could skip the proof.
 */
export class ScramClient {
  private readonly password: string;
  private readonly username: string;
  private readonly nonce: string;
  private readonly minIterations: number;
  private clientFirstBare: string | null = null;
  private expectedServerSignature: Buffer | null = null;
  private verified = false;

  constructor(options: ScramClientOptions) {
    this.password = options.password;
    this.username = options.username ?? '';
    this.nonce = options.nonce ?? randomBytes(18).toString('base64');
    this.minIterations = options.minIterations ?? 4096;
    if (this.nonce === '' || !/^[\x21-\x2b\x2d-\x7e]+$/.test(this.nonce)) {
      throw new RangeError('SCRAM nonce must be printable ASCII without commas');
    }
  }

  /** Name to put in SASLInitialResponse. */
  get mechanism(): string {
    return SCRAM_SHA_256;
  }

  /** True once the server's signature has been checked. */
  get isVerified(): boolean {
    return this.verified;
  }

  /** `n,,n=<user>,r=<nonce>`: gs2 header "n" (no channel binding), then the client-first-bare part. */
  clientFirstMessage(): string {
    this.clientFirstBare = `n=${saslName(this.username)},r=${this.nonce}`;
    return `n,,${this.clientFirstBare}`;
  }

  /**
   * Parses the server-first message and returns the client-final message carrying the proof.
   * @throws ScramError if the message is malformed, the nonce does not extend ours, or iterations are too few.
   */
  clientFinalMessage(serverFirst: string | Buffer): string {
    if (this.clientFirstBare === null || this.expectedServerSignature !== null) {
      throw new ScramError('state', 'clientFinalMessage called out of order');
    }
    const serverFirstMessage = typeof serverFirst === 'string' ? serverFirst : serverFirst.toString('utf8');
    const attrs = parseAttributes(serverFirstMessage);
    // RFC 5802 5.1: a mandatory extension we do not understand must abort the exchange.
    if (attrs.has('m')) throw new ScramError('malformed-server-message', 'server requires an unsupported extension');
    const combinedNonce = attrs.get('r');
    const saltB64 = attrs.get('s');
    const iterText = attrs.get('i');
    if (combinedNonce === undefined || saltB64 === undefined || iterText === undefined) {
      throw new ScramError('malformed-server-message', 'server-first message lacks r, s or i');
    }
    if (!combinedNonce.startsWith(this.nonce) || combinedNonce.length === this.nonce.length) {
      throw new ScramError('nonce-mismatch', 'server nonce does not extend the client nonce');
    }
    if (!/^\d+$/.test(iterText)) throw new ScramError('malformed-server-message', 'invalid iteration count');
    const iterations = Number(iterText);
    if (iterations < this.minIterations || iterations > 10_000_000) {
      throw new ScramError('malformed-server-message', `iteration count ${iterations} out of accepted range`);
    }
    const salt = Buffer.from(saltB64, 'base64');
    if (salt.length === 0 || salt.toString('base64') !== saltB64) {
      throw new ScramError('malformed-server-message', 'invalid salt encoding');
    }

    const { clientKey, storedKey, serverKey } = derivedKeys(this.password, salt, iterations);
    // "biws" is base64("n,,"): the gs2 header repeated, with no channel binding data.
    const clientFinalWithoutProof = `c=biws,r=${combinedNonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirstMessage},${clientFinalWithoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = (clientKey[i] ?? 0) ^ (clientSignature[i] ?? 0);
    this.expectedServerSignature = hmac(serverKey, authMessage);
    return `${clientFinalWithoutProof},p=${proof.toString('base64')}`;
  }

  /**
   * Checks the server-final message (`v=<signature>`), in constant time.
   * @throws ScramError if the server reported an error (`e=`) or its signature is wrong.
   */
  verifyServerFinal(serverFinal: string | Buffer): void {
    const expected = this.expectedServerSignature;
    if (expected === null) throw new ScramError('state', 'verifyServerFinal called before clientFinalMessage');
    const attrs = parseAttributes(typeof serverFinal === 'string' ? serverFinal : serverFinal.toString('utf8'));
    const err = attrs.get('e');
    if (err !== undefined) throw new ScramError('server-error', `server rejected SCRAM exchange: ${err}`);
    const v = attrs.get('v');
    if (v === undefined) throw new ScramError('malformed-server-message', 'server-final message lacks v');
    const got = Buffer.from(v, 'base64');
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
      throw new ScramError('server-signature', 'server signature does not match');
    }
    this.verified = true;
  }
}

interface DerivedKeys {
  readonly clientKey: Buffer;
  readonly storedKey: Buffer;
  readonly serverKey: Buffer;
}

/** Derived keys by (password, salt, iterations); see derivedKeys. */
const derivedKeyCache = new Map<string, DerivedKeys>();
const DERIVED_KEY_CACHE_SIZE = 16;

/**
 * ClientKey, StoredKey and ServerKey of RFC 5802 for a password, salt and iteration count. PBKDF2 over 4096
 * or more iterations is the dearest step of a login (about a millisecond of CPU, on the event loop), and
 * a server answers every login of a role with that role's one salt, so the keys are kept for the next
 * login: what SCRAM clients such as PgBouncer do. Each login still proves itself afresh with its own
 * nonces; the keys stand for the password, which the caller holds anyway. The cache is keyed by a hash
 * (never the password) and bounded; a rotated password or a new salt is a new entry.
 */
function derivedKeys(password: string, salt: Buffer, iterations: number): DerivedKeys {
  const id = createHash('sha256')
    .update(password, 'utf8')
    .update('\0')
    .update(salt)
    .update(`\0${String(iterations)}`)
    .digest('base64');
  const cached = derivedKeyCache.get(id);
  if (cached !== undefined) return cached;
  const saltedPassword = pbkdf2Sync(saslPrep(password), salt, iterations, 32, 'sha256');
  const clientKey = hmac(saltedPassword, 'Client Key');
  const keys = {
    clientKey,
    storedKey: createHash('sha256').update(clientKey).digest(),
    serverKey: hmac(saltedPassword, 'Server Key'),
  };
  if (derivedKeyCache.size >= DERIVED_KEY_CACHE_SIZE) {
    const oldest = derivedKeyCache.keys().next().value;
    if (oldest !== undefined) derivedKeyCache.delete(oldest);
  }
  derivedKeyCache.set(id, keys);
  return keys;
}

function hmac(key: Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

/** RFC 5802 saslname: ',' and '=' are escaped. */
function saslName(name: string): string {
  return name.replaceAll('=', '=3D').replaceAll(',', '=2C');
}

/** Parses `a=value,b=value`; attribute names are single letters. */
function parseAttributes(message: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of message.split(',')) {
    if (part.length < 2 || part[1] !== '=' || !/^[a-zA-Z]$/.test(part[0] ?? '')) {
      throw new ScramError('malformed-server-message', 'malformed SCRAM attribute');
    }
    const key = part[0] ?? '';
    if (!out.has(key)) out.set(key, part.slice(2));
  }
  return out;
}

// RFC 3454 tables used by SASLprep (RFC 4013), as code point ranges. Checked by code point rather than
// with regular expressions because several entries are combining characters.
type Ranges = readonly (readonly [number, number])[];
/** B.1: commonly mapped to nothing. */
const MAPPED_TO_NOTHING: Ranges = [
  [0x00ad, 0x00ad],
  [0x034f, 0x034f],
  [0x1806, 0x1806],
  [0x180b, 0x180d],
  [0x200b, 0x200d],
  [0x2060, 0x2060],
  [0xfe00, 0xfe0f],
  [0xfeff, 0xfeff],
];
/** C.1.2: non-ASCII spaces, mapped to U+0020. */
const NON_ASCII_SPACE: Ranges = [
  [0x00a0, 0x00a0],
  [0x1680, 0x1680],
  [0x2000, 0x200b],
  [0x202f, 0x202f],
  [0x205f, 0x205f],
  [0x3000, 0x3000],
];
/** C.2–C.9 (controls, private use, non-characters, surrogates, bidi and tagging characters), abridged. */
const PROHIBITED: Ranges = [
  [0x0000, 0x001f],
  [0x007f, 0x009f],
  [0x06dd, 0x06dd],
  [0x070f, 0x070f],
  [0x180e, 0x180e],
  [0x200e, 0x200f],
  [0x2028, 0x202e],
  [0x2060, 0x2063],
  [0x206a, 0x206f],
  [0xd800, 0xdfff],
  [0xe000, 0xf8ff],
  [0xfdd0, 0xfdef],
  [0xfff9, 0xfffd],
  [0xfffe, 0xffff],
  [0x1fffe, 0x1ffff],
  [0xe0001, 0xe0001],
  [0xe0020, 0xe007f],
  [0xf0000, 0xffffd],
  [0x100000, 0x10fffd],
];

function inRanges(cp: number, ranges: Ranges): boolean {
  for (const [lo, hi] of ranges) if (cp >= lo && cp <= hi) return true;
  return false;
}

/**
 * SASLprep as libpq applies it: normalize the password, but if the result would be prohibited, use the
 * password unchanged (the server does the same, so both sides agree). ASCII passwords are unchanged.
 * This covers the mapping, NFKC and prohibition steps; the bidirectional check is not implemented, which
 * only matters for passwords mixing right-to-left scripts.
 */
export function saslPrep(password: string): string {
  let ascii = true;
  for (let i = 0; i < password.length; i++) {
    const c = password.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) ascii = false;
  }
  if (ascii) return password;
  let mapped = '';
  for (const ch of password) {
    const cp = ch.codePointAt(0) ?? 0;
    if (inRanges(cp, NON_ASCII_SPACE)) mapped += ' ';
    else if (!inRanges(cp, MAPPED_TO_NOTHING)) mapped += ch;
  }
  mapped = mapped.normalize('NFKC');
  if (mapped === '') return password;
  for (const ch of mapped) if (inRanges(ch.codePointAt(0) ?? 0, PROHIBITED)) return password;
  return mapped;
}

/**
 * Response to AuthenticationMD5Password: `'md5' + md5hex(md5hex(password + user) + salt)`.
 * @param salt the 4 bytes from the server.
 */
export function md5Password(user: string, password: string, salt: Uint8Array): string {
  const inner = createHash('md5').update(password, 'utf8').update(user, 'utf8').digest('hex');
  const outer = createHash('md5').update(inner, 'utf8').update(salt).digest('hex');
  return `md5${outer}`;
}
