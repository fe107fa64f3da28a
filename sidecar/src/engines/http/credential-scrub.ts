// Keeps the sidecar's upstream credential from reaching the agent through the response: an upstream that
// echoes request headers (a debug endpoint, TRACE, an error page quoting the request) would otherwise hand
// the agent the very secret the sidecar holds for it. Every occurrence of the credential value in response
// headers and body is replaced, in each spelling an echo gives it (credentialSpellings), also across chunk
// boundaries (an end of a chunk that could begin the credential is held back).
// Pure transform of Buffers.
import { Transform, type TransformCallback } from 'node:stream';

export const SCRUBBED = '[chaperone:credential]';

/**
 * The spellings of the credential an echo can take: as it is; as a JSON string's content, also with `/`
 * escaped (PHP's json_encode, some Java encoders); percent-encoded with upper- and lower-case hex (an echo
 * of a URL or a form); HTML-escaped with numeric or named entities. An echo in any of them hands the agent
 * the secret as surely as the plain one.
 */
export function credentialSpellings(secret: string): string[] {
  if (secret === '') return [];
  const percent = encodeURIComponent(secret);
  const json = JSON.stringify(secret).slice(1, -1);
  const html = secret.replace(/[&<>"']/g, (c) => `&#${String(c.charCodeAt(0))};`);
  const named: Readonly<Record<string, string>> = {
    '&': '&amp;',
    '<': '&lt;',
    '>': '&gt;',
    '"': '&quot;',
    "'": '&#39;',
  };
  const htmlNamed = secret.replace(/[&<>"']/g, (c) => named[c] ?? c);
  return [
    ...new Set([
      secret,
      json,
      json.replaceAll('/', '\\/'),
      percent,
      percent.replace(/%[0-9A-F]{2}/g, (e) => e.toLowerCase()),
      html,
      htmlNamed,
    ]),
  ];
}

export class CredentialScrubber extends Transform {
  private readonly needles: readonly Buffer[];
  private readonly replacement = Buffer.from(SCRUBBED);
  private tail = Buffer.alloc(0);
  /** How many occurrences were replaced. */
  found = 0;

  constructor(secret: string) {
    super();
    this.needles = credentialSpellings(secret).map((s) => Buffer.from(s));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const data = this.replace(this.tail.length === 0 ? chunk : Buffer.concat([this.tail, chunk]));
    // Hold back only an end that is the start of a spelling of the credential (the next chunk may complete
    // it), so a stream that never contains it passes through without delay.
    const keep = this.partialAtEnd(data);
    this.tail = Buffer.from(data.subarray(data.length - keep));
    callback(null, data.subarray(0, data.length - keep));
  }

  override _flush(callback: TransformCallback): void {
    callback(null, this.tail);
  }

  /** Length of the longest suffix of `data` that is a proper prefix of a spelling of the credential. */
  private partialAtEnd(data: Buffer): number {
    let longest = 0;
    for (const needle of this.needles) {
      for (let k = Math.min(needle.length - 1, data.length); k > longest; k--) {
        if (data[data.length - 1] !== needle[k - 1]) continue;
        if (data.subarray(data.length - k).equals(needle.subarray(0, k))) {
          longest = k;
          break;
        }
      }
    }
    return longest;
  }

  private replace(data: Buffer): Buffer {
    let out = data;
    for (const needle of this.needles) {
      let at = out.indexOf(needle);
      if (at === -1) continue;
      const parts: Buffer[] = [];
      let from = 0;
      while (at !== -1) {
        parts.push(out.subarray(from, at), this.replacement);
        this.found++;
        from = at + needle.length;
        at = out.indexOf(needle, from);
      }
      parts.push(out.subarray(from));
      out = Buffer.concat(parts);
    }
    return out;
  }
}

/** A header value with every spelling of the credential replaced. */
export function scrubText(text: string, secret: string): string {
  let out = text;
  for (const spelling of credentialSpellings(secret)) out = out.split(spelling).join(SCRUBBED);
  return out;
}
