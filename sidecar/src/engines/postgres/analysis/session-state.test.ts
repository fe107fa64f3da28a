import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { analyzeSql, loadSqlParser, type AnalyzedStatement } from './analyze-sql.ts';
import {
  ServerReportedState,
  parseSearchPath,
  pinnedSearchPath,
  sessionTimeoutsSql,
  settingRefusal,
  timeoutMs,
  upstreamStartupParameters,
  type SessionPins,
} from './session-state.ts';

before(async () => {
  await loadSqlParser();
});

const PINS: SessionPins = { schema: 'public', readOnly: false };
const READ_ONLY: SessionPins = { schema: 'public', readOnly: true };

function startup(params: [string, string][], pins = PINS) {
  return upstreamStartupParameters(params, pins);
}

function statement(sql: string): AnalyzedStatement {
  const result = analyzeSql(sql);
  assert.ok(result.ok && result.statements.length === 1, sql);
  return result.statements[0] as AnalyzedStatement;
}

describe('upstreamStartupParameters', () => {
  it('lower-cases names, keeps the last value of a repeated name and always sends the pins', () => {
    const result = startup([
      ['user', 'agent'],
      ['database', 'agent'],
      ['Application_Name', 'one'],
      ['application_name', 'two'],
      ['TimeZone', 'UTC'],
      ['client_encoding', 'UTF8'],
      ['unknown_thing', 'x'],
    ]);
    assert.deepEqual(result, {
      ok: true,
      parameters: [
        ['application_name', 'two'],
        ['timezone', 'UTC'],
        ['client_encoding', 'UTF8'],
        ['standard_conforming_strings', 'on'],
        ['search_path', '"public"'],
      ],
    });
  });

  it('starts read-only sessions with default_transaction_read_only=on', () => {
    const result = startup([], READ_ONLY);
    assert.ok(result.ok);
    assert.deepEqual(result.parameters.at(-1), ['default_transaction_read_only', 'on']);
  });

  it('refuses a client encoding other than UTF8 whatever the case of the name (Client_Encoding=SJIS)', () => {
    for (const params of [
      [['Client_Encoding', 'SJIS']],
      [['CLIENT_ENCODING', 'sjis']],
      [
        ['client_encoding', 'UTF8'],
        ['Client_Encoding', 'BIG5'],
      ],
      [['options', '-c client_encoding=SJIS']],
      [['options', '--client-encoding=GBK']],
      [['options', '-cclient_encoding=SQL_ASCII']],
      [['client_encoding', 'SQL_ASCII']],
    ] as [string, string][][]) {
      const result = startup(params);
      assert.equal(result.ok, false, JSON.stringify(params));
      assert.ok(!result.ok);
      assert.match(result.reason, /client_encoding .* not supported/);
    }
    assert.equal(startup([['Client_Encoding', 'utf-8']]).ok, true);
    assert.equal(startup([['client_encoding', 'Unicode']]).ok, true);
  });

  it('refuses a search_path other than the pinned schema, in any case or through options', () => {
    assert.equal(startup([['search_path', 'public']]).ok, true);
    assert.equal(startup([['SEARCH_PATH', ' "public" ']]).ok, true);
    for (const params of [
      [['Search_Path', 'secret, public']],
      [['search_path', 'secret']],
      [['search_path', '"Public"']],
      [['options', '-c search_path=secret']],
    ] as [string, string][][]) {
      const result = startup(params);
      assert.ok(!result.ok, JSON.stringify(params));
      assert.match(result.reason, /search_path is pinned to "public"/);
    }
  });

  it('refuses settings that change privileges, the lexer or the read-only guard', () => {
    const refused: [string, string][][] = [
      [['replication', 'database']],
      [['options', '-c role=postgres']],
      [['options', '-c session_authorization=postgres']],
      [['standard_conforming_strings', 'off']],
      [['options', '-c standard_conforming_strings=off']],
      [['Backslash_Quote', 'on']],
      [['options', '-c session_replication_role=replica']],
      [['options', '-O']],
      [['options', '-d 5']],
      [['options', '-c']],
      [['options', '-c noequals']],
    ];
    for (const params of refused) assert.equal(startup(params).ok, false, JSON.stringify(params));
    // Privileges and the read-only guard are 42501 to the client; what the sidecar cannot model is 0A000.
    const privilege = (params: [string, string][], pins?: SessionPins): boolean | undefined => {
      const result = startup(params, pins);
      return result.ok ? undefined : result.privilege;
    };
    assert.equal(privilege([['replication', 'database']]), true);
    assert.equal(privilege([['options', '-c role=postgres']]), true);
    assert.equal(privilege([['Session_Authorization', 'postgres']]), true);
    assert.equal(privilege([['options', '-c session_replication_role=replica']]), true);
    assert.equal(privilege([['default_transaction_read_only', 'off']], READ_ONLY), true);
    assert.equal(privilege([['Client_Encoding', 'SJIS']]), false);
    assert.equal(privilege([['options', '-O']]), false);
    assert.equal(privilege([['Backslash_Quote', 'on']]), false);
    assert.equal(privilege([['search_path', 'secret']]), false);
    assert.equal(startup([['default_transaction_read_only', 'off']], READ_ONLY).ok, false);
    assert.equal(startup([['options', '-c default_transaction_read_only=off']], READ_ONLY).ok, false);
    assert.equal(startup([['default_transaction_read_only', 'on']], READ_ONLY).ok, true);
  });

  it('reads options as the server does: escaped spaces, -c, -cname=value and --name=value', () => {
    const result = startup([['options', '-c application_name=a\\ b  --statement-timeout=5s -clock_timeout=1s']]);
    assert.ok(result.ok);
    assert.deepEqual(result.parameters.slice(0, 3), [
      ['application_name', 'a b'],
      ['statement_timeout', '5s'],
      ['lock_timeout', '1s'],
    ]);
  });
});

describe('parseSearchPath', () => {
  it('splits and folds like the server', () => {
    assert.deepEqual(parseSearchPath('"$user", Public,"My ""S"""'), ['$user', 'public', 'My "S"']);
    assert.deepEqual(parseSearchPath(''), []);
    assert.equal(parseSearchPath('a,,b'), undefined);
    assert.equal(parseSearchPath('"open'), undefined);
    assert.deepEqual(pinnedSearchPath(PINS), ['public']);
  });
});

describe('ServerReportedState', () => {
  const startupReports: [string, string][] = [
    ['application_name', ''],
    ['client_encoding', 'UTF8'],
    ['DateStyle', 'ISO, MDY'],
    ['default_transaction_read_only', 'off'],
    ['server_encoding', 'UTF8'],
    ['server_version', '15.18 (Debian 15.18-0+deb12u1)'],
    ['standard_conforming_strings', 'on'],
  ];

  it('accepts what a PostgreSQL 15 UTF8 database reports at startup', () => {
    const state = new ServerReportedState(PINS);
    for (const [n, v] of startupReports) assert.equal(state.note(n, v), undefined, n);
    assert.equal(state.startupRefusal(), undefined);
    assert.equal(state.serverMajor, 15);
    assert.equal(state.get('datestyle'), 'ISO, MDY');
  });

  it('ends the session when a report says the server reads statements differently', () => {
    const state = new ServerReportedState(PINS);
    assert.match(state.note('client_encoding', 'SJIS') ?? '', /not supported/);
    assert.match(state.note('server_encoding', 'LATIN1') ?? '', /UTF8 databases only/);
    assert.match(state.note('server_version', '16.2') ?? '', /PostgreSQL 16/);
    assert.match(state.note('standard_conforming_strings', 'off') ?? '', /standard_conforming_strings off/);
  });

  it('needs the reports it models and, in a read-only session, the guard', () => {
    assert.match(new ServerReportedState(PINS).startupRefusal() ?? '', /did not report server_version/);
    const state = new ServerReportedState(READ_ONLY);
    for (const [n, v] of startupReports) state.note(n, v === 'off' ? 'on' : v);
    assert.equal(state.startupRefusal(), undefined);
    assert.match(state.note('default_transaction_read_only', 'off') ?? '', /read-only session/);
  });
});

describe('settingRefusal', () => {
  it('refuses every SET of the pinned settings and allows returning to the pin', () => {
    for (const sql of [
      'SET search_path = secret',
      'SET LOCAL search_path TO secret, public',
      'SET SESSION search_path = public',
      "SET client_encoding = 'SJIS'",
      'SET standard_conforming_strings = off',
      'SET backslash_quote = on',
      'SET "search_path" = secret',
    ]) {
      assert.notEqual(settingRefusal(statement(sql), PINS), undefined, sql);
    }
    for (const sql of ['RESET search_path', 'SET search_path TO DEFAULT', 'SET statement_timeout = 0', 'SELECT 1']) {
      assert.equal(settingRefusal(statement(sql), PINS), undefined, sql);
    }
  });

  it('keeps a read-only session read-only', () => {
    for (const sql of [
      'SET default_transaction_read_only = off',
      'SET transaction_read_only = off',
      'RESET transaction_read_only',
      "SET session_replication_role = 'replica'",
      'BEGIN READ WRITE',
      'BEGIN READ ONLY, READ WRITE',
      'START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE',
      'SET TRANSACTION READ ONLY, READ WRITE',
      'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE',
    ]) {
      assert.notEqual(settingRefusal(statement(sql), READ_ONLY), undefined, sql);
      assert.equal(settingRefusal(statement(sql), PINS), undefined, `${sql} in a read-write session`);
    }
    for (const sql of [
      'SET default_transaction_read_only = on',
      'RESET default_transaction_read_only',
      'BEGIN',
      'BEGIN READ WRITE, READ ONLY',
      'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE',
      'COMMIT',
    ]) {
      assert.equal(settingRefusal(statement(sql), READ_ONLY), undefined, sql);
    }
  });

  it('refuses set_config() of the same settings, since it is SET by another name, and of the role', () => {
    for (const sql of [
      "SELECT set_config('search_path', 'secret', false)",
      "SELECT set_config('Search_Path', 'secret', true)",
      "SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)",
      "SELECT 1 WHERE set_config('standard_conforming_strings', 'off', false) IS NOT NULL",
      "SELECT set_config('backslash_quote', 'on', false)",
      "SELECT set_config('role', 'postgres', false)",
      "SELECT set_config('session_authorization', 'postgres', false)",
      "SELECT set_config(name, 'x', false) FROM pg_settings",
      'PREPARE s(text) AS SELECT set_config($1, $2, false)',
      "EXECUTE late(set_config('search_path', 'secret', false)::int)",
      "SELECT * FROM accounts WHERE id = (SELECT length(set_config('search_path', 'secret', false)))",
    ]) {
      assert.notEqual(settingRefusal(statement(sql), PINS), undefined, sql);
    }
    const guard = "SELECT set_config('default_transaction_read_only', 'off', false)";
    assert.notEqual(settingRefusal(statement(guard), READ_ONLY), undefined);
    assert.equal(settingRefusal(statement(guard), PINS), undefined, 'a writer session: up to the policy');
    assert.equal(settingRefusal(statement("SELECT set_config('application_name', 'x', false)"), READ_ONLY), undefined);
    assert.deepEqual(statement("SELECT set_config('A', '1', false), set_config(x, '2', true) FROM t").configures, [
      'a',
      '*',
    ]);
  });
});

describe('timeouts a read-only session cannot lift', () => {
  const BOUNDED: SessionPins = {
    schema: 'public',
    readOnly: true,
    timeoutBounds: { statement_timeout: 600_000, idle_in_transaction_session_timeout: 300_000 },
  };

  it('reads time values as the server does for a setting in ms', () => {
    assert.equal(timeoutMs('5000'), 5000);
    assert.equal(timeoutMs(' 5s '), 5000);
    assert.equal(timeoutMs('1.5min'), 90_000);
    assert.equal(timeoutMs('2 h'), 7_200_000);
    assert.equal(timeoutMs('1500us'), 2);
    assert.equal(timeoutMs('0'), 0);
    for (const bad of ['', '-1', '5 sec', '1e3', 'off', '3000000000']) assert.equal(timeoutMs(bad), undefined, bad);
  });

  it('refuses every statement that sets, resets or defaults them, and RESET ALL, in a read-only session only', () => {
    for (const sql of [
      'SET statement_timeout = 0',
      'SET statement_timeout = 1000',
      'SET LOCAL lock_timeout = 0',
      'SET SESSION idle_in_transaction_session_timeout TO 0',
      'SET idle_session_timeout = 0',
      'SET "Statement_Timeout" = 0',
      'RESET idle_in_transaction_session_timeout',
      'SET statement_timeout TO DEFAULT',
      'SET lock_timeout FROM CURRENT',
      'RESET ALL',
      "SELECT set_config('idle_in_transaction_session_timeout', '0', false)",
      "SELECT pg_catalog.set_config('LOCK_TIMEOUT', '0', true)",
      'DECLARE c CURSOR WITH HOLD FOR SELECT pg_sleep(3600)',
      'DECLARE c BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1',
    ]) {
      assert.match(settingRefusal(statement(sql), BOUNDED) ?? '', /read-only/, sql);
      assert.match(settingRefusal(statement(sql), READ_ONLY) ?? '', /read-only/, `${sql} without bounds`);
      assert.equal(settingRefusal(statement(sql), PINS), undefined, `${sql} in a read-write session`);
    }
    for (const sql of [
      'SHOW statement_timeout',
      "SELECT current_setting('lock_timeout')",
      'SET work_mem = 65536',
      'DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1',
      'DECLARE c SCROLL CURSOR FOR SELECT 1',
    ]) {
      assert.equal(settingRefusal(statement(sql), BOUNDED), undefined, sql);
    }
  });

  it('takes a read-only client startup value only when it is stricter than the bound, and not as a startup value', () => {
    const ok = startup([['options', '-c statement_timeout=5s --lock-timeout=100']], BOUNDED);
    assert.ok(ok.ok);
    assert.deepEqual(ok.timeouts, { statement_timeout: 5000, lock_timeout: 100 });
    assert.ok(!ok.parameters.some(([name]) => name.endsWith('_timeout')));
    for (const params of [
      [['statement_timeout', '0']],
      [['options', '-c idle_in_transaction_session_timeout=0']],
      [['Idle_In_Transaction_Session_Timeout', '1h']],
      [['statement_timeout', '-1']],
      [['lock_timeout', 'forever']],
      [['options', '--lock-timeout=0']],
    ] as [string, string][][]) {
      const refused = startup(params, BOUNDED);
      assert.ok(!refused.ok && refused.privilege, JSON.stringify(params));
      assert.match(refused.reason, /read-only; \w+ can only be made stricter/);
    }
    // A lock_timeout without a bound is still only made stricter: any positive value.
    assert.ok(startup([['lock_timeout', '1d']], BOUNDED).ok);
    // Read-write sessions pass them through as before.
    assert.deepEqual(startup([['statement_timeout', '0']]), {
      ok: true,
      parameters: [
        ['statement_timeout', '0'],
        ['client_encoding', 'UTF8'],
        ['standard_conforming_strings', 'on'],
        ['search_path', '"public"'],
      ],
    });
  });

  it('sets the smallest of the database value, the bound and the client value, read-only sessions only', () => {
    assert.equal(sessionTimeoutsSql(PINS), undefined);
    assert.equal(sessionTimeoutsSql(READ_ONLY), undefined);
    const sql = sessionTimeoutsSql(BOUNDED, { statement_timeout: 5000, lock_timeout: 100 }) ?? '';
    assert.match(sql, /\('statement_timeout', 5000::pg_catalog\.int8\)/);
    assert.match(sql, /\('lock_timeout', 100::pg_catalog\.int8\)/);
    assert.match(sql, /\('idle_in_transaction_session_timeout', 300000::pg_catalog\.int8\)/);
    assert.equal(statement(sql).kind, 'select');
  });
});
