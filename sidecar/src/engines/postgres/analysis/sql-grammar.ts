// The PostgreSQL grammar per server major version. The analysis must parse a statement the way the
// upstream server will: between majors the grammar changes meaning, not only syntax (`json_value(...)` is a
// call of any function of that name to PostgreSQL 15 and the SQL/JSON JSON_VALUE expression to 17+;
// `system_user` is a column reference to 15 and a built-in to 16+). Each supported major has its own
// libpg-query line (npm aliases libpg-query-NN, WebAssembly, no install scripts) and its own pg_catalog
// name lists (pg-catalog.ts). A major without both is not supported: the caller must refuse the session.
import type * as FingerprinterModule from 'libpg-query';
import type * as Grammar15Module from 'libpg-query-15';

// The libpg-query modules are imported by loadSqlGrammars(), not at module load: together with their
// WebAssembly instances they are ~25 MiB of the sidecar's memory, which a sidecar that has not served a
// PostgreSQL session yet does not need (the engine loads them on the first connection; bench/README.md).
type Grammar15 = typeof Grammar15Module;
type Fingerprinter = typeof FingerprinterModule;

let grammar15: Grammar15 | undefined;
let fingerprinter: Fingerprinter | undefined;

function loaded<T>(module: T | undefined): T {
  if (module === undefined) throw new Error('the SQL grammars are used before loadSqlGrammars() resolved');
  return module;
}

/** Server majors the analysis models exactly: grammar and pg_catalog lists of that major. */
export const SUPPORTED_SERVER_MAJORS: readonly number[] = [15];

/** The major the analysis assumes when the caller does not say (the oldest supported one). */
export const DEFAULT_SERVER_MAJOR = 15;

/** One major's parser: `parse` throws the parser's SqlError (message, sqlDetails.cursorPosition) on bad text. */
export interface SqlGrammar {
  readonly major: number;
  parse(sql: string): unknown;
}

const GRAMMARS: ReadonlyMap<number, SqlGrammar> = new Map([
  [15, { major: 15, parse: (sql): unknown => loaded(grammar15).parseSync(sql) as unknown }],
]);

/** Loads every supported grammar's WebAssembly module (and the fingerprinter); once before the first parse. */
export async function loadSqlGrammars(): Promise<void> {
  if (grammar15 !== undefined && fingerprinter !== undefined) return;
  const [g15, fp] = await Promise.all([import('libpg-query-15'), import('libpg-query')]);
  await Promise.all([g15.loadModule(), fp.loadModule()]);
  grammar15 = g15;
  fingerprinter = fp;
}

/** The grammar of `major`, or undefined when that major is not supported. */
export function sqlGrammar(major: number): SqlGrammar | undefined {
  return GRAMMARS.get(major);
}

/**
 * The major version in a `server_version` ParameterStatus value: `15.18 (Debian 15.18-0+deb12u1)` → 15,
 * `16beta1` → 16, `9.6.24` → 9. Undefined when the value does not start with a version number.
 */
export function serverMajorOf(serverVersion: string): number | undefined {
  const match = /^\s*(\d{1,4})(?:[.\s]|[a-z]|$)/i.exec(serverVersion);
  if (match?.[1] === undefined) return undefined;
  return Number(match[1]);
}

/** Why a server version is not supported, in words for a FATAL message; undefined when it is supported. */
export function unsupportedServerReason(serverVersion: string): string | undefined {
  const major = serverMajorOf(serverVersion);
  const supported = SUPPORTED_SERVER_MAJORS.join(', ');
  if (major === undefined) {
    return `the upstream reported server_version ${JSON.stringify(serverVersion)}, which is not a PostgreSQL version; the sidecar parses statements with the grammar of PostgreSQL ${supported} only`;
  }
  if (GRAMMARS.has(major)) return undefined;
  return `the upstream is PostgreSQL ${String(major)}; the sidecar parses statements with the grammar of PostgreSQL ${supported} only, and a statement read with another major's grammar can mean something else to the server`;
}

/**
 * libpg-query's fingerprint (PostgreSQL 18 grammar): a grouping key for audit and statistics, equal for
 * statements that differ only in constants. It never decides anything, so one fingerprinter serves every
 * major; text that grammar does not accept gets undefined (the caller falls back to a content hash).
 */
export function fingerprintStatement(statement: string): string | undefined {
  const module = loaded(fingerprinter);
  try {
    return module.fingerprintSync(statement);
  } catch {
    return undefined;
  }
}
