// The session state the analysis depends on, taken from the server or pinned, never guessed from the
// statements the sidecar forwarded (a SET in a transaction that rolls back, SET LOCAL, a SET in the same
// Query string as the SELECT, a function calling set_config, and mixed-case startup parameters all make a
// forwarded-statement model differ from what the server kept).
//
// - Settings the server reports (ParameterStatus: client_encoding, server_encoding, server_version,
//   standard_conforming_strings, default_transaction_read_only, session_authorization, ...) are taken from
//   its reports, at startup and whenever they change: ServerReportedState.
// - search_path is not reported by PostgreSQL 15 (ParameterStatus carries it only from 18 on), so it is
//   pinned: the sidecar sends the ProtectedResource's schema in the upstream StartupMessage (a startup value
//   is also what RESET and DISCARD ALL return to, and it overrides ALTER ROLE / ALTER DATABASE ... SET) and
//   refuses every statement that sets it (settingRefusal). set_config() is on the side-effect deny-list.
// - Startup parameters are GUC names, case-insensitive to the server and applied in order; the upstream
//   StartupMessage is built from them by upstreamStartupParameters, lower-cased, last value wins, with
//   the pinned values forced.
import { clientEncodingRefusal, serverEncodingRefusal } from './client-encoding.ts';
import type { AnalyzedStatement } from './analyze-sql.ts';
import { serverMajorOf, unsupportedServerReason } from './sql-grammar.ts';

/** What the sidecar enforces on every session of one listener. */
export interface SessionPins {
  /**
   * The one schema unqualified names resolve to (after pg_catalog, which PostgreSQL searches first).
   * A single schema: with several, the analysis cannot tell which one holds a name. Default `public`.
   */
  readonly schema: string;
  /**
   * Start the session with default_transaction_read_only=on and refuse every way of turning it off:
   * for sessions whose effective policies grant no write (the database then refuses a write the analysis
   * missed).
   */
  readonly readOnly: boolean;
  /**
   * A read-only session's ceilings of the timeouts it may not lift, ms (docs/postgres-engine.md,
   * "Timeouts a read-only session cannot lift"); a name without one keeps the database's own value.
   */
  readonly timeoutBounds?: TimeoutBounds;
}

/**
 * The timeouts that end what an agent's read holds (locks, a snapshot, a backend): in a read-only session
 * they are the database's (role, database, server) and the sidecar's bound, the smaller one, and no
 * statement changes them. idle_session_timeout has no bound of the sidecar's (an idle session outside a
 * transaction holds no lock), but a DBA's value of it is not lifted either.
 */
export const BOUNDED_TIMEOUTS = [
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'idle_session_timeout',
] as const;
export type BoundedTimeout = (typeof BOUNDED_TIMEOUTS)[number];
export type TimeoutBounds = Readonly<Partial<Record<BoundedTimeout, number>>>;
const BOUNDED_TIMEOUT_NAMES: ReadonlySet<string> = new Set(BOUNDED_TIMEOUTS);

export const DEFAULT_PINNED_SCHEMA = 'public';

/** The search_path the analysis resolves names with: the pinned schema (pg_catalog is implicit and first). */
export function pinnedSearchPath(pins: SessionPins): readonly string[] {
  return [pins.schema];
}

/** Startup parameters the client may choose; passed to the upstream with lower-case names. */
const PASSED_SETTINGS: ReadonlySet<string> = new Set([
  'application_name',
  'datestyle',
  'timezone',
  'intervalstyle',
  'extra_float_digits',
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'default_transaction_isolation',
]);

/**
 * Startup parameters the sidecar sets itself; a client asking for another value is refused (rather than
 * silently given something else). Protocol fields (user, database) and ones the sidecar ignores on
 * purpose are not settings.
 */
const PINNED_SETTINGS: ReadonlySet<string> = new Set([
  'client_encoding',
  'search_path',
  'standard_conforming_strings',
  'default_transaction_read_only',
]);

/** Startup parameters that are refused outright: they change privileges, replication or the lexer. */
const REFUSED_SETTINGS: ReadonlyMap<string, string> = new Map([
  ['replication', 'replication connections are not allowed through the chaperone sidecar'],
  ['role', 'the role cannot be chosen at startup through the chaperone sidecar'],
  ['session_authorization', 'the session user cannot be chosen at startup through the chaperone sidecar'],
  ['backslash_quote', 'backslash_quote changes how statements are read and cannot be set through the sidecar'],
  ['transaction_read_only', 'transaction_read_only cannot be set at startup through the chaperone sidecar'],
  ['session_replication_role', 'session_replication_role cannot be set through the chaperone sidecar'],
]);

/** Parameters of the StartupMessage that are not settings: the sidecar uses its own user and database. */
const PROTOCOL_FIELDS: ReadonlySet<string> = new Set(['user', 'database']);

export type StartupParameters =
  | {
      readonly ok: true;
      readonly parameters: readonly (readonly [string, string])[];
      /**
       * A read-only session's timeouts the client asked for, ms: not sent at login (a startup value would
       * override a stricter one of the role), applied after it when smaller (sessionTimeoutsSql).
       */
      readonly timeouts?: TimeoutBounds;
    }
  /**
   * `privilege`: the parameter would change privileges or switch off the read-only guard (refuse with
   * 42501); otherwise the sidecar cannot honour it and still read statements as the server does (0A000).
   */
  | { readonly ok: false; readonly reason: string; readonly privilege: boolean };

/** Refused startup settings that are about privileges rather than how statements are read. */
const PRIVILEGE_SETTINGS: ReadonlySet<string> = new Set([
  'replication',
  'role',
  'session_authorization',
  'transaction_read_only',
  'session_replication_role',
  'default_transaction_read_only',
]);

/** Splits a libpq `options` value the way the server does (pg_split_opts): whitespace, backslash escapes. */
function splitOptions(options: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < options.length) {
    while (i < options.length && /\s/.test(options.charAt(i))) i++;
    if (i >= options.length) break;
    let word = '';
    while (i < options.length && !/\s/.test(options.charAt(i))) {
      if (options[i] === '\\' && i + 1 < options.length) i++;
      word += options.charAt(i);
      i++;
    }
    words.push(word);
  }
  return words;
}

/**
 * The settings in an `options` startup parameter: only `-c name=value`, `-cname=value` and
 * `--name=value` (dashes in the name read as underscores, as the server does). Any other switch (`-O`,
 * `-d`, `-e`, ...) changes settings the sidecar cannot model and is refused.
 */
function optionSettings(options: string): readonly (readonly [string, string])[] | string {
  const settings: [string, string][] = [];
  const words = splitOptions(options);
  for (let i = 0; i < words.length; i++) {
    const word = words[i] as string;
    let assignment: string | undefined;
    if (word === '-c') assignment = words[++i];
    else if (word.startsWith('--')) assignment = word.slice(2);
    else if (word.startsWith('-c')) assignment = word.slice(2);
    else
      return `the startup option ${JSON.stringify(word)} is not supported through the chaperone sidecar (only -c name=value)`;
    const at = assignment?.indexOf('=') ?? -1;
    if (assignment === undefined || at <= 0) {
      return `the startup option ${JSON.stringify(word)} needs name=value`;
    }
    settings.push([assignment.slice(0, at).replaceAll('-', '_'), assignment.slice(at + 1)]);
  }
  return settings;
}

/** Quotes a schema name for a search_path value. */
function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Splits a search_path value into schema names the way the server does (commas, quoted names kept). */
export function parseSearchPath(value: string): readonly string[] | undefined {
  const names: string[] = [];
  let i = 0;
  const skipSpace = () => {
    while (i < value.length && /\s/.test(value.charAt(i))) i++;
  };
  skipSpace();
  if (i >= value.length) return names;
  for (;;) {
    skipSpace();
    let name = '';
    if (value[i] === '"') {
      i++;
      for (;;) {
        if (i >= value.length) return undefined;
        if (value[i] === '"') {
          if (value[i + 1] !== '"') break;
          i++;
        }
        name += value.charAt(i);
        i++;
      }
      i++;
    } else {
      const start = i;
      while (i < value.length && value[i] !== ',' && !/\s/.test(value.charAt(i))) i++;
      name = value.slice(start, i).toLowerCase();
      if (name === '') return undefined;
    }
    names.push(name);
    skipSpace();
    if (i >= value.length) return names;
    if (value[i] !== ',') return undefined;
    i++;
  }
}

/**
 * The parameters of the upstream StartupMessage for a client's StartupMessage parameters (in the order
 * sent, names in any case, possibly repeated), or why the session is refused. Names are lower-cased and
 * the last value of a name wins, as in the server; `options` is expanded; the pinned settings are always
 * sent (client_encoding=UTF8, standard_conforming_strings=on, search_path=the pinned schema,
 * default_transaction_read_only=on for read-only sessions); a client asking for another value of one of
 * them, or for a refused setting, is refused; other unknown parameters are dropped.
 */
export function upstreamStartupParameters(
  client: Iterable<readonly [string, string]>,
  pins: SessionPins,
): StartupParameters {
  const settings = new Map<string, string>();
  for (const [rawName, value] of client) {
    const name = rawName.toLowerCase();
    if (PROTOCOL_FIELDS.has(name)) continue;
    if (name === 'options') {
      const parsed = optionSettings(value);
      if (typeof parsed === 'string') return { ok: false, reason: parsed, privilege: false };
      for (const [n, v] of parsed) settings.set(n.toLowerCase(), v);
      continue;
    }
    settings.set(name, value);
  }
  const pinned = new Map<string, string>([
    ['client_encoding', 'UTF8'],
    ['standard_conforming_strings', 'on'],
    ['search_path', quoteIdentifier(pins.schema)],
  ]);
  if (pins.readOnly) pinned.set('default_transaction_read_only', 'on');
  const parameters: [string, string][] = [];
  const timeouts: Partial<Record<BoundedTimeout, number>> = {};
  for (const [name, value] of settings) {
    const refused = REFUSED_SETTINGS.get(name);
    if (refused !== undefined) return { ok: false, reason: refused, privilege: PRIVILEGE_SETTINGS.has(name) };
    if (pins.readOnly && BOUNDED_TIMEOUT_NAMES.has(name)) {
      const timeout = name as BoundedTimeout;
      const ms = timeoutMs(value);
      const bound = pins.timeoutBounds?.[timeout];
      if (ms === undefined || ms <= 0 || (bound !== undefined && ms > bound)) {
        const most = bound === undefined ? '' : ` of at most ${String(bound)} ms`;
        const reason = `this session is read-only; ${timeout} can only be made stricter (a positive value${most}), not ${JSON.stringify(value)}`;
        return { ok: false, reason, privilege: true };
      }
      timeouts[timeout] = ms;
      continue;
    }
    if (PINNED_SETTINGS.has(name)) {
      const reason = pinnedValueRefusal(name, value, pins);
      if (reason !== undefined) return { ok: false, reason, privilege: PRIVILEGE_SETTINGS.has(name) };
      continue;
    }
    if (PASSED_SETTINGS.has(name)) parameters.push([name, value]);
  }
  for (const [name, value] of pinned) parameters.push([name, value]);
  return Object.keys(timeouts).length === 0 ? { ok: true, parameters } : { ok: true, parameters, timeouts };
}

const TIME_UNITS_MS: Readonly<Record<string, number>> = {
  us: 0.001,
  ms: 1,
  s: 1000,
  min: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * A time setting's value in ms as PostgreSQL reads it for a setting in ms (a number, optionally a unit
 * us, ms, s, min, h, d; fractions rounded); undefined when it is not one (the server would refuse it too).
 */
export function timeoutMs(value: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|min|h|d)?\s*$/.exec(value);
  if (match === null) return undefined;
  const ms = Math.round(Number(match[1]) * (TIME_UNITS_MS[match[2] ?? 'ms'] ?? 1));
  return Number.isSafeInteger(ms) && ms <= 2_147_483_647 ? ms : undefined;
}

/**
 * The statement the sidecar runs on a read-only session's upstream before the client is greeted (and on
 * every reuse of a parked one, since DISCARD ALL resets it): each bounded timeout becomes the smallest of
 * the database's own value (role, database, server configuration; 0 is none), the sidecar's bound and
 * the client's startup value. A SET at session level, so the statements that could return it to the
 * login's value (RESET, SET ... TO DEFAULT, RESET ALL, DISCARD ALL) are refused with the SETs
 * (settingRefusal). Undefined when the session has nothing to bound.
 */
export function sessionTimeoutsSql(pins: SessionPins, client: TimeoutBounds = {}): string | undefined {
  if (!pins.readOnly) return undefined;
  const rows: string[] = [];
  for (const name of BOUNDED_TIMEOUTS) {
    const ceilings = [pins.timeoutBounds?.[name], client[name]].filter((ms) => ms !== undefined);
    if (ceilings.length === 0) continue;
    rows.push(`('${name}', ${String(Math.min(...ceilings))}::pg_catalog.int8)`);
  }
  if (rows.length === 0) return undefined;
  // pg_settings.setting of these is in ms; LEAST ignores the NULL of a database value of 0 (none).
  return [
    'SELECT pg_catalog.count(pg_catalog.set_config(b.name, LEAST(b.ms,',
    ' CASE WHEN s.setting::pg_catalog.int8 > 0 THEN s.setting::pg_catalog.int8 END)::pg_catalog.text, false))',
    ` FROM (VALUES ${rows.join(', ')}) AS b(name, ms) JOIN pg_catalog.pg_settings AS s ON s.name = b.name`,
  ].join('');
}

const ON_WORDS: ReadonlySet<string> = new Set(['on', 'true', 'yes', '1']);
const OFF_WORDS: ReadonlySet<string> = new Set(['off', 'false', 'no', '0']);

/** Why a client's startup value of a pinned setting cannot be honoured; undefined when it equals the pin. */
function pinnedValueRefusal(name: string, value: string, pins: SessionPins): string | undefined {
  switch (name) {
    case 'client_encoding':
      return clientEncodingRefusal(value);
    case 'standard_conforming_strings':
      return ON_WORDS.has(value.trim().toLowerCase())
        ? undefined
        : 'standard_conforming_strings must stay on through the chaperone sidecar (it changes how strings are read)';
    case 'search_path': {
      const path = parseSearchPath(value);
      if (path !== undefined && path.length === 1 && path[0] === pins.schema) return undefined;
      return `search_path is pinned to ${quoteIdentifier(pins.schema)} by the chaperone sidecar; ${JSON.stringify(value)} cannot be used`;
    }
    case 'default_transaction_read_only':
      if (!pins.readOnly && OFF_WORDS.has(value.trim().toLowerCase())) return undefined;
      if (pins.readOnly && ON_WORDS.has(value.trim().toLowerCase())) return undefined;
      return pins.readOnly
        ? 'this session is read-only (its policies grant no write); default_transaction_read_only cannot be turned off'
        : 'default_transaction_read_only cannot be set at startup through the chaperone sidecar';
    default:
      return undefined;
  }
}

/**
 * The settings the server reports (ParameterStatus), checked as they arrive: during startup and after any
 * statement that changed one. A refusal means the session no longer reads statements as the server does
 * (or lost its read-only guard) and must end with a FATAL.
 */
export class ServerReportedState {
  private readonly pins: SessionPins;
  private readonly values = new Map<string, string>();

  constructor(pins: SessionPins) {
    this.pins = pins;
  }

  /** Records a ParameterStatus; returns why the session must end, or undefined. */
  note(name: string, value: string): string | undefined {
    this.values.set(name.toLowerCase(), value);
    switch (name.toLowerCase()) {
      case 'client_encoding':
        return clientEncodingRefusal(value);
      case 'server_encoding':
        return serverEncodingRefusal(value);
      case 'server_version':
        return unsupportedServerReason(value);
      case 'standard_conforming_strings':
        return value === 'on'
          ? undefined
          : 'the server turned standard_conforming_strings off; the sidecar would read strings differently from the server';
      case 'default_transaction_read_only':
        return this.pins.readOnly && value !== 'on'
          ? 'the server reports default_transaction_read_only off in a read-only session'
          : undefined;
      default:
        return undefined;
    }
  }

  /**
   * Why the startup reports are not enough to run the session (a setting the sidecar needs was not
   * reported); call once at ReadyForQuery after authentication.
   */
  startupRefusal(): string | undefined {
    for (const name of ['server_version', 'server_encoding', 'client_encoding', 'standard_conforming_strings']) {
      if (!this.values.has(name)) return `the server did not report ${name}; the sidecar cannot model the session`;
    }
    if (this.pins.readOnly && this.values.get('default_transaction_read_only') !== 'on') {
      return 'the server did not confirm default_transaction_read_only=on for a read-only session';
    }
    return undefined;
  }

  /** The server's major version (from server_version), for the analyzer; undefined before it was reported. */
  get serverMajor(): number | undefined {
    const version = this.values.get('server_version');
    return version === undefined ? undefined : serverMajorOf(version);
  }

  /** The last reported value of a setting (names case-insensitive). */
  get(name: string): string | undefined {
    return this.values.get(name.toLowerCase());
  }
}

/** Settings that keep the analysis and the server reading statements alike: pinned, never changed. */
const LEXER_SETTINGS: ReadonlySet<string> = new Set([
  'client_encoding',
  'standard_conforming_strings',
  'backslash_quote',
  'search_path',
]);

/** Settings that keep the database's own read-only guard up in a read-only session. */
const READ_ONLY_GUARDS: ReadonlySet<string> = new Set([
  'default_transaction_read_only',
  'transaction_read_only',
  'session_replication_role',
]);

/** Settings whose change through set_config() changes privileges: SET ROLE by another name. */
const PRIVILEGE_CHANGES: ReadonlySet<string> = new Set(['role', 'session_authorization']);

/**
 * Why a `set_config(name, ...)` call may not run: set_config is SET by another name, so it may not change a
 * pinned setting, a read-only session's guard, or (since the policy sees a SELECT, not a SET ROLE) the
 * role; a name that is not a literal cannot be checked and is refused.
 */
function setConfigRefusal(name: string, pins: SessionPins): string | undefined {
  if (name === '*') {
    return 'set_config() with a setting name that is not a literal cannot be checked and is not allowed';
  }
  if (name === 'search_path') {
    return `search_path is pinned to ${quoteIdentifier(pins.schema)} by the chaperone sidecar and cannot be changed`;
  }
  if (LEXER_SETTINGS.has(name)) return `changing ${name} is not allowed (it changes how statements are read)`;
  if (PRIVILEGE_CHANGES.has(name)) return `set_config() of ${name} is not allowed (it changes privileges)`;
  if (pins.readOnly && READ_ONLY_GUARDS.has(name)) return `this session is read-only; ${name} cannot be changed`;
  if (pins.readOnly && BOUNDED_TIMEOUT_NAMES.has(name)) return boundedTimeoutRefusal(name);
  return undefined;
}

function boundedTimeoutRefusal(name: string): string {
  return `this session is read-only; ${name} is set by the database and the chaperone sidecar and cannot be changed`;
}

/**
 * Why a statement may not run in a session with these pins, whatever the policy says; undefined when it
 * may. SET (any form, LOCAL too) of a pinned setting is refused; RESET and SET ... TO DEFAULT return to
 * the startup value, which is the pin, and are allowed. In a read-only session, anything that could turn
 * the read-only guard off is refused: SET of the guard settings to another value, BEGIN / START
 * TRANSACTION / SET TRANSACTION / SET SESSION CHARACTERISTICS with READ WRITE as their last mode; and
 * any SET, SET LOCAL, RESET or DEFAULT of a bounded timeout, RESET ALL, and DECLARE ... WITH HOLD (its
 * query runs at COMMIT, outside statement_timeout). set_config() calls of the same settings are refused the same way (setConfigRefusal).
 */
export function settingRefusal(statement: AnalyzedStatement, pins: SessionPins): string | undefined {
  for (const name of statement.configures ?? []) {
    const refusal = setConfigRefusal(name, pins);
    if (refusal !== undefined) return refusal;
  }
  const setting = statement.setting;
  if (setting !== undefined) {
    const changes = setting.action === 'set' || setting.action === 'current';
    if (LEXER_SETTINGS.has(setting.name) && changes) {
      return setting.name === 'search_path'
        ? `search_path is pinned to ${quoteIdentifier(pins.schema)} by the chaperone sidecar and cannot be changed`
        : `changing ${setting.name} is not allowed (it changes how statements are read)`;
    }
    if (pins.readOnly && READ_ONLY_GUARDS.has(setting.name)) {
      const value = (setting.values[0] ?? '').toLowerCase();
      // RESET returns default_transaction_read_only to its startup value, the pinned `on`.
      const keepsGuard =
        setting.action === 'set'
          ? setting.name === 'session_replication_role'
            ? value === 'origin'
            : ON_WORDS.has(value)
          : setting.name === 'default_transaction_read_only' && setting.action !== 'current';
      if (!keepsGuard) return `this session is read-only; ${setting.name} cannot be changed`;
    }
    // SET, SET LOCAL, RESET and DEFAULT alike: RESET and DEFAULT return to the login's value, not the bound.
    if (pins.readOnly && BOUNDED_TIMEOUT_NAMES.has(setting.name)) return boundedTimeoutRefusal(setting.name);
    if (pins.readOnly && setting.action === 'reset-all') {
      return 'this session is read-only; RESET ALL would lift the timeouts set by the database and the chaperone sidecar';
    }
    const transactionModes = setting.name === 'transaction' || setting.name === 'session characteristics';
    if (pins.readOnly && transactionModes && statement.sideEffects) {
      return 'this session is read-only; READ WRITE transactions are not allowed';
    }
  }
  if (pins.readOnly && statement.holdsCursor === true) {
    // The held cursor's query runs at COMMIT, after PostgreSQL has switched statement_timeout off: unbounded.
    return 'this session is read-only; a WITH HOLD cursor runs its query at COMMIT, where statement_timeout does not apply';
  }
  if (pins.readOnly && statement.transaction === 'begin' && statement.sideEffects) {
    return 'this session is read-only; READ WRITE transactions are not allowed';
  }
  return undefined;
}
