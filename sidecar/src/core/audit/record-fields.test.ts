// readRecordFields against JSON.parse: on every record text it reads, it returns exactly what JSON.parse
// gives for those members (canonical texts, members in other orders, escapes and unicode in the members it
// skips and in those it keeps); texts that are not one well-formed record object throw, and a text changed
// anywhere is either refused or read as JSON.parse reads it, never as something else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { canonicalRecordText, sealRecord, type AuditRecord } from '@chaperone/api';
import { readRecordFields, UnreadableRecordText, type RecordFields } from './record-fields.ts';

/** The members readRecordFields keeps, from the whole record JSON.parse gives. */
function projection(record: AuditRecord): RecordFields {
  const { v, seq, time, type, hash, prevHash, identity, decision, outcome } = record;
  return {
    v,
    seq,
    time,
    type,
    hash,
    prevHash,
    ...(identity === undefined ? {} : { identity }),
    ...(decision === undefined ? {} : { decision: { result: decision.result } }),
    ...(outcome === undefined ? {} : { outcome: { status: outcome.status } }),
  };
}

const HASH = `sha256:${'a1'.repeat(32)}`;
const odd = [
  'say "hi"',
  'back\\slash',
  'ends with a backslash \\',
  '\\"quoted\\"',
  'tab\tnew\nline\r',
  'null \u0000 byte',
  'é ü 漢字 😀',
  '"}],{"seq":99,"hash":"x"',
  '\u2028\u2029',
];

function records(): AuditRecord[] {
  const out: AuditRecord[] = [];
  let seq = 0;
  const seal = (r: Omit<AuditRecord, 'hash' | 'prevHash' | 'v' | 'seq' | 'time'>) =>
    out.push(
      sealRecord({
        v: 3,
        seq: ++seq,
        time: '2026-12-06T03:00:00.123456Z',
        prevHash: HASH,
        ...r,
      }).record,
    );
  seal({
    type: 'session.start',
    identity: { subject: 'agent "x"', issuer: 'https://issuer.example/\\', groups: ['a', 'ü'] },
    session: { sessionId: 's', resource: 'db', resourceType: 'postgres', namespace: 'ns', pod: 'p' },
    source: { address: '127.0.0.1:5' },
  });
  for (const text of odd) {
    seal({
      type: 'command.decision',
      command: { id: seq, kind: 'sql', text, statementKinds: ['select'], relations: [text, 'public.t'] },
      decision: { result: 'deny', rule: text, reasons: [text, text] },
    });
    seal({
      type: 'command.decision',
      command: { id: seq, kind: 'sql', text },
      decision: { result: 'approve', reasons: [] },
      outcome: { status: 'error', code: '42501', message: text, rows: 0 },
    });
    seal({ type: 'command.outcome', command: { id: seq, kind: 'sql', text }, outcome: { status: 'cancelled' } });
  }
  seal({ type: 'session.end', outcome: { status: 'success' } });
  return out;
}

test('canonical record texts: the fields JSON.parse gives, whatever the strings hold', () => {
  for (const record of records()) {
    const text = canonicalRecordText(record);
    assert.deepEqual(readRecordFields(text), projection(JSON.parse(text) as AuditRecord), text);
    // Inside a longer text (a spool entry), read between start and end.
    const entry = `{"s":{"sessionId":"x"},"r":${text}}`;
    assert.deepEqual(readRecordFields(entry, 27, entry.length - 1), projection(record));
  }
});

test('members in other orders, escapes in kept members: read as JSON.parse reads them', () => {
  for (const record of records()) {
    const reversed = Object.fromEntries(Object.entries(record).reverse());
    const text = JSON.stringify(reversed);
    assert.deepEqual(readRecordFields(text), projection(record));
  }
  const escaped =
    '{"v":3,"seq":7,"time":"\\u0032026-12-06T03:00:00.000000Z","type":"command.\\u0064ecision",' +
    `"decision":{"reasons":["\\\\"],"result":"allow"},"hash":"${HASH}","prevHash":"${HASH}","o\\u0075tcome":{"status":"error"}}`;
  assert.deepEqual(readRecordFields(escaped), projection(JSON.parse(escaped) as AuditRecord));
  assert.equal(readRecordFields(escaped).outcome?.status, 'error', 'an escaped member name is the member');
});

test('texts that are not one record object throw', () => {
  const good = canonicalRecordText(records()[1] as AuditRecord);
  const bad: [string, string][] = [
    ['', 'empty'],
    [good.slice(0, -1), 'truncated'],
    [good.slice(0, 40), 'truncated in a string'],
    [`${good} `, 'trailing space'],
    [`${good}{}`, 'trailing object'],
    [` ${good}`, 'leading space'],
    [good.replace('"seq":', '"seq" :'), 'space before a colon'],
    [good.replace(/"seq":\d+/, '"seq":"2"'), 'seq a string'],
    [good.replace(/"seq":\d+/, '"seq":2.5'), 'seq not an integer'],
    [good.replace(/"seq":\d+/, '"seq":02'), 'a number with a leading zero'],
    [good.replace(/"seq":\d+/, '"seq":2,"seq":3'), 'a member twice'],
    [good.replace('"result":"deny"', '"result":"deny","result":"allow"'), 'a nested kept member twice'],
    [good.replace(/,"time":"[^"]*"/, ''), 'time missing'],
    [good.replace('"kind":"sql"', '"kind":tru'), 'a bad literal in a skipped member'],
    [good.replace('"kind":"sql"', '"kind" "sql"'), 'no colon in a skipped member'],
    [good.replace('"kind":"sql"', '"kind":"sql",'), 'a trailing comma'],
    [good.replace('"relations":[', '"relations":[,'), 'a leading comma in an array'],
    [
      good.replace('"type":"command.decision"', '"type":"command\u0001decision"'),
      'a raw control character in a kept string',
    ],
    [`${'['.repeat(40)}${']'.repeat(40)}`, 'not an object'],
    [good.replace('"command":{', `"command":${'['.repeat(40)}${']'.repeat(40)},"x":{`), 'nested too deep'],
    ['[1]', 'an array'],
  ];
  for (const [text, why] of bad) {
    assert.throws(
      () => readRecordFields(text),
      (err: unknown) => err instanceof UnreadableRecordText || err instanceof SyntaxError,
      why,
    );
  }
});

test('a text changed in one place is refused or read as JSON.parse reads it, never otherwise', () => {
  const texts = records().map((r) => canonicalRecordText(r));
  const replacements = ['"', '\\', '{', '}', '[', ']', ',', ':', '1', 'x', ' '];
  let refused = 0;
  let read = 0;
  let seed = 42;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  for (let i = 0; i < 4000; i++) {
    const text = texts[random(texts.length)] as string;
    const at = random(text.length);
    const changed = `${text.slice(0, at)}${replacements[random(replacements.length)] as string}${text.slice(at + 1)}`;
    let fields: RecordFields | undefined;
    try {
      fields = readRecordFields(changed);
    } catch {
      refused += 1;
      continue;
    }
    read += 1;
    let parsed: AuditRecord | undefined;
    try {
      parsed = JSON.parse(changed) as AuditRecord;
    } catch {
      // Only a string's contents are not checked (an escape made invalid, a control character): the
      // members kept are still exactly the original's.
      assert.deepEqual(fields, projection(JSON.parse(text) as AuditRecord), changed);
      continue;
    }
    assert.deepEqual(fields, projection(parsed), changed);
  }
  assert.ok(refused > 1000 && read > 100, `refused ${String(refused)}, read ${String(read)}`);
});

test('the fields read keep nothing of the record text alive (the worker drops the text once stored)', () => {
  // gc() without --expose-gc: the flag set now, the function taken from a fresh context.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const record = records()[1] as AuditRecord;
  // Each text large (as a spool entry with a long statement) and its own string, decoded from bytes as the
  // worker decodes the spool's frames.
  const pad = 'x'.repeat(4000);
  const kept: RecordFields[] = [];
  gc();
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < 5000; i++) {
    const text = Buffer.from(
      canonicalRecordText({ ...record, seq: i + 1, command: { id: i + 1, kind: 'sql', text: `${pad}${String(i)}` } }),
    ).toString('utf8');
    kept.push(readRecordFields(text));
  }
  gc();
  const grown = process.memoryUsage().heapUsed - before;
  // 5,000 texts of ~4 KiB are ~20 MiB; the fields alone well under 4 MiB (sliced, they kept every text).
  assert.equal(kept.length, 5000);
  assert.ok(grown < 4 * 1024 * 1024, `${String(Math.round(grown / 1024))} KiB kept for 5,000 records' fields`);
});
