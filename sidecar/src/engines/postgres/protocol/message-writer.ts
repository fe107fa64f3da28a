/**
 * Builds one protocol message. Internal to the protocol package.
 *
 * The 5-byte header (type + Int32 length) is reserved up front and the length is filled in by `finish()`,
 * so the length is always the byte length actually written, never a string length.
 */
export class MessageWriter {
  private buf: Buffer;
  private pos: number;
  private readonly typed: boolean;

  /**
   * @param code type byte, or `null` for an untyped startup-phase packet (header is then just the length).
   * @param sizeHint expected body size, to avoid regrowing.
   */
  constructor(code: number | null, sizeHint = 64) {
    this.typed = code !== null;
    const header = this.typed ? 5 : 4;
    this.buf = Buffer.allocUnsafe(header + sizeHint);
    if (code !== null) this.buf[0] = code;
    this.pos = header;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  int8(v: number): this {
    this.ensure(1);
    this.buf[this.pos++] = v & 0xff;
    return this;
  }

  int16(v: number): this {
    this.ensure(2);
    this.buf.writeInt16BE(v, this.pos);
    this.pos += 2;
    return this;
  }

  int32(v: number): this {
    this.ensure(4);
    this.buf.writeInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  uint32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  /**
   * A NUL-terminated UTF-8 string.
   * @throws RangeError if `s` contains NUL, which would silently truncate the field on the wire.
   */
  cstring(s: string): this {
    if (s.includes('\0')) throw new RangeError('protocol strings cannot contain NUL');
    const n = Buffer.byteLength(s, 'utf8');
    this.ensure(n + 1);
    this.buf.write(s, this.pos, n, 'utf8');
    this.pos += n;
    this.buf[this.pos++] = 0;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }

  /** Writes the length into the header and returns the finished message (a view of the internal buffer). */
  finish(): Buffer {
    if (this.typed) this.buf.writeInt32BE(this.pos - 1, 1);
    else this.buf.writeInt32BE(this.pos, 0);
    return this.buf.subarray(0, this.pos);
  }
}
