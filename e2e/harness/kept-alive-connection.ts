// One kept-alive HTTP/1.1 connection driven with raw bytes: requests written as given (one at a time, or
// several pipelined in one write), responses read back in order, framed by Content-Length or chunked coding.
// For tests of what the sidecar does with the second, third… request of one connection.
import type { Socket } from 'node:net';

export interface RawResponse {
  readonly status: number;
  /** Header names in lower case; the last value of a repeated header. */
  readonly headers: ReadonlyMap<string, string>;
  readonly body: string;
}

export class KeptAliveConnection {
  private readonly socket: Socket;
  private buffer = Buffer.alloc(0);
  private readonly parsed: RawResponse[] = [];
  private readonly waiters: { count: number; resolve: (r: RawResponse[]) => void; reject: (e: Error) => void }[] = [];
  private closedWith: Error | undefined;

  /** `socket` is connected (or connecting); its bytes are read from now on. */
  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.parse();
    });
    const closed = (err?: Error) => {
      this.closedWith = err ?? new Error('the connection closed');
      for (const w of this.waiters.splice(0)) w.reject(this.closedWith);
    };
    socket.once('error', closed);
    socket.once('close', () => closed());
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Writes `bytes` (one request or several) and resolves with the next `count` responses. */
  send(bytes: string, count = 1): Promise<RawResponse[]> {
    const answer = new Promise<RawResponse[]>((resolve, reject) => {
      if (this.closedWith !== undefined) reject(this.closedWith);
      else this.waiters.push({ count, resolve, reject });
    });
    this.socket.write(bytes);
    this.deliver();
    return answer;
  }

  end(): void {
    this.socket.destroy();
  }

  private deliver(): void {
    while (this.waiters.length > 0 && this.parsed.length >= (this.waiters[0]?.count ?? 0)) {
      const w = this.waiters.shift();
      if (w !== undefined) w.resolve(this.parsed.splice(0, w.count));
    }
  }

  private parse(): void {
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) break;
      const lines = this.buffer.subarray(0, end).toString('latin1').split('\r\n');
      const status = Number((lines[0] ?? '').split(' ')[1]);
      const headers = new Map<string, string>();
      for (const line of lines.slice(1)) {
        const colon = line.indexOf(':');
        headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
      }
      let rest = this.buffer.subarray(end + 4);
      let body: Buffer;
      if (headers.get('transfer-encoding')?.toLowerCase() === 'chunked') {
        const chunks: Buffer[] = [];
        let complete = false;
        for (;;) {
          const lineEnd = rest.indexOf('\r\n');
          if (lineEnd < 0) break;
          const size = parseInt(rest.subarray(0, lineEnd).toString('latin1'), 16);
          if (rest.length < lineEnd + 2 + size + 2) break;
          if (size === 0) {
            rest = rest.subarray(lineEnd + 4);
            complete = true;
            break;
          }
          chunks.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
          rest = rest.subarray(lineEnd + 2 + size + 2);
        }
        if (!complete) break;
        body = Buffer.concat(chunks);
      } else {
        const length = Number(headers.get('content-length') ?? '0');
        if (rest.length < length) break;
        body = rest.subarray(0, length);
        rest = rest.subarray(length);
      }
      this.buffer = Buffer.from(rest);
      this.parsed.push({ status, headers, body: body.toString('utf8') });
    }
    this.deliver();
  }
}
