// The audit trail's entry point for tools outside the sidecar package (the bench, end-to-end tests): the
// sinks, the spool, the Session object writer and store, and the signing key.
export { AuditUnavailable, JsonLinesSink, MemorySink, type AuditSink, type RecordOrigin } from './audit-sink.ts';
export { DurableAuditSink, type DurableAuditSinkOptions } from './durable-audit-sink.ts';
export { KubernetesSessionStore } from './session-store.ts';
export { SessionWriter } from './session-writer.ts';
export { loadOrCreateSigningKey } from './signing-key.ts';
export { Spool } from './spool.ts';
