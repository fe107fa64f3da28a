// Prometheus metrics of the durable audit trail, registered once per registry on the sidecar's own
// registry (core/observability/metrics.ts) so they are served on the same endpoint.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface AuditMetrics {
  readonly spoolBytes: Gauge;
  readonly spoolMaxBytes: Gauge;
  readonly spoolRejected: Counter<'reason'>;
  readonly fsyncSeconds: Histogram;
  readonly pendingRecords: Gauge;
  readonly flushedRecords: Counter;
  readonly flushFailures: Counter<'reason'>;
  readonly sessionObjects: Counter<'operation'>;
  readonly lostRecords: Counter<'listener'>;
  /** Evidence-store mode: time of one batch insert. */
  readonly storeSeconds?: Histogram;
}

const byRegistry = new WeakMap<Registry, AuditMetrics>();

/** The audit metrics on `registry`, created on first use. */
export function auditMetrics(registry: Registry): AuditMetrics {
  const existing = byRegistry.get(registry);
  if (existing !== undefined) return existing;
  const registers = [registry];
  const metrics: AuditMetrics = {
    spoolBytes: new Gauge({
      name: 'chaperone_audit_spool_bytes',
      help: 'Bytes of audit records in the local spool not yet acknowledged by Kubernetes.',
      registers,
    }),
    spoolMaxBytes: new Gauge({
      name: 'chaperone_audit_spool_max_bytes',
      help: 'Configured bound of the audit spool (audit.spoolMaxBytes).',
      registers,
    }),
    spoolRejected: new Counter({
      name: 'chaperone_audit_spool_rejected_total',
      help: 'Audit records the spool could not accept, by reason (spool-full, disk-error, closed).',
      labelNames: ['reason'],
      registers,
    }),
    fsyncSeconds: new Histogram({
      name: 'chaperone_audit_spool_fsync_duration_seconds',
      help: 'Time of one group commit (fdatasync) of the audit spool.',
      buckets: [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5],
      registers,
    }),
    pendingRecords: new Gauge({
      name: 'chaperone_audit_pending_records',
      help: 'Audit records accepted but not yet written to Session objects.',
      registers,
    }),
    flushedRecords: new Counter({
      name: 'chaperone_audit_flushed_records_total',
      help: 'Audit records written to Session objects (or, with an evidence store, stored and covered by a written head).',
      registers,
    }),
    flushFailures: new Counter({
      name: 'chaperone_audit_flush_failures_total',
      help: 'Failed attempts to write Session objects or the evidence store, by reason (unavailable, conflict, rejected, store-refused).',
      labelNames: ['reason'],
      registers,
    }),
    sessionObjects: new Counter({
      name: 'chaperone_audit_session_object_writes_total',
      help: 'Session object writes, by operation (create, append, head, status).',
      labelNames: ['operation'],
      registers,
    }),
    lostRecords: new Counter({
      name: 'chaperone_audit_lost_records_total',
      help: 'Audit records lost under FailOpen because the trail was unavailable (each gap is also recorded).',
      labelNames: ['listener'],
      registers,
    }),
    storeSeconds: new Histogram({
      name: 'chaperone_audit_store_insert_duration_seconds',
      help: 'Time of one batch insert into the evidence store.',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers,
    }),
  };
  byRegistry.set(registry, metrics);
  return metrics;
}
