// The analysis side of the differential corpus: each attempt, decided the way the engine decides (a
// deliberately independent model of the connection and of the corpus's read-only policy: EXECUTE resolved
// with resolveSqlExecute, settingRefusal with the pinned schema in a read-only session, since the policy
// grants no write), gets the verdict the corpus records. The e2e test runs the same corpus through the
// real sidecar.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { analyzeSql, loadSqlParser, resolveSqlExecute, type AnalyzedStatement } from './analyze-sql.ts';
import {
  DIFFERENTIAL_CLASSES,
  DIFFERENTIAL_CORPUS,
  OWNER_OBJECT_WRITES,
  type DifferentialAttempt,
} from './differential-corpus.ts';
import { WRITE_CORPUS } from './write-corpus.ts';
import { settingRefusal } from './session-state.ts';

before(async () => {
  await loadSqlParser();
});

const READ_KINDS: ReadonlySet<string> = new Set(['select', 'show', 'explain', 'set', 'transaction', 'prepare']);
const READ_SCHEMAS = /^(public|pg_catalog|information_schema)\./;

function policyAllows(s: AnalyzedStatement): boolean {
  return READ_KINDS.has(s.kind) && !s.sideEffects && s.relations.every((r) => READ_SCHEMAS.test(r));
}

/** A session: the PREPAREs the engine remembers, and how it decides a Query string. */
class ModelSession {
  private readonly prepared = new Map<string, AnalyzedStatement>();

  decide(sql: string): 'deny' | 'allow' | 'unparsable' {
    const analysis = analyzeSql(sql);
    if (!analysis.ok) return 'unparsable';
    const statements = analysis.statements.map((s) => this.resolve(s));
    for (const s of statements) {
      if (settingRefusal(s, { schema: 'public', readOnly: true }) !== undefined) return 'deny';
    }
    if (!statements.every(policyAllows)) return 'deny';
    for (const s of statements) {
      if (s.prepares !== undefined) this.prepared.set(s.prepares, s);
      if (s.deallocates === '*') this.prepared.clear();
      else if (s.deallocates !== undefined) this.prepared.delete(s.deallocates);
    }
    return 'allow';
  }

  private resolve(s: AnalyzedStatement): AnalyzedStatement {
    if (s.executes === undefined) return s;
    return resolveSqlExecute(s, this.prepared.get(s.executes));
  }
}

function checkInOrder(attempts: readonly DifferentialAttempt[]): void {
  const session = new ModelSession();
  for (const attempt of attempts) {
    assert.equal(session.decide(attempt.sql), attempt.expect, `${attempt.class}: ${attempt.why}: ${attempt.sql}`);
  }
}

describe('differential corpus', () => {
  it('has at least 150 attempts, every class represented, no duplicates, none from the write corpus', () => {
    assert.ok(DIFFERENTIAL_CORPUS.length >= 150, `${DIFFERENTIAL_CORPUS.length} attempts`);
    for (const c of DIFFERENTIAL_CLASSES) {
      if (c === 'owner-objects') continue;
      assert.ok(DIFFERENTIAL_CORPUS.filter((a) => a.class === c).length >= 5, c);
    }
    const texts = DIFFERENTIAL_CORPUS.map((a) => a.sql);
    assert.equal(new Set(texts).size, texts.length, 'duplicate attempts');
    const old = new Set(WRITE_CORPUS.map((e) => e.sql));
    assert.deepEqual(
      texts.filter((t) => old.has(t)),
      [],
    );
  });

  it('every attempt parses with the PostgreSQL 15 grammar (refusals are decisions, not syntax errors)', () => {
    for (const a of [...DIFFERENTIAL_CORPUS, ...OWNER_OBJECT_WRITES]) {
      const result = analyzeSql(a.sql);
      assert.ok(result.ok, `${a.sql}: ${result.ok ? '' : result.error.message}`);
    }
  });

  it('gets the recorded verdict from the engine (EXECUTE arguments included, pins of a read-only session)', () => {
    checkInOrder(DIFFERENTIAL_CORPUS);
  });

  it('cannot see writes through owner-defined objects (the database-enforced layer must refuse them)', () => {
    // Documented limits: these read as harmless; the e2e test shows PostgreSQL refusing them when the
    // upstream login is a least-privilege role.
    checkInOrder(OWNER_OBJECT_WRITES);
  });
});
