import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loginKey, resetProblem, type LoginKeyParts } from './upstream-reuse.ts';

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
