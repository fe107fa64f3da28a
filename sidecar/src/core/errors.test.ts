import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SIDECAR_ERRORS } from './errors.ts';

const doc = readFileSync(join(import.meta.dirname, '..', '..', '..', 'docs', 'errors.md'), 'utf8');

test('docs/errors.md equals the catalogue: every entry with its SQLSTATE, HTTP status, severity and meaning', () => {
  // Prettier pads table cells, so the pattern allows any spacing.
  const rows = [
    ...doc.matchAll(/^\|\s*`(\w+)`\s*\|\s*`(\w{5})`\s*\|\s*(\d{3})\s*\|\s*(FATAL|ERROR)\s*\|\s*(.*?)\s*\|$/gm),
  ];
  const documented = new Map(
    rows.map((m) => [m[1], { sqlState: m[2], http: Number(m[3]), fatal: m[4] === 'FATAL', summary: m[5] }]),
  );
  assert.deepEqual([...documented.keys()].sort(), Object.keys(SIDECAR_ERRORS).sort());
  for (const [id, entry] of Object.entries(SIDECAR_ERRORS)) {
    assert.deepEqual(
      documented.get(id),
      { sqlState: entry.sqlState, http: entry.httpStatus, fatal: entry.fatal, summary: entry.summary },
      id,
    );
  }
});

test('SQLSTATEs are valid five-character codes', () => {
  for (const [id, entry] of Object.entries(SIDECAR_ERRORS)) assert.match(entry.sqlState, /^[0-9A-Z]{5}$/, id);
});
