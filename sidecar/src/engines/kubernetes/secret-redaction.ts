// Secret values never reach the agent or the audit trail through the Kubernetes engine: every `data` and
// `stringData` value of a Secret is replaced, in single objects, lists, watch events and Tables, and so is
// the copy of the whole object kubectl keeps in the last-applied-configuration annotation. Pure; works on
// parsed JSON. Which objects are Secrets is the caller's knowledge (the request named the secrets resource),
// because list items and Table rows carry no kind of their own.
//
// The masked value of `data` stays valid base64 (clients decode it into bytes); its text is MASKED_TEXT, so
// a write that sends a masked value back (kubectl edit of a masked Secret) can be recognised and refused.

import { parse as parseYaml } from 'yaml';

/** What a masked Secret value reads as once decoded. */
export const MASKED_TEXT = 'chaperone:masked';
/** A masked `data` value (base64 of MASKED_TEXT). */
export const MASKED_DATA = Buffer.from(MASKED_TEXT).toString('base64');

const LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration';

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function maskMap(map: unknown, replacement: string): number {
  if (!isRecord(map)) return 0;
  let n = 0;
  for (const key of Object.keys(map)) {
    map[key] = replacement;
    n++;
  }
  return n;
}

/** Masks one Secret object in place; returns how many values were masked. */
function maskSecret(secret: Record<string, unknown>): number {
  let n = maskMap(secret.data, MASKED_DATA) + maskMap(secret.stringData, MASKED_TEXT);
  const metadata = secret.metadata;
  if (isRecord(metadata) && isRecord(metadata.annotations)) {
    const applied = metadata.annotations[LAST_APPLIED];
    if (typeof applied === 'string') {
      // The annotation holds the whole applied object as JSON; mask it the same way, or drop it if unreadable.
      try {
        const inner: unknown = JSON.parse(applied);
        if (isRecord(inner)) n += maskSecret(inner);
        metadata.annotations[LAST_APPLIED] = JSON.stringify(inner);
      } catch {
        metadata.annotations[LAST_APPLIED] = MASKED_TEXT;
        n++;
      }
    }
  }
  return n;
}

/**
 * Masks every Secret in a response document about secrets: a Secret, a SecretList (`items`), a watch event
 * (`object`), a Table (`rows[].object`), or a Status (nothing to mask). Mutates `doc`; returns the count.
 */
export function redactSecrets(doc: unknown): number {
  if (!isRecord(doc)) return 0;
  let n = 0;
  if (Array.isArray(doc.items)) {
    for (const item of doc.items) if (isRecord(item)) n += maskSecret(item);
  }
  if (Array.isArray(doc.rows)) {
    for (const row of doc.rows) if (isRecord(row) && isRecord(row.object)) n += redactSecrets(row.object);
  }
  if (typeof doc.type === 'string' && isRecord(doc.object)) n += redactSecrets(doc.object);
  if (doc.kind !== 'Status' && doc.kind !== 'Table' && !Array.isArray(doc.items)) n += maskSecret(doc);
  return n;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Whether one string of a request body, as the API server reads it, carries the mask: as text (stringData),
 * or as base64 (data). Go's decoder skips CR and LF inside base64 and ignores the unused low bits of the
 * last character, so the base64 is decoded rather than compared as text.
 */
function carriesMask(value: string): boolean {
  if (value.includes(MASKED_TEXT)) return true;
  const compact = value.replace(/[\r\n]/g, '');
  return BASE64.test(compact) && Buffer.from(compact, 'base64').toString('latin1').includes(MASKED_TEXT);
}

/**
 * Request media types whose strings this module reads as the API server does: JSON and YAML (parsed), and
 * protobuf (its strings and bytes are contiguous, so the text search finds them). No type is read as JSON.
 */
function readableMediaType(contentType: string): boolean {
  const type = (contentType.split(';')[0] ?? '').trim().toLowerCase();
  return (
    type === '' || type.endsWith('json') || type.endsWith('yaml') || type === 'application/vnd.kubernetes.protobuf'
  );
}

/**
 * Whether a request body writes a value the engine masked (a masked Secret sent back would overwrite the
 * real one). The text is searched as it is (a protobuf body holds the bytes raw), then read as JSON or YAML
 * and every string checked as the API server would decode it: a JSON escape (`\u003d`), a line break in
 * the base64, or another spelling of its last character must not hide the mask.
 */
export function containsMaskedValue(body: string, contentType = ''): boolean {
  if (body.includes(MASKED_DATA) || body.includes(MASKED_TEXT)) return true;
  // A body this module cannot read as the API server would (CBOR, whose strings may come in chunks that a
  // text search never sees whole; any other media type) may carry the mask: counted as carrying it.
  if (!readableMediaType(contentType)) return true;
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch {
    try {
      doc = parseYaml(body);
    } catch {
      return false; // neither JSON nor YAML: the API server refuses it too
    }
  }
  const pending: unknown[] = [doc];
  while (pending.length > 0) {
    const value = pending.pop();
    if (typeof value === 'string') {
      if (carriesMask(value)) return true;
    } else if (Array.isArray(value)) {
      for (const inner of value as unknown[]) pending.push(inner);
    } else if (isRecord(value)) {
      for (const inner of Object.values(value)) pending.push(inner);
    }
  }
  return false;
}
