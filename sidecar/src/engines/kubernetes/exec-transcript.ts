// What an exec or attach stream carried, for its outcome record (docs/kubernetes-engine.md, "Streams"): the
// WebSocket frames relayed between kubectl and the API server are read as they pass (RFC 6455 framing, the
// `v5.channel.k8s.io` channel byte first in each binary message) without changing a byte, and the
// beginning of stdin, stdout and stderr is kept, bounded, so the commands typed inside `kubectl exec -i`
// and what they printed are in the trail. Pure: fed chunks, never touches a socket.
//
// Frames are read incrementally (a header or payload may straddle chunks); a frame the reader cannot
// follow (a reserved bit set: a compression extension the sidecar did not let through; an oversized
// length) stops the transcript, which says so — the bytes are still relayed and counted.

/** stdin, stdout, stderr, error, resize (remotecommand v5 channels). */
const CHANNEL_NAMES: Readonly<Record<number, string>> = { 0: 'stdin', 1: 'stdout', 2: 'stderr', 3: 'error' };
const OPCODE_CONTINUATION = 0x0;
const OPCODE_TEXT = 0x1;
const OPCODE_BINARY = 0x2;

/** Reads the frames of one direction; `onData` receives the payload of data frames, unmasked. */
export class WebSocketFrameReader {
  private pending: Buffer = Buffer.alloc(0);
  /** Payload bytes still to come of the current frame, and its mask and position in it. */
  private remaining = 0;
  private mask: Buffer | undefined;
  private maskOffset = 0;
  private dataFrame = false;
  private messageIsData = false;
  private firstOfMessage = true;
  failed: string | undefined;
  private readonly onData: (payload: Buffer, firstOfMessage: boolean) => void;

  constructor(onData: (payload: Buffer, firstOfMessage: boolean) => void) {
    this.onData = onData;
  }

  push(chunk: Buffer): void {
    if (this.failed !== undefined) return;
    let buf = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    this.pending = Buffer.alloc(0);
    while (buf.length > 0) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, buf.length);
        const part = Buffer.from(buf.subarray(0, take));
        if (this.mask !== undefined) {
          for (let i = 0; i < part.length; i++) part[i] = (part[i] ?? 0) ^ (this.mask[(this.maskOffset + i) % 4] ?? 0);
          this.maskOffset = (this.maskOffset + take) % 4;
        }
        if (this.dataFrame) {
          this.onData(part, this.firstOfMessage);
          this.firstOfMessage = false;
        }
        this.remaining -= take;
        buf = buf.subarray(take);
        continue;
      }
      if (buf.length < 2) break;
      const b0 = buf[0] ?? 0;
      const b1 = buf[1] ?? 0;
      if ((b0 & 0x70) !== 0) {
        this.failed = 'a frame with reserved bits set (an extension)';
        return;
      }
      let length = b1 & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buf.length < 4) break;
        length = buf.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buf.length < 10) break;
        const big = buf.readBigUInt64BE(2);
        if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
          this.failed = 'a frame length beyond 2^53';
          return;
        }
        length = Number(big);
        offset = 10;
      }
      const masked = (b1 & 0x80) !== 0;
      if (masked) {
        if (buf.length < offset + 4) break;
        this.mask = Buffer.from(buf.subarray(offset, offset + 4));
        offset += 4;
      } else this.mask = undefined;
      this.maskOffset = 0;
      const opcode = b0 & 0x0f;
      // Control frames (close, ping, pong) may come between the fragments of a message.
      if (opcode === OPCODE_TEXT || opcode === OPCODE_BINARY) {
        this.messageIsData = true;
        this.firstOfMessage = true;
        this.dataFrame = true;
      } else this.dataFrame = opcode === OPCODE_CONTINUATION && this.messageIsData;
      this.remaining = length;
      buf = buf.subarray(offset);
    }
    if (buf.length > 0) this.pending = Buffer.from(buf);
  }
}

/** The bounded beginning of each channel of one exec/attach stream, both directions. */
export class ExecTranscript {
  private readonly limit: number;
  private readonly kept = new Map<number, Buffer[]>();
  private readonly sizes = new Map<number, number>();
  private readonly totals = new Map<number, number>();
  readonly fromClient: WebSocketFrameReader;
  readonly toClient: WebSocketFrameReader;

  /** `limit`: bytes kept per channel. */
  constructor(limit: number) {
    this.limit = limit;
    const onData = () => {
      let channel = -1;
      return (payload: Buffer, first: boolean) => {
        let data = payload;
        if (first) {
          channel = data[0] ?? -1;
          data = data.subarray(1);
        }
        this.add(channel, data);
      };
    };
    this.fromClient = new WebSocketFrameReader(onData());
    this.toClient = new WebSocketFrameReader(onData());
  }

  private add(channel: number, data: Buffer): void {
    if (CHANNEL_NAMES[channel] === undefined || data.length === 0) return;
    this.totals.set(channel, (this.totals.get(channel) ?? 0) + data.length);
    const size = this.sizes.get(channel) ?? 0;
    if (size >= this.limit) return;
    const part = data.subarray(0, this.limit - size);
    this.sizes.set(channel, size + part.length);
    const list = this.kept.get(channel) ?? [];
    list.push(Buffer.from(part));
    this.kept.set(channel, list);
  }

  /**
   * One line per channel that carried data: `stdin (12 B): "ls -l\n"`, the text cut at the limit (`…`),
   * non-printable bytes escaped; why the transcript stopped, when it did.
   */
  summary(): string {
    const parts: string[] = [];
    for (const channel of [0, 1, 2, 3]) {
      const total = this.totals.get(channel);
      if (total === undefined) continue;
      const text = Buffer.concat(this.kept.get(channel) ?? []).toString('utf8');
      const cut = total > (this.sizes.get(channel) ?? 0) ? '…' : '';
      parts.push(`${CHANNEL_NAMES[channel] ?? ''} (${String(total)} B): ${JSON.stringify(text)}${cut}`);
    }
    for (const [side, reader] of [
      ['client', this.fromClient],
      ['server', this.toClient],
    ] as const) {
      if (reader.failed !== undefined) parts.push(`transcript of the ${side}'s frames stopped: ${reader.failed}`);
    }
    return parts.join('; ');
  }
}
