// How SQL becomes the protocol-neutral command the core decides and records (core/command.ts): the
// analysed statements' facts as the policy input, a fingerprint of those facts for the decision cache, and
// what the audit record shows (text, statement kinds, relations, bound parameters).
import type { SqlStatementFacts } from '@chaperone/api';
import type { CommandDescription } from '../../core/command.ts';
import type { AnalyzedStatement } from './analysis/analyze-sql.ts';
import { factsSource } from './analysis/sql-analyzer.ts';
import type { Bind } from './protocol/frontend-messages.ts';
import type { Denial } from './error-responses.ts';

/** What describeStatements derives from a list of analysed statements; the same for every use of one analysis. */
interface DescribedFacts {
  readonly command: CommandDescription['command'];
  readonly fingerprint: string;
  readonly statementKinds: readonly string[];
  readonly relations: readonly string[];
}

/**
 * Keyed by the analysis's statement array (factsSource: texts that share a cache entry share one), so a
 * prepared statement executed again, a repeated string and the same statement with other literals
 * reuse the policy input and fingerprint instead of deriving them per statement. Frozen: they are shared.
 */
const describedFacts = new WeakMap<readonly AnalyzedStatement[], DescribedFacts>();

function describeFacts(statements: readonly AnalyzedStatement[]): DescribedFacts {
  const source = factsSource(statements);
  let described = describedFacts.get(source);
  if (described === undefined) {
    const facts: SqlStatementFacts[] = statements.map((s) =>
      Object.freeze({ kind: s.kind, relations: s.relations, functions: s.functions, sideEffects: s.sideEffects }),
    );
    described = Object.freeze({
      command: Object.freeze({ type: 'sql' as const, statements: Object.freeze(facts) }),
      fingerprint: factsFingerprint(facts),
      statementKinds: Object.freeze([...new Set(statements.map((s) => s.kind))]),
      relations: Object.freeze([...new Set(statements.flatMap((s) => s.relations))]),
    });
    describedFacts.set(source, described);
  }
  return described;
}

/** The command for a SQL text and its analysis; `parameters` are an Execute's bound values as recorded. */
export function describeStatements(
  text: string,
  statements: readonly AnalyzedStatement[],
  parameters?: readonly string[],
): CommandDescription {
  const facts = describeFacts(statements);
  return parameters === undefined
    ? {
        command: facts.command,
        fingerprint: facts.fingerprint,
        text,
        statementKinds: facts.statementKinds,
        relations: facts.relations,
      }
    : {
        command: facts.command,
        fingerprint: facts.fingerprint,
        text,
        parameters,
        statementKinds: facts.statementKinds,
        relations: facts.relations,
      };
}

const REFUSED_COMMAND: CommandDescription['command'] = Object.freeze({
  type: 'sql' as const,
  statements: Object.freeze([
    Object.freeze({ kind: 'other' as const, relations: [], functions: [], sideEffects: true }),
  ]),
});
const OTHER: readonly string[] = Object.freeze(['other']);

/** The command recorded for text refused before policy (not analysable, a parser-sensitive SET): kind `other`. */
export function describeRefused(text: string): CommandDescription {
  return { command: REFUSED_COMMAND, fingerprint: 'refused', text, statementKinds: OTHER };
}

/** The key of what a decision depends on: statement facts, not literal values. */
export function factsFingerprint(facts: readonly SqlStatementFacts[]): string {
  let key = '';
  for (const f of facts) {
    key += `${f.kind}|${f.relations.join(',')}|${f.functions.join(',')}|${f.sideEffects ? 1 : 0};`;
  }
  return key;
}

/** Bound parameters as recorded: text values as sent (cut to 1 KiB), binary ones as hex, NULL as "NULL". */
export function auditParameters(bind: Bind): string[] {
  return bind.params.slice(0, 64).map((p, i) => {
    if (p === null) return 'NULL';
    const format = bind.paramFormats.length === 1 ? bind.paramFormats[0] : bind.paramFormats[i];
    return format === 1 ? `\\x${p.subarray(0, 512).toString('hex')}` : p.subarray(0, 1024).toString('utf8');
  });
}

/** The first OID of objects made after initdb: a type with it or above was made by CREATE TYPE / DOMAIN. */
const FIRST_NORMAL_OBJECT_ID = 16384;

/**
 * A Parse may type its parameters by OID, which the text never shows: the server converts each bound value
 * with that type's input function and, for a domain, its CHECK, so a type made by a user runs its code as a
 * cast to it in the text would (analysis/README.md, "Functions"). Such a Parse is side-effecting.
 */
export function withParameterTypes(
  analysed: readonly AnalyzedStatement[] | Denial,
  paramTypes: readonly number[],
): readonly AnalyzedStatement[] | Denial {
  if (!Array.isArray(analysed) || !paramTypes.some((oid) => oid >= FIRST_NORMAL_OBJECT_ID)) return analysed;
  return analysed.map((s: AnalyzedStatement) => ({ ...s, sideEffects: true }));
}
