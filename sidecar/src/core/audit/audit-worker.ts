// The audit worker thread (docs/audit-durability.md "Threads"): owns the Session writer and everything it
// talks to (the Kubernetes or operator Session store, the evidence store's pg pool, head signing), so that
// the sidecar's main thread, the serial stage of every statement (bench/README.md), only seals and spools
// records. The main thread passes the spool's frames in batches (audit-worker-protocol.ts); the worker
// acknowledges what is written so the main thread can delete spool segments. Started by AuditWorker
// (audit-worker-client.ts); never imported by the main thread.
import { writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { createLogger } from '../observability/logger.ts';
import type { AuditWorkerData, FromWorker, ToWorker } from './audit-worker-protocol.ts';
import { PostgresEvidenceStore } from './evidence-store.ts';
import { OperatorSessionStore } from './operator-session-store.ts';
import { KubernetesSessionStore, type SessionStore } from './session-store.ts';
import { SessionWriter, type WriterMetrics } from './session-writer.ts';
import type { SigningKey } from './signing-key.ts';
import { LiveSpoolEntries, ReplayedSpoolEntries } from './spool-entries.ts';
import { decodeFrames } from './spool.ts';

/** How often the writer's metric updates go to the main thread, ms. */
const METRICS_INTERVAL_MS = 250;

/** The writer's metrics, collected here and passed to the main thread's registry in one message. */
class ForwardedMetrics implements WriterMetrics {
  private pending = 0;
  private flushed = 0;
  private failures: Record<string, number> = {};
  private objects: Record<string, number> = {};
  private storeInserts: number[] = [];
  private dirty = false;
  private readonly send: (message: FromWorker) => void;

  constructor(send: (message: FromWorker) => void) {
    this.send = send;
    setInterval(() => {
      this.post();
    }, METRICS_INTERVAL_MS).unref();
  }

  readonly pendingRecords = {
    set: (value: number) => {
      this.pending = value;
      this.dirty = true;
    },
  };
  readonly flushedRecords = {
    inc: (value = 1) => {
      this.flushed += value;
      this.dirty = true;
    },
  };
  readonly flushFailures = {
    inc: (labels: { reason: string }) => {
      this.failures[labels.reason] = (this.failures[labels.reason] ?? 0) + 1;
      this.dirty = true;
    },
  };
  readonly sessionObjects = {
    inc: (labels: { operation: string }) => {
      this.objects[labels.operation] = (this.objects[labels.operation] ?? 0) + 1;
      this.dirty = true;
    },
  };
  readonly storeSeconds = {
    observe: (seconds: number) => {
      this.storeInserts.push(seconds);
      this.dirty = true;
    },
  };

  /** Sends what changed since the last message. */
  post(): void {
    if (!this.dirty) return;
    this.dirty = false;
    this.send({
      t: 'metrics',
      metrics: {
        pending: this.pending,
        flushed: this.flushed,
        failures: this.failures,
        objects: this.objects,
        storeSeconds: this.storeInserts,
      },
    });
    this.flushed = 0;
    this.failures = {};
    this.objects = {};
    this.storeInserts = [];
  }
}

function main(): void {
  const port = parentPort;
  if (port === null) throw new Error('audit-worker.ts runs as a worker thread of the sidecar');
  const data = workerData as AuditWorkerData;
  const send = (message: FromWorker) => {
    port.postMessage(message);
  };
  // Straight to stderr (as the main thread's logger): not through the main thread's event loop.
  const logger = createLogger({
    level: data.stores.log.level,
    base: { ...data.stores.log.base },
    write: (line) => {
      writeSync(2, line);
    },
  });
  const metrics = new ForwardedMetrics(send);
  const config = data.stores.sessionStore;
  const store: SessionStore =
    config.kind === 'kubernetes'
      ? new KubernetesSessionStore(config.options)
      : new OperatorSessionStore(config.options);
  const evidenceOptions = data.stores.evidenceStore;
  const evidence =
    evidenceOptions === undefined
      ? undefined
      : new PostgresEvidenceStore({
          ...evidenceOptions,
          onIdleError: (err) => {
            logger.warn('evidence store connection failed while idle', { error: err });
          },
        });
  const signingKey: SigningKey = { ...data.signingKey };
  const writer = new SessionWriter({
    ...data.writer,
    store,
    ...(evidence === undefined ? {} : { evidence }),
    signingKey,
    pod: data.pod,
    logger,
    metrics,
    flushIntervalMs: data.flushIntervalMs,
    onAcknowledge: (id) => {
      // The pending count first: a reader of /metrics that sees the acknowledgement sees the count after it.
      metrics.post();
      send({ t: 'ack', id });
    },
  });
  // With a store, records are kept as their text: the writer needs only a few fields of each.
  const live = new LiveSpoolEntries(writer, logger, data.holdDecisions, evidence !== undefined);
  const replayed = new ReplayedSpoolEntries(writer, logger);
  const entries = (message: Extract<ToWorker, { t: 'entries' }>) => {
    const { replay, frames, releases } = message;
    for (let i = 0; i < replay.length; i += 2) {
      replayed.entry(replay[i] as number, replay[i + 1] as string);
    }
    if (frames !== undefined) {
      // Encoded by the main thread a moment ago, never read from a file: their CRCs are not checked again.
      const decoded = decodeFrames(Buffer.from(frames.buffer, frames.byteOffset, frames.byteLength), false);
      // A bad frame is a bug, and the rest cannot be trusted.
      if (decoded.problem !== undefined) throw new Error(`audit worker: spool frames: ${decoded.problem}`);
      for (const e of decoded.entries) live.entry(e.id, e.payload.toString('utf8'));
    }
    for (let i = 0; i < releases.length; i += 2) live.release(releases[i] as string, releases[i + 1] as number);
  };
  port.on('message', (message: ToWorker) => {
    switch (message.t) {
      case 'entries':
        entries(message);
        break;
      case 'replayed':
        replayed.end();
        break;
      case 'flush':
        void writer.flush().then(() => {
          metrics.post();
          send({ t: 'flushed', n: message.n });
        });
        break;
      case 'close':
        void (async () => {
          const emptied = await writer.flush(message.timeoutMs);
          await writer.stop();
          await evidence?.close().catch(() => undefined);
          metrics.post();
          send({ t: 'closed', emptied, pending: writer.pendingRecords });
        })();
        break;
      case 'event':
        writer.podEvent(message.event);
        break;
      case 'certificate':
        signingKey.certificate = message.certificate;
        break;
    }
  });
  writer.start();
  send({ t: 'ready' });
}

main();
