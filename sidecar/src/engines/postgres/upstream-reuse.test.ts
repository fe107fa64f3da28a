import { test } from 'node:test';
import assert from 'node:assert/strict';
import { analyzeSql, loadSqlParser } from './analysis/analyze-sql.ts';
import { loginKey, resetCheckSql, resetProblem, statementResidue, type LoginKeyParts } from './upstream-reuse.ts';

const LOGIN = new Map([
  ['application_name', 'app'],
  ['default_transaction_read_only', 'off'],
  ['TimeZone', 'UTC'],
]);
const ok = (value: string) => ({ firstValue: value, error: undefined });

test('resetProblem accepts a reset that returned every reported setting to its login value', () => {
  const during = new Map([...LOGIN, ['application_name', 'changed']]);
  const outcome = {
    results: [ok(''), ok('0/pg_stat_statements.max')],
    transactionStatus: 'I' as const,
    parameterStatus: [['application_name', 'app']] as const,
  };
  assert.equal(resetProblem(LOGIN, during, 'pg_stat_statements.max', outcome), undefined);
});

test('resetProblem refuses a setting not back at its login value, leftover state, a new library, an error, a transaction', () => {
  const base = { results: [ok(''), ok('0/')], transactionStatus: 'I' as const, parameterStatus: [] as const };
  const during = new Map([...LOGIN, ['TimeZone', 'Asia/Tokyo']]);
  assert.match(resetProblem(LOGIN, during, '', base) ?? '', /TimeZone/);
  assert.match(
    resetProblem(LOGIN, LOGIN, '', { ...base, parameterStatus: [['default_transaction_read_only', 'on']] }) ?? '',
    /default_transaction_read_only/,
  );
  assert.match(resetProblem(LOGIN, LOGIN, '', { ...base, results: [ok(''), ok('2/')] }) ?? '', /state left/);
  assert.match(resetProblem(LOGIN, LOGIN, '', { ...base, results: [ok(''), ok('0/pg_trgm.x')] }) ?? '', /state left/);
  assert.match(
    resetProblem(LOGIN, LOGIN, '', {
      ...base,
      results: [
        { firstValue: undefined, error: { code: '25001', message: 'in a transaction block' } as never },
        ok('0/'),
      ],
    }) ?? '',
    /DISCARD ALL failed/,
  );
  assert.match(resetProblem(LOGIN, LOGIN, '', { ...base, transactionStatus: 'T' }) ?? '', /transaction status T/);
});

test('loginKey differs for every part that shaped the login, and is stable otherwise', () => {
  const parts: LoginKeyParts = {
    host: 'db',
    port: 5432,
    database: 'orders',
    login: 'full',
    user: 'app',
    password: 'secret',
    tls: { mode: 'verify-full', ca: 'CA1', servername: 'db' },
    parameters: [['application_name', 'a']],
  };
  const key = loginKey(parts);
  assert.equal(loginKey({ ...parts }), key);
  assert.doesNotMatch(key, /secret/);
  const variants: Partial<LoginKeyParts>[] = [
    { host: 'db2' },
    { port: 5433 },
    { database: 'other' },
    { login: 'read-only' },
    { user: 'other' },
    { password: 'rotated' },
    { tls: { mode: 'verify-ca', ca: 'CA1', servername: 'db' } },
    { tls: { mode: 'verify-full', ca: 'CA2', servername: 'db' } },
    { tls: { mode: 'verify-full', ca: 'CA1', servername: 'db2' } },
    { parameters: [['application_name', 'b']] },
    {
      parameters: [
        ['application_name', 'a'],
        ['default_transaction_read_only', 'on'],
      ],
    },
  ];
  for (const v of variants) assert.notEqual(loginKey({ ...parts, ...v }), key, JSON.stringify(v));
});

function residueOf(sql: string): ReturnType<typeof statementResidue> {
  const analysis = analyzeSql(sql);
  assert.ok(analysis.ok, sql);
  return statementResidue(analysis.statements);
}

test('statementResidue names the custom settings a connection used and what no reset can undo', async () => {
  await loadSqlParser();
  assert.deepEqual(residueOf(`SET myapp.secret = 'x'; SET work_mem = '8MB'; RESET other.name`), {
    placeholders: ['myapp.secret', 'other.name'],
    unresettable: undefined,
  });
  assert.deepEqual(residueOf(`SELECT set_config('a.b', 'x', false), set_config('statement_timeout', '1', false)`), {
    placeholders: ['a.b'],
    unresettable: undefined,
  });
  assert.deepEqual(residueOf(`BEGIN; SET LOCAL "Tenant".x = 'y'; COMMIT`).placeholders, ['tenant.x']);
  for (const [sql, why] of [
    [`LOAD 'passwordcheck'`, /LOAD ran/],
    [`/* c */ load\n'auto_explain'`, /LOAD ran/],
    [`DO $$ BEGIN EXECUTE 'LO' || 'AD ''x'''; END $$`, /DO block/],
    [`SELECT set_config(name, 'x', false) FROM t`, /not a literal/],
  ] as const) {
    assert.match(residueOf(sql).unresettable ?? '', why, sql);
  }
  assert.equal(residueOf(`SELECT 'load' AS word; CHECKPOINT`).unresettable, undefined);
});

test('resetCheckSql asks for each placeholder by a quoted literal', () => {
  assert.doesNotMatch(resetCheckSql([]), /current_setting/);
  const sql = resetCheckSql(['a.b', "o'x.y"]);
  assert.match(sql, /ARRAY\['a\.b', 'o''x\.y'\]/);
  assert.match(sql, /current_setting\(p\.name, true\) IS NOT NULL/);
});
