// psycopg 3 and pgJDBC on masked results (issue 14): for every strategy (redact, partial, hash, null, fixed)
// and a detector rule, each driver reads a table of the common column types (text, varchar, int, bigint,
// numeric, date, timestamptz, uuid, json, jsonb, bytea, text[], int[]) through the sidecar in text and in
// binary format, and must decode every value with its own loaders and get the masked value the
// strategy writes (docs/masking.md). The same reads by an identity without masking are the control: the
// drivers decode those types in those formats, and the columns no rule covers arrive unchanged.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AccessPolicySpec, MaskingStrategy } from '@chaperone/api';
import { startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import {
  PGJDBC_JAR,
  passed,
  PYTHON,
  requireDriver,
  runClient,
  type ClientRun,
  type Step,
} from '../harness/driver-clients.ts';

const CLIENTS = join(REPO_ROOT, 'e2e', 'masking', 'drivers');

const SCHEMA_SQL = `
create table typed (
  id int primary key, t text, v varchar(40), n int, big bigint, num numeric(12,2), d date, ts timestamptz,
  u uuid, j json, jb jsonb, raw bytea, tags text[], nums int[], note text, doc jsonb
);
insert into typed values
  (1, 'secret text one', 'secret varchar', 424242, 9000000001, 12345.67, '2021-03-04', '2021-03-04 05:06:07+00',
   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k":"secret json"}', '{"k": "secret jsonb"}', '\\xdeadbeef',
   '{secret-tag,other}', '{7,8}', 'reach me at alice.secret@example.com',
   '{"card": 4111111111111111, "mail": "alice.secret@example.com", "n": 5}'),
  (2, 'secret text two', 'other varchar', 77, 12, -0.5, '1999-12-31', '1999-12-31 23:59:59+00',
   'b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '[1,"x"]', '{"k": ["secret"]}', '\\x00ff',
   '{}', '{9}', 'nothing here', '{"card": "5500 0055 5555 5559"}');
`;

const MASKED_COLUMNS = ['t', 'v', 'n', 'big', 'num', 'd', 'ts', 'u', 'j', 'jb', 'raw', 'tags', 'nums'];
const STRATEGIES: readonly MaskingStrategy[] = ['redact', 'partial', 'hash', 'null', 'fixed'];
const LABELS = ['clear', ...STRATEGIES, 'detect'] as const;
type Label = (typeof LABELS)[number];

const subject = (label: Label): string => `system:serviceaccount:ci:${label}`;

function policies(): Record<string, AccessPolicySpec> {
  const base = (label: Label): AccessPolicySpec => ({
    resources: { names: ['test-db'] },
    subjects: [{ subject: subject(label) }],
    rules: [{ name: 'read', decision: 'allow', match: {} }],
    defaultDecision: 'deny',
  });
  const out: Record<string, AccessPolicySpec> = { clear: base('clear') };
  for (const strategy of STRATEGIES) {
    out[strategy] = {
      ...base(strategy),
      masking: [
        {
          name: 'typed',
          columns: MASKED_COLUMNS.map((c) => `public.typed.${c}`),
          strategy,
          ...(strategy === 'partial' ? { keepLast: 4 } : {}),
          ...(strategy === 'fixed' ? { value: 'n/a' } : {}),
        },
      ],
    };
  }
  out.detect = {
    ...base('detect'),
    masking: [{ name: 'content', detectors: ['email', 'credit-card'], strategy: 'redact' }],
  };
  return out;
}

type Row = Record<string, unknown>;

/**
 * The rows of a read step, as objects by column name. A numeric's trailing zero fraction is dropped: pgJDBC
 * gives a binary numeric the column's scale (0.00), psycopg and pgJDBC's text reading keep the value's.
 */
function rowsOf(step: Step): Row[] {
  const columns = step.columns as string[];
  return (step.rows as unknown[][]).map((r) =>
    Object.fromEntries(
      columns.map((c, i) => [c, c === 'num' && typeof r[i] === 'string' ? r[i].replace(/\.0+$/, '') : r[i]]),
    ),
  );
}

const hex = (s: string): { hex: string } => ({ hex: Buffer.from(s).toString('hex') });
const EPOCH = { epoch: 0 };
const NIL_UUID = '00000000-0000-0000-0000-000000000000';
const HMAC = /^hmac:[0-9a-f]{16}$/;

/** What every reader gets from the clear identity (the drivers' own decoding of the server's values). */
const CLEAR_ROW_1: Row = {
  id: 1,
  t: 'secret text one',
  v: 'secret varchar',
  n: 424242,
  big: 9000000001,
  num: '12345.67',
  d: '2021-03-04',
  ts: { epoch: Date.UTC(2021, 2, 4, 5, 6, 7) / 1000 },
  u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  raw: { hex: 'deadbeef' },
  tags: ['secret-tag', 'other'],
  nums: [7, 8],
  note: 'reach me at alice.secret@example.com',
};

/** The fixed values of the non-text columns (redact, fixed, and partial/hash where the type has no form). */
const FIXED_NON_TEXT: Row = { d: '1970-01-01', ts: EPOCH, tags: [], nums: [] };

/** JSON values as each driver hands them over: psycopg parses json/jsonb, pgJDBC gives the text. */
function jsonOf(v: unknown): unknown {
  if (v !== null && typeof v === 'object' && 'json' in v) return JSON.parse((v as { json: string }).json);
  return v;
}

function assertStrategy(label: Label, rows: Row[], where: string): void {
  const [r1, r2] = rows;
  assert.ok(r1 !== undefined && r2 !== undefined, `${where}: two rows`);
  for (const r of rows) {
    // Columns no rule covers come through as they are.
    if (label !== 'detect') assert.equal(r.note, r.id === 1 ? CLEAR_ROW_1.note : 'nothing here', where);
  }
  const json = (r: Row): [unknown, unknown] => [jsonOf(r.j), jsonOf(r.jb)];
  switch (label) {
    case 'clear':
      for (const [k, v] of Object.entries(CLEAR_ROW_1)) assert.deepEqual(r1[k], v, `${where}: ${k}`);
      assert.deepEqual(json(r1), [{ k: 'secret json' }, { k: 'secret jsonb' }], where);
      return;
    case 'null':
      for (const r of rows) for (const c of MASKED_COLUMNS) assert.equal(r[c], null, `${where}: ${c}`);
      return;
    case 'redact':
    case 'fixed': {
      const text = label === 'redact' ? '[MASKED]' : 'n/a';
      for (const r of rows) {
        assert.deepEqual(
          { t: r.t, v: r.v, n: r.n, big: r.big, num: r.num, u: r.u, raw: r.raw, json: json(r) },
          { t: text, v: text, n: 0, big: 0, num: '0', u: NIL_UUID, raw: hex(text), json: [text, text] },
          where,
        );
        for (const [k, v] of Object.entries(FIXED_NON_TEXT)) assert.deepEqual(r[k], v, `${where}: ${k}`);
      }
      return;
    }
    case 'partial':
      assert.deepEqual(
        { t: r1.t, v: r1.v, n: r1.n, num: r1.num, u: r1.u, raw: r1.raw },
        // bytea keeps the tail of its text form (\xdeadbeef); other types get their fixed value.
        { t: '*'.repeat(11) + ' one', v: '*'.repeat(10) + 'char', n: 0, num: '0', u: NIL_UUID, raw: hex('******beef') },
        where,
      );
      for (const v of json(r1)) assert.match(String(v), /^\*+.{4}$/, `${where}: json keeps 4 characters`);
      for (const [k, v] of Object.entries(FIXED_NON_TEXT)) assert.deepEqual(r1[k], v, `${where}: ${k}`);
      return;
    case 'hash':
      for (const r of rows) {
        assert.match(String(r.t), HMAC, where);
        assert.match(String(r.v), HMAC, where);
        for (const v of json(r)) assert.match(String(v), HMAC, `${where}: json`);
        assert.match(Buffer.from((r.raw as { hex: string }).hex, 'hex').toString(), HMAC, `${where}: bytea`);
        for (const c of ['n', 'big']) assert.ok(Number.isInteger(r[c]) && Number(r[c]) >= 0, `${where}: ${c}`);
        assert.match(String(r.num), /^\d{1,15}$/, `${where}: numeric`);
        assert.match(String(r.u), /^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$/, `${where}: uuid`);
        assert.notEqual(r.u, NIL_UUID);
        for (const [k, v] of Object.entries(FIXED_NON_TEXT)) assert.deepEqual(r[k], v, `${where}: ${k}`);
      }
      assert.notEqual(r1.n, CLEAR_ROW_1.n);
      assert.notEqual(r1.t, r2.t, 'different values hash differently');
      return;
    case 'detect': {
      assert.equal(r1.note, 'reach me at [MASKED]', where);
      assert.deepEqual(jsonOf(r1.doc), { card: '[MASKED]', mail: '[MASKED]', n: 5 }, where);
      assert.deepEqual(jsonOf(r2.doc), { card: '[MASKED]' }, where);
      assert.equal(r1.t, 'secret text one', `${where}: no detector finds anything in t`);
      assert.deepEqual(r1.tags, ['secret-tag', 'other'], where);
      return;
    }
  }
}

/** The hashed values of one read, to compare across formats and drivers. */
function hashes(rows: Row[]): unknown[] {
  return rows.map((r) => [r.t, r.v, r.n, r.big, r.num, r.u, r.raw, jsonOf(r.j), jsonOf(r.jb)]);
}

/** A sidecar with the strategy policies and the shared hash key (masking.hashKeyFile), on a fresh database. */
async function maskingSidecar(t: TestContext): Promise<RunningTestSidecar> {
  const dir = mkdtempSync(join(tmpdir(), 'masking-key-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'hash-key');
  writeFileSync(keyFile, HASH_KEY, { mode: 0o600 });
  return startTestSidecar(t, {
    policies: policies(),
    database: await createTestDatabase(t, SCHEMA_SQL),
    listener: { masking: { hashKeyFile: keyFile } },
  });
}

/** The key both tests' sidecars share, as every pod of a resource shares its Secret's key. */
const HASH_KEY = Buffer.from('a shared key of the masking-drivers test, 32+ bytes long');

async function tokens(sidecar: RunningTestSidecar): Promise<string> {
  const out: Record<string, string> = {};
  for (const label of LABELS) out[label] = await sidecar.issuer.sign({ sub: subject(label) });
  return JSON.stringify(out);
}

function assertRun(run: ClientRun, formats: readonly string[], binaryFormatOf: (format: string) => number[]): Row[][] {
  const failures: string[] = [];
  const hashed: Row[][] = [];
  for (const label of LABELS) {
    for (const format of formats) {
      const name = `${label}/${format}`;
      try {
        const step = passed(run, name);
        // The format the driver actually received, per column.
        assert.deepEqual(step.formats, binaryFormatOf(format), `${name}: result formats`);
        const rows = rowsOf(step);
        assertStrategy(label, rows, name);
        if (label === 'hash') hashed.push(rows);
      } catch (err) {
        failures.push(err instanceof Error ? err.message : String(err));
      }
    }
  }
  assert.deepEqual(failures, [], failures.join('\n\n'));
  return hashed;
}

const COLUMN_COUNT = 16;
let pythonHashes: unknown[] | undefined;
let jdbcHashes: unknown[] | undefined;

test('psycopg 3 decodes masked results of every strategy and column type, text and binary', async (t) => {
  requireDriver(PYTHON, 'psycopg (the Python virtualenv)');
  const sidecar = await maskingSidecar(t);
  const run = await runClient(
    PYTHON,
    [join(CLIENTS, 'psycopg_masked.py')],
    sidecar.libpqEnv('', { CHAPERONE_TOKENS: await tokens(sidecar) }),
  );
  const hashed = assertRun(run, ['text', 'binary', 'binary-prepared'], (f) =>
    Array<number>(COLUMN_COUNT).fill(f === 'text' ? 0 : 1),
  );
  // The keyed hash is of the value, not of its encoding: text and binary readers get the same.
  assert.equal(hashed.length, 3);
  assert.deepEqual(hashes(hashed[1] ?? []), hashes(hashed[0] ?? []));
  assert.deepEqual(hashes(hashed[2] ?? []), hashes(hashed[0] ?? []));
  pythonHashes = hashes(hashed[0] ?? []);
  assertNoLeak(sidecar);
});

test('pgJDBC decodes masked results of every strategy and column type, text and binary', async (t) => {
  requireDriver(PGJDBC_JAR, 'the PostgreSQL JDBC driver');
  const sidecar = await maskingSidecar(t);
  const run = await runClient(
    'java',
    ['-cp', PGJDBC_JAR, join(CLIENTS, 'MaskedJdbc.java')],
    sidecar.libpqEnv('', { CHAPERONE_TOKENS: await tokens(sidecar) }),
  );
  // pgJDBC asks for binary only for the types it decodes in binary (binaryTransferEnable adds text, numeric,
  // uuid, bytea, arrays); it keeps json and jsonb in text.
  const hashed = assertRun(run, ['text', 'binary'], (f) =>
    f === 'text' ? Array<number>(COLUMN_COUNT).fill(0) : JDBC_BINARY_FORMATS,
  );
  assert.equal(hashed.length, 2);
  assert.deepEqual(hashes(hashed[1] ?? []), hashes(hashed[0] ?? []), 'the same hashes in text and binary');
  jdbcHashes = hashes(hashed[0] ?? []);
  if (pythonHashes !== undefined) {
    // Two sidecars with the same key file (as two pods of one resource): the same masked values.
    assert.deepEqual(jdbcHashes, pythonHashes, 'psycopg and pgJDBC see the same hashed values');
  }
  assertNoLeak(sidecar);
});

/** Formats pgJDBC negotiates per column of `typed` with binaryTransferEnable (id … doc): json, jsonb in text. */
const JDBC_BINARY_FORMATS = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0];

function assertNoLeak(sidecar: RunningTestSidecar): void {
  const logs = sidecar.logs();
  for (const secret of ['secret text one', 'alice.secret@example.com', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']) {
    assert.ok(!logs.includes(secret), `the sidecar log holds ${secret}`);
  }
}
