// How `kubectl chaperone sessions show` prints an outcome that names the commands a rollback undid.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AuditRecord } from '@chaperone/api';
import { describeRecord } from './session-view.ts';

const HASH = `sha256:${'0'.repeat(64)}`;

test('a ROLLBACK outcome prints how many commands it undid and their ids; other outcomes print as before', () => {
  const base = { v: 3, seq: 9, time: '2026-12-05T23:00:00.000000Z', prevHash: HASH, hash: HASH } as const;
  const rollback: AuditRecord = {
    ...base,
    type: 'command.outcome',
    command: { id: 7, kind: 'sql' },
    outcome: { status: 'success', rows: 0, rolledBack: { commands: 2, first: 4, last: 6 } },
  };
  assert.match(
    describeRecord(rollback),
    /#7 sql {2}success, 0 row\(s\); rolled back 2 command\(s\) recorded success, #4\.\.#6$/,
  );
  const one: AuditRecord = {
    ...rollback,
    outcome: { status: 'success', rolledBack: { commands: 1, first: 5, last: 5 } },
  };
  assert.match(describeRecord(one), /rolled back 1 command\(s\) recorded success, #5$/);
  const plain: AuditRecord = { ...rollback, outcome: { status: 'success', rows: 3 } };
  assert.doesNotMatch(describeRecord(plain), /rolled back/);
});
