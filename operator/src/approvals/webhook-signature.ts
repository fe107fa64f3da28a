// The signature of an approval notification (docs/approvals.md, "Notifications"): HMAC-SHA256 with the
// shared secret over `<timestamp>.<body>`, sent as `X-Chaperone-Signature: t=<unix seconds>,v1=<hex>`.
// The timestamp is signed so that a receiver can refuse a captured delivery replayed later (outside its
// window); the delivery id (X-Chaperone-Delivery, also in the body) lets it drop a retried duplicate.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'x-chaperone-signature';
/** How old a signed timestamp a receiver should accept, by default (docs/approvals.md). */
export const DEFAULT_REPLAY_WINDOW_SECONDS = 300;

function mac(secret: Buffer, timestamp: number, body: Buffer | string): Buffer {
  return createHmac('sha256', secret)
    .update(`${String(timestamp)}.`)
    .update(body)
    .digest();
}

/** The header value for `body` signed at `timestamp` (unix seconds). */
export function signatureHeader(secret: Buffer, timestamp: number, body: Buffer | string): string {
  return `t=${String(timestamp)},v1=${mac(secret, timestamp, body).toString('hex')}`;
}

export type SignatureCheck = { readonly valid: true } | { readonly valid: false; readonly reason: string };

/**
 * What a receiver does: parses the header, refuses a timestamp outside `windowSeconds` of `now` (either
 * side, for clock skew), and compares the MAC in constant time. Any `v1=` value may match (a sender may
 * sign with an old and a new secret while rotating).
 */
export function verifySignature(
  secret: Buffer,
  header: string | undefined,
  body: Buffer | string,
  nowSeconds: number,
  windowSeconds = DEFAULT_REPLAY_WINDOW_SECONDS,
): SignatureCheck {
  if (header === undefined || header === '') return { valid: false, reason: 'no signature' };
  let timestamp: number | undefined;
  const macs: Buffer[] = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === 't' && /^[0-9]{1,12}$/.test(value)) timestamp = Number(value);
    else if (key === 'v1' && /^[0-9a-f]{64}$/.test(value)) macs.push(Buffer.from(value, 'hex'));
  }
  if (timestamp === undefined) return { valid: false, reason: 'no timestamp' };
  if (macs.length === 0) return { valid: false, reason: 'no v1 signature' };
  if (Math.abs(nowSeconds - timestamp) > windowSeconds) return { valid: false, reason: 'timestamp outside the window' };
  const expected = mac(secret, timestamp, body);
  if (!macs.some((m) => timingSafeEqual(m, expected))) return { valid: false, reason: 'signature mismatch' };
  return { valid: true };
}
