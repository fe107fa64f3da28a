import { ProtocolViolation } from './protocol-violation.ts';

/**
 * Bounds-checked cursor over one message body. Internal to the protocol package.
 *
 * Every read checks the remaining bytes first, so a count or length that points past the body becomes a
 * {@link ProtocolViolation} instead of a RangeError or a huge allocation. `what` names the message in errors.
 */
export class WireReader {
  private readonly buf: Buffer;
  private pos: number;
  private readonly end: number;
  private readonly what: string;

  constructor(buf: Buffer, start: number, end: number, what: string) {
    this.buf = buf;
    this.pos = start;
    this.end = end;
    this.what = what;
  }

  /** Bytes left in the body. */
  get remaining(): number {
    return this.end - this.pos;
  }

  /** Throws unless at least `n` bytes remain; used before allocating arrays sized by a wire count. */
  need(n: number, field: string): void {
    if (n > this.end - this.pos) {
      throw new ProtocolViolation(`${this.what}: ${field} extends past the end of the message`);
    }
  }

  byte(field: string): number {
    this.need(1, field);
    return this.buf[this.pos++] ?? 0;
  }

  int16(field: string): number {
    this.need(2, field);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  uint16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  int32(field: string): number {
    this.need(4, field);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  uint32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A NUL-terminated string, decoded as UTF-8 (the sidecar requires client_encoding UTF8). */
  cstring(field: string): string {
    const nul = this.buf.indexOf(0, this.pos);
    if (nul === -1 || nul >= this.end) {
      throw new ProtocolViolation(`${this.what}: ${field} is missing its NUL terminator`);
    }
    const s = this.buf.toString('utf8', this.pos, nul);
    this.pos = nul + 1;
    return s;
  }

  /** A view of the next `n` bytes; shares memory with the frame. */
  bytes(n: number, field: string): Buffer {
    if (n < 0) throw new ProtocolViolation(`${this.what}: ${field} has negative length ${n}`);
    this.need(n, field);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** A view of everything left. */
  rest(): Buffer {
    const v = this.buf.subarray(this.pos, this.end);
    this.pos = this.end;
    return v;
  }

  /** Rejects trailing bytes, as the server's pq_getmsgend does. */
  done(): void {
    if (this.pos !== this.end) {
      throw new ProtocolViolation(`${this.what}: ${this.end - this.pos} unexpected trailing byte(s)`);
    }
  }
}
