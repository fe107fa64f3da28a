// Keeps the sidecar's upstream credential from reaching the agent through the response: an upstream that
// echoes request headers (a debug endpoint, TRACE, an error page quoting the request) would otherwise hand
// the agent the very secret the sidecar holds for it. Every occurrence of the credential value in response
// headers and body is replaced, also across chunk boundaries (an end of a chunk that could begin the credential is held back).
// Pure transform of Buffers.
import { Transform, type TransformCallback } from 'node:stream';

export const SCRUBBED = '[chaperone:credential]';

export class CredentialScrubber extends Transform {
  private readonly secret: Buffer;
  private readonly replacement = Buffer.from(SCRUBBED);
  private tail = Buffer.alloc(0);
  /** How many occurrences were replaced. */
  found = 0;

  constructor(secret: string) {
    super();
    this.secret = Buffer.from(secret);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const data = this.replace(this.tail.length === 0 ? chunk : Buffer.concat([this.tail, chunk]));
    // Hold back only an end that is the start of the credential (the next chunk may complete it), so a
    // stream that never contains it passes through without delay.
    const keep = this.partialAtEnd(data);
    this.tail = Buffer.from(data.subarray(data.length - keep));
    callback(null, data.subarray(0, data.length - keep));
  }

  override _flush(callback: TransformCallback): void {
    callback(null, this.tail);
  }

  /** Length of the longest suffix of `data` that is a proper prefix of the credential. */
  private partialAtEnd(data: Buffer): number {
    for (let k = Math.min(this.secret.length - 1, data.length); k > 0; k--) {
      if (data[data.length - 1] !== this.secret[k - 1]) continue;
      if (data.subarray(data.length - k).equals(this.secret.subarray(0, k))) return k;
    }
    return 0;
  }

  private replace(data: Buffer): Buffer {
    if (this.secret.length === 0) return data;
    let at = data.indexOf(this.secret);
    if (at === -1) return data;
    const parts: Buffer[] = [];
    let from = 0;
    while (at !== -1) {
      parts.push(data.subarray(from, at), this.replacement);
      this.found++;
      from = at + this.secret.length;
      at = data.indexOf(this.secret, from);
    }
    parts.push(data.subarray(from));
    return Buffer.concat(parts);
  }
}

/** A header value with the credential replaced. */
export function scrubText(text: string, secret: string): string {
  return secret === '' ? text : text.split(secret).join(SCRUBBED);
}
