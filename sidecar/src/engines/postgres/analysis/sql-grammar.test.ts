import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_SERVER_MAJOR,
  SUPPORTED_SERVER_MAJORS,
  loadSqlGrammars,
  serverMajorOf,
  sqlGrammar,
  unsupportedServerReason,
} from './sql-grammar.ts';
import { analyzeSql } from './analyze-sql.ts';
import { UnsupportedServerVersion, createSqlAnalyzer, createSqlAnalyzers } from './sql-analyzer.ts';

before(async () => {
  await loadSqlGrammars();
});

describe('server versions', () => {
  it('reads the major version from server_version values', () => {
    assert.equal(serverMajorOf('15.18 (Debian 15.18-0+deb12u1)'), 15);
    assert.equal(serverMajorOf('15.8'), 15);
    assert.equal(serverMajorOf('16beta1'), 16);
    assert.equal(serverMajorOf('18devel'), 18);
    assert.equal(serverMajorOf('9.6.24'), 9);
    assert.equal(serverMajorOf('PostgreSQL'), undefined);
    assert.equal(serverMajorOf(''), undefined);
  });

  it('supports exactly the majors it has a grammar for, PostgreSQL 15 by default', () => {
    assert.deepEqual(SUPPORTED_SERVER_MAJORS, [15]);
    assert.equal(DEFAULT_SERVER_MAJOR, 15);
    assert.equal(unsupportedServerReason('15.18 (Debian 15.18-0+deb12u1)'), undefined);
    assert.match(unsupportedServerReason('14.11') ?? '', /upstream is PostgreSQL 14; .* grammar of PostgreSQL 15 only/);
    assert.match(unsupportedServerReason('18.1') ?? '', /PostgreSQL 18/);
    assert.match(unsupportedServerReason('CockroachDB') ?? '', /not a PostgreSQL version/);
    assert.equal(sqlGrammar(18), undefined);
  });

  it('parses with the PostgreSQL 15 grammar', () => {
    const tree = sqlGrammar(15)?.parse('SELECT 1') as { version: number };
    assert.equal(Math.floor(tree.version / 10000), 15);
  });
});

describe('the grammar decides what a statement is', () => {
  it('reads json_value(...) as a call of whatever function has that name, as PostgreSQL 15 does', () => {
    // PostgreSQL 17+ parses JSON_VALUE as SQL/JSON syntax; 15 calls a function named json_value, which
    // the owner can define to write.
    const result = analyzeSql("SELECT json_value('{}', '$.a')");
    assert.ok(result.ok);
    const [call] = result.statements;
    assert.ok(call);
    assert.deepEqual(call.functions, ['public.json_value']);
    assert.equal(call.sideEffects, true);
  });

  it('reads system_user as a column, not a built-in (PostgreSQL 15)', () => {
    const result = analyzeSql('SELECT system_user FROM accounts');
    assert.ok(result.ok);
    const [column] = result.statements;
    assert.ok(column);
    assert.deepEqual(column.functions, []);
    assert.equal(column.sideEffects, false);
  });

  it('refuses syntax PostgreSQL 15 does not have (MERGE ... RETURNING is 17+)', () => {
    assert.equal(analyzeSql('MERGE INTO a USING b ON a.id = b.id WHEN MATCHED THEN DELETE RETURNING *').ok, false);
  });

  it('fails every analysis for a major it has no grammar for', () => {
    const result = analyzeSql('SELECT 1', { serverMajor: 18 });
    assert.equal(result.ok, false);
    assert.ok(!result.ok);
    assert.equal(result.error.unsupportedServerMajor, 18);
  });
});

describe('analyzers per server version', () => {
  it('creates one analyzer per supported major and refuses the others', () => {
    const analyzers = createSqlAnalyzers({ cacheSize: 10 });
    const a = analyzers.forServerVersion('15.18 (Debian 15.18-0+deb12u1)');
    assert.equal(a.serverMajor, 15);
    assert.equal(analyzers.forServerVersion('15.2'), a);
    assert.throws(() => analyzers.forServerVersion('16.4'), UnsupportedServerVersion);
    assert.throws(() => analyzers.forServerVersion('banana'), UnsupportedServerVersion);
    assert.throws(() => createSqlAnalyzer({ serverMajor: 13 }), /PostgreSQL 13/);
  });
});
