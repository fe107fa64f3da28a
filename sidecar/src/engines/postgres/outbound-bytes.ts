// Collects the bytes a connection sends one way during one turn, so they leave in as few socket writes as
// possible. Most of what the proxy forwards are views of the chunk it just read (frames the decoder or the
// scanner returned unchanged), in order: consecutive views of one buffer are merged back into one view, so
// an upstream chunk that needed no rewriting is written as the very chunk that was read, and a client
// chunk of Bind/Execute/Sync goes upstream as one write (one TLS record) instead of three. Pure: it hands
// the result to a writer function.
//
// Lifetime: the views it holds alias the chunks they came from and must be taken (take/flushTo) before
// those chunks can be reused; Node does not reuse a socket's read buffers, so within a turn this holds.

/** Above this many bytes, pieces are written as they are (corked: one writev) rather than copied into one. */
const CONCAT_LIMIT = 16 * 1024;
/** Above this many pieces they are copied into one Buffer whatever their size. */
const MAX_WRITES = 16;

export class OutboundBytes {
  private readonly pieces: Buffer[] = [];
  /** The run being extended: its first view, and where it ends in that view's ArrayBuffer. */
  private runHead: Buffer | undefined;
  private runEnd = 0;
  private bytes = 0;
  /** The chunk the pieces of this turn are views of (readFrom): a run that spans it all leaves as it. */
  private source: Buffer | undefined;

  /** Bytes collected and not taken yet. */
  get length(): number {
    return this.bytes;
  }

  /**
   * The pieces pushed next are views of `chunk` (until taken): a run that covers the whole chunk is written
   * as `chunk` itself rather than as a new view of its memory.
   */
  readFrom(chunk: Buffer): void {
    this.source = chunk;
  }

  push(piece: Buffer): void {
    if (piece.length === 0) return;
    this.bytes += piece.length;
    const head = this.runHead;
    if (head !== undefined && piece.buffer === head.buffer && piece.byteOffset === this.runEnd) {
      this.runEnd += piece.length;
      return;
    }
    this.closeRun();
    this.runHead = piece;
    this.runEnd = piece.byteOffset + piece.length;
  }

  /** The collected bytes as few Buffers as possible (one, when they were one run), and empties the collector. */
  take(): Buffer[] {
    this.closeRun();
    const out = this.pieces.splice(0, this.pieces.length);
    this.bytes = 0;
    this.source = undefined;
    return out;
  }

  /**
   * Writes what was collected with `write`, as one Buffer when small; `cork`/`uncork` wrap several writes of
   * large pieces so they still leave in one writev. Returns false when a write asked for backpressure.
   */
  flushTo(sink: { write(b: Buffer): boolean; cork(): void; uncork(): void }): boolean {
    if (this.bytes === 0) return true;
    const total = this.bytes;
    if (this.pieces.length === 0) {
      // One run (the usual turn): written without collecting it into an array first.
      const run = this.closedRun() as Buffer;
      this.runHead = undefined;
      this.source = undefined;
      this.bytes = 0;
      return sink.write(run);
    }
    const pieces = this.take();
    if (pieces.length === 1) return sink.write(pieces[0] as Buffer);
    // Many pieces (rewritten DataRows between raw runs) are copied into one: a write per piece costs more.
    if (total <= CONCAT_LIMIT || pieces.length > MAX_WRITES) return sink.write(Buffer.concat(pieces, total));
    let ok = true;
    sink.cork();
    for (const p of pieces) ok = sink.write(p) && ok;
    sink.uncork();
    return ok;
  }

  private closeRun(): void {
    const run = this.closedRun();
    if (run === undefined) return;
    this.pieces.push(run);
    this.runHead = undefined;
  }

  /** The run being extended as one Buffer: `head` itself, the chunk it spans, or a new view of both. */
  private closedRun(): Buffer | undefined {
    const head = this.runHead;
    if (head === undefined) return undefined;
    const length = this.runEnd - head.byteOffset;
    if (length === head.length) return head;
    const source = this.source;
    if (
      source !== undefined &&
      source.buffer === head.buffer &&
      source.byteOffset === head.byteOffset &&
      source.length === length
    ) {
      return source;
    }
    return Buffer.from(head.buffer, head.byteOffset, length);
  }
}
