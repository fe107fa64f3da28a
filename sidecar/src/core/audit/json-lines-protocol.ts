// The layout of the records a JSON-lines sink posts to its worker (json-lines-writer.ts, json-lines-worker.ts):
// a module of constants only, so that the worker thread loads nothing of the writer's side.

/**
 * One record in a message: ENTRY_SLOTS slots of a flat array (no object per record to clone).
 * Members: `ENTRY_MEMBERS, key, origin | null, members, knownKey | null, knownText | null`;
 * sealed (AuditSink.write): `ENTRY_SEALED, key, origin | null, record, canonical | null, compact | null`.
 * `origin` is set on the session's first record only; `key` names the session within its sender.
 */
export const ENTRY_MEMBERS = 0;
export const ENTRY_SEALED = 1;
export const ENTRY_SLOTS = 6;
