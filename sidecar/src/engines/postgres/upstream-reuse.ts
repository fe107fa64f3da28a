// Upstream session reuse, PgBouncer's session pooling inside the sidecar (docs/postgres-engine.md,
// "Upstream session reuse"). An agent connection that ends with Terminate while its upstream session is
// idle hands the session back: it is reset (DISCARD ALL, then a check that nothing of the session is left
// and that every reported setting is back at its login value) and parked under its login key, which is
// everything that shaped the login (server, TLS settings and CA, database, login kind, user and password
// digest, the exact startup parameters after the pins). The next agent connection with the same key takes
// it instead of logging in. Anything unexpected closes the session instead. A session belongs to at most
// one agent connection at a time: it leaves the pool when taken and enters it only after its reset.
import { createHash } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { PostgresListenerConfig } from '../../config.ts';
import type { SidecarMetrics } from '../../core/observability/metrics.ts';
import type { Logger } from '../../core/observability/logger.ts';
import type { AnalyzedStatement } from './analysis/analyze-sql.ts';
import { TERMINATE_FRAME } from './protocol/frontend-encoder.ts';
import {
  runSimpleQueries,
  UpstreamError,
  type UpstreamConnection,
  type UpstreamTlsOptions,
} from './protocol/upstream-connection.ts';
import { isOutOfConnectionSlots } from './error-responses.ts';
import { UpstreamPool, type DiscardReason, type Parkable } from './upstream-pool.ts';

export type UpstreamReuseConfig = PostgresListenerConfig['upstreamReuse'];

/**
 * The settings defined by loaded libraries (extension GUCs such as auto_explain.* or pg_trgm.*; placeholders
 * made by SET are not listed in pg_settings), plpgsql's aside: taken at login and after every reset, a
 * library a session loaded (LOAD, or the first call of an extension's function) changes it, and such a
 * session is not reused, since DISCARD ALL cannot unload a library or reset its hooks and internal state.
 */
const LOADED_SETTINGS_SQL =
  "(SELECT COALESCE(pg_catalog.string_agg(name, ',' ORDER BY name), '') FROM pg_catalog.pg_settings WHERE name LIKE '%.%' AND name NOT LIKE 'plpgsql.%')";
export const SETTINGS_FINGERPRINT_SQL = `SELECT ${LOADED_SETTINGS_SQL}`;

/**
 * Run after DISCARD ALL; must answer `0/` and the login's settings fingerprint. Counts what DISCARD ALL
 * should have ended (cursors, prepared statements, LISTEN channels, session advisory locks, temporary
 * relations, a different current user) and what it cannot end: connections held by dblink or
 * postgres_fdw, which exist only when one of them is installed. Names are qualified: the check must not
 * run a function or read a relation the session made.
 */
const RESET_CHECK_SQL_PARTS = [
  'SELECT ((SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors)',
  ' + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements)',
  ' + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels())',
  " + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory'",
  ' AND pid = pg_catalog.pg_backend_pid())',
  ' + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())',
  " + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_extension WHERE extname IN ('dblink', 'postgres_fdw'))",
  ' + (CASE WHEN current_user = session_user THEN 0 ELSE 1 END)',
];
const RESET_CHECK_SQL_END = `)::text || '/' || ${LOADED_SETTINGS_SQL}`;

/**
 * The reset check, also counting the custom settings in `placeholders` that still exist after DISCARD ALL:
 * `SET x.y` and `set_config('x.y', ...)` make a placeholder that RESET ALL empties but never removes, and
 * PostgreSQL lists placeholders nowhere (not in pg_settings, not in SHOW ALL), so only the names the
 * connection's statements used can be asked for. A name a loaded library defines is a real setting (in
 * pg_settings, reset by RESET ALL) and is not counted; one that existed at login (ALTER ROLE ... SET x.y)
 * is, which closes such a session rather than reusing it.
 */
export function resetCheckSql(placeholders: readonly string[]): string {
  if (placeholders.length === 0) return RESET_CHECK_SQL_PARTS.join('') + RESET_CHECK_SQL_END;
  const names = placeholders.map((n) => `'${n.replaceAll("'", "''")}'`).join(', ');
  return [
    ...RESET_CHECK_SQL_PARTS,
    ` + (SELECT pg_catalog.count(*) FROM pg_catalog.unnest(ARRAY[${names}]::pg_catalog.text[]) AS p(name)`,
    ' WHERE pg_catalog.current_setting(p.name, true) IS NOT NULL',
    ' AND NOT EXISTS (SELECT FROM pg_catalog.pg_settings AS s WHERE s.name = pg_catalog.lower(p.name)))',
    RESET_CHECK_SQL_END,
  ].join('');
}

/** More custom setting names than this in one agent connection: the session is closed, not checked name by name. */
const MAX_CHECKED_PLACEHOLDERS = 64;

/** What an agent connection's statements leave that the reset must look for, or why no reset can be trusted. */
export interface StatementResidue {
  /** Lower-case custom (dotted) setting names set, reset or defaulted by the statements. */
  readonly placeholders: readonly string[];
  /** Why the session must be closed whatever its reset shows; undefined when nothing of the kind ran. */
  readonly unresettable: string | undefined;
}

/**
 * What `statements` (as the analysis saw them, whether or not they were then allowed) may leave in the
 * session beyond what DISCARD ALL and its check can see: custom setting names (placeholders), a LOAD (a
 * library without settings leaves no trace a query can find, and none can be unloaded), a DO block (code
 * the analysis does not look into, which may LOAD or set_config a computed name), a set_config whose
 * name is not a literal.
 */
export function statementResidue(statements: readonly AnalyzedStatement[]): StatementResidue {
  const placeholders: string[] = [];
  let unresettable: string | undefined;
  for (const s of statements) {
    if (!mayLeaveResidue(s)) continue;
    if (s.kind === 'do') unresettable ??= 'a DO block ran (code the analysis does not look into)';
    // Every utility statement that mentions the word: LOAD itself, however it is commented or spaced.
    else if (s.kind === 'utility' && /\bload\b/i.test(s.text))
      unresettable ??= 'LOAD ran (a library cannot be unloaded)';
    const named = [...(s.configures ?? []), ...(s.setting === undefined ? [] : [s.setting.name])];
    for (const name of named) {
      if (name === '*') unresettable ??= 'set_config with a name that is not a literal';
      else if (name.includes('.')) placeholders.push(name);
    }
  }
  return { placeholders, unresettable };
}

/** Whether statementResidue has anything to look at in `s` (most statements: no; checked per statement). */
function mayLeaveResidue(s: AnalyzedStatement): boolean {
  return s.kind === 'do' || s.kind === 'utility' || s.setting !== undefined || s.configures !== undefined;
}

/** What shaped an upstream login; equal keys mean interchangeable sessions. */
export interface LoginKeyParts {
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly login: string;
  readonly user: string;
  readonly password: string;
  readonly tls: UpstreamTlsOptions;
  readonly parameters: readonly (readonly [string, string])[];
}

/** A digest of the login (the password and CA enter only as part of the digest). */
export function loginKey(parts: LoginKeyParts): string {
  const ca = parts.tls.ca === undefined ? '' : createHash('sha256').update(parts.tls.ca).digest('hex');
  return createHash('sha256')
    .update(
      JSON.stringify([
        parts.host,
        parts.port,
        parts.database,
        parts.login,
        parts.user,
        parts.password,
        parts.tls.mode,
        parts.tls.servername ?? '',
        ca,
        parts.parameters,
      ]),
    )
    .digest('hex');
}

/** One logged-in upstream session, through all the agent connections it serves. */
class UpstreamSession implements Parkable {
  readonly connection: UpstreamConnection;
  readonly key: string;
  readonly loggedInAt: number;
  /** What the server reported up to its first ReadyForQuery: a reset must return to exactly this. */
  readonly loginParameters: ReadonlyMap<string, string>;
  /** SETTINGS_FINGERPRINT_SQL's answer right after the login. */
  readonly loginSettings: string;
  /** Agent connections served so far. */
  uses = 0;
  private readonly onDiscard: (reason: DiscardReason) => void;
  private parkedListeners: (() => void) | undefined;

  constructor(
    connection: UpstreamConnection,
    key: string,
    now: number,
    loginSettings: string,
    onDiscard: (reason: DiscardReason) => void,
  ) {
    this.connection = connection;
    this.loginSettings = loginSettings;
    this.key = key;
    this.loggedInAt = now;
    this.loginParameters = new Map(connection.parameters);
    this.onDiscard = onDiscard;
  }

  get socket(): Duplex {
    return this.connection.socket;
  }

  /** While parked: any byte from the server (a FATAL before it closes) or its end takes it out of the pool. */
  watch(onGone: () => void): void {
    const socket = this.socket;
    const gone = (): void => {
      onGone();
    };
    socket.on('data', gone);
    socket.on('end', gone);
    socket.on('close', gone);
    socket.on('error', gone);
    (socket as Partial<{ unref(): void }>).unref?.(); // a parked session never keeps the process alive
    socket.resume();
    this.parkedListeners = () => {
      socket.off('data', gone);
      socket.off('end', gone);
      socket.off('close', gone);
      socket.off('error', gone);
      socket.pause();
      (socket as Partial<{ ref(): void }>).ref?.();
    };
  }

  unwatch(): void {
    this.parkedListeners?.();
    this.parkedListeners = undefined;
  }

  /** Whether the socket can still carry a session. */
  get alive(): boolean {
    const s = this.socket;
    return !s.destroyed && s.readable && s.writable;
  }

  discard(reason: DiscardReason): void {
    this.unwatch();
    this.onDiscard(reason);
    const socket = this.socket;
    socket.removeAllListeners('data');
    socket.on('error', () => undefined);
    if (!socket.destroyed) socket.end(TERMINATE_FRAME);
    setTimeout(() => socket.destroy(), 1000).unref();
  }
}

/** Client messages after whose answer (ReadyForQuery) the upstream is between exchanges. */
const SYNC_POINTS: ReadonlySet<string> = new Set(['Query', 'Sync', 'FunctionCall']);

/** What the connection's response tracker knows of the upstream (response-tracker.ts). */
export interface UpstreamProgress {
  readonly pending: number;
  readonly transactionStatus: string;
  readonly discardingUntilSync: boolean;
}

/**
 * An upstream session serving one agent connection: the connection wires its socket through attach(),
 * tells it each client message and each forwarded cancel, and asks handBack() at the client's Terminate.
 */
export class LeasedUpstream {
  /** The connection as the agent connection sees it: `parameters` are the server's current values. */
  readonly connection: UpstreamConnection;
  /** Whether the session served an agent connection before this one. */
  readonly reused: boolean;
  /** @internal */
  readonly session: UpstreamSession;
  private readonly current: Map<string, string>;
  /** Whether the client's last message ended an exchange (Query, Sync, FunctionCall), or none was sent yet. */
  private atSyncPoint = true;
  /** A CancelRequest went upstream with this session's key: it may still arrive, so no reuse. */
  private cancelSent = false;
  /** handBack() said yes: the agent connection ended cleanly on an idle session. */
  clean = false;
  /** Custom setting names the connection's statements used: the reset check asks whether they still exist. */
  readonly placeholders = new Set<string>();
  /** Why the session must not be reused whatever its reset shows (statementResidue). */
  unresettable: string | undefined;
  private detach: (() => void) | undefined;

  constructor(session: UpstreamSession, reused: boolean) {
    this.session = session;
    this.reused = reused;
    this.current = new Map(session.loginParameters);
    this.connection = { ...session.connection, parameters: this.current, transactionStatus: 'I' };
  }

  /**
   * Relays between the upstream socket and `client`: upstream bytes to `onData`, backpressure both ways,
   * the socket failing or closing to `onLost`. Undone when the session is released.
   */
  attach(client: Duplex, onData: (chunk: Buffer) => void, onLost: (closed: boolean) => void): void {
    const socket = this.connection.socket;
    const onError = (): void => onLost(false);
    const onClose = (): void => onLost(true);
    const onUpstreamDrain = (): void => void client.resume();
    const onClientDrain = (): void => void socket.resume();
    socket.on('data', onData).on('error', onError).on('close', onClose).on('drain', onUpstreamDrain);
    client.on('drain', onClientDrain);
    this.detach = () => {
      socket.off('data', onData).off('error', onError).off('close', onClose).off('drain', onUpstreamDrain);
      client.off('drain', onClientDrain);
    };
  }

  /** The client sent a message of this type (Terminate leaves the state as the message before it made it). */
  noteClientMessage(type: string): void {
    if (type !== 'Terminate') this.atSyncPoint = SYNC_POINTS.has(type);
  }

  /** The analysis of statements the agent sent (allowed or not): what they may leave that a reset cannot see. */
  noteStatements(statements: readonly AnalyzedStatement[]): void {
    if (!statements.some(mayLeaveResidue)) return; // no allocation on the hot path
    const residue = statementResidue(statements);
    this.unresettable ??= residue.unresettable;
    for (const name of residue.placeholders) this.placeholders.add(name);
    if (this.placeholders.size > MAX_CHECKED_PLACEHOLDERS) {
      this.unresettable ??= `more than ${String(MAX_CHECKED_PLACEHOLDERS)} custom settings used`;
    }
  }

  /** A CancelRequest is being sent upstream with this session's key. */
  noteCancel(): void {
    this.cancelSent = true;
  }

  /**
   * At the client's Terminate: whether the session may be handed back for reuse instead of being ended
   * (then the Terminate is not forwarded). Yes only when the upstream is between exchanges with nothing of
   * this connection in flight: the client's last message ended an exchange, every response arrived, the
   * last ReadyForQuery said idle (no transaction, open or failed), no extended-protocol error waits for
   * Sync, no command is held, no cancel was sent, and no partial upstream frame is being read.
   */
  handBack(progress: UpstreamProgress, holding: boolean, atFrameBoundary: boolean): boolean {
    this.clean =
      this.atSyncPoint &&
      progress.pending === 0 &&
      progress.transactionStatus === 'I' &&
      !progress.discardingUntilSync &&
      !holding &&
      !this.cancelSent &&
      atFrameBoundary;
    return this.clean;
  }

  /** @internal the connection is done: its listeners leave the socket. */
  release(): void {
    this.detach?.();
    this.detach = undefined;
  }

  /** The server reported a setting (ParameterStatus) during the session. */
  noteParameter(name: string, value: string): void {
    this.current.set(name, value);
  }

  /** The server backend's process id (for correlating with server logs), when it sent one. */
  get backendPid(): number | undefined {
    return this.connection.backendKey?.processId;
  }
}

export interface UpstreamReuseOptions {
  readonly config: UpstreamReuseConfig;
  readonly listener: string;
  readonly metrics: Pick<SidecarMetrics, 'upstreamParked' | 'upstreamLogins' | 'upstreamReuses' | 'upstreamDiscards'>;
  readonly logger: Logger;
  readonly now?: () => number;
}

/** The parked upstream sessions of one resource, and the login and release of the sessions it serves. */
export class UpstreamReuse {
  private readonly config: UpstreamReuseConfig;
  private readonly pool: UpstreamPool<UpstreamSession>;
  private readonly metrics: UpstreamReuseOptions['metrics'];
  private readonly listener: string;
  private readonly logger: Logger;
  private readonly now: () => number;
  private sweeper: NodeJS.Timeout | undefined;
  /** Set by close(): the sockets of sessions closed since, until they are closed. */
  private closing: Promise<void>[] | undefined;

  constructor(options: UpstreamReuseOptions) {
    this.config = options.config;
    this.metrics = options.metrics;
    this.listener = options.listener;
    this.logger = options.logger;
    this.now = options.now ?? Date.now;
    this.pool = new UpstreamPool<UpstreamSession>({
      bounds: options.config,
      now: this.now,
      onSizeChange: (size) => {
        this.metrics.upstreamParked.set({ listener: this.listener }, size);
        this.scheduleSweep(size);
      },
    });
  }

  /** Parked sessions now. */
  get parked(): number {
    return this.pool.size;
  }

  /**
   * A session for `key`: a parked one when there is one still alive, else a new login by `connect`
   * (whose errors propagate).
   */
  async lease(key: string, connect: () => Promise<UpstreamConnection>): Promise<LeasedUpstream> {
    if (this.config.enabled) {
      for (let session = this.pool.take(key); session !== undefined; session = this.pool.take(key)) {
        session.unwatch();
        if (!session.alive) {
          session.discard('closed');
          continue;
        }
        session.uses += 1;
        this.metrics.upstreamReuses.inc({ listener: this.listener });
        return new LeasedUpstream(session, true);
      }
    }
    const connection = await this.login(connect);
    this.metrics.upstreamLogins.inc({ listener: this.listener });
    let loginSettings = '';
    if (this.config.enabled) {
      // One round trip per new login, so that a reset can tell a library loaded since.
      try {
        const answer = await runSimpleQueries(
          connection.socket,
          [SETTINGS_FINGERPRINT_SQL],
          this.config.resetTimeoutMs,
        );
        const [result] = answer.results;
        if (result?.error !== undefined || typeof result?.firstValue !== 'string' || answer.transactionStatus !== 'I') {
          throw new UpstreamError('protocol', 'the server did not list its settings');
        }
        loginSettings = result.firstValue;
      } catch (err) {
        connection.socket.destroy();
        throw err;
      }
    }
    const session = new UpstreamSession(connection, key, this.now(), loginSettings, (reason) => {
      this.metrics.upstreamDiscards.inc({ listener: this.listener, reason });
      if (this.closing !== undefined) this.closing.push(socketClosed(connection.socket));
    });
    session.uses = 1;
    return new LeasedUpstream(session, false);
  }

  /**
   * A new login by `connect`. When the server answers that it has no free connection slot (53300: its
   * max_connections, the role's or the database's CONNECTION LIMIT) while sessions of other logins are
   * parked here, those may be what fills it: they are closed, and once their sockets closed (the backends
   * gone) the login is tried once more. A second refusal propagates.
   */
  private async login(connect: () => Promise<UpstreamConnection>): Promise<UpstreamConnection> {
    try {
      return await connect();
    } catch (err) {
      if (!(err instanceof UpstreamError) || !isOutOfConnectionSlots(err.sqlState) || this.pool.size === 0) throw err;
      const closed = this.pool.clear('slots');
      this.logger.info('upstream out of connection slots: parked sessions closed before a second login', {
        closed: closed.length,
      });
      await Promise.all(closed.map((session) => socketClosed(session.socket)));
      return connect();
    }
  }

  /**
   * The agent connection is done with `lease`: reset and parked when it ended cleanly (lease.handBack()
   * said so), closed otherwise.
   */
  release(lease: LeasedUpstream): void {
    lease.release();
    const session = lease.session;
    if (!this.config.enabled) session.discard('disabled');
    else if (this.closing !== undefined) session.discard('shutdown');
    else if (!lease.clean) session.discard('unclean');
    else if (lease.unresettable !== undefined) {
      this.logger.info('upstream session not reused', { backendPid: lease.backendPid, reason: lease.unresettable });
      session.discard('unresettable');
    } else if (this.pool.expired(session.loggedInAt)) session.discard('lifetime');
    else void this.resetAndPark(session, lease.connection.parameters, [...lease.placeholders]);
  }

  /**
   * The sidecar stops: every parked session gets Terminate and is closed, and so is every session released
   * from now on (one being reset is closed when its reset ends). Resolves once their sockets closed (each
   * is destroyed a second after its Terminate at the latest).
   */
  close(): Promise<void> {
    if (this.closing === undefined) {
      this.closing = [];
      this.pool.clear('shutdown');
    }
    return Promise.all(this.closing).then(() => undefined);
  }

  /** Closes parked sessions past their idle timeout or lifetime (also run by a timer while any is parked). */
  sweep(): number {
    return this.pool.sweep();
  }

  private async resetAndPark(
    session: UpstreamSession,
    sessionParameters: ReadonlyMap<string, string>,
    placeholders: readonly string[],
  ): Promise<void> {
    const socket = session.socket;
    const swallow = (): void => undefined;
    socket.on('error', swallow); // errors surface through runSimpleQueries
    let problem: string | undefined;
    try {
      const outcome = await runSimpleQueries(
        socket,
        ['DISCARD ALL', resetCheckSql(placeholders)],
        this.config.resetTimeoutMs,
      );
      problem = resetProblem(session.loginParameters, sessionParameters, session.loginSettings, outcome);
    } catch (err) {
      problem = err instanceof Error ? err.message : String(err);
    } finally {
      socket.off('error', swallow);
    }
    if (problem !== undefined) {
      this.logger.info('upstream session not reused', {
        backendPid: session.connection.backendKey?.processId,
        reason: problem,
      });
      session.discard('reset-failed');
      return;
    }
    if (this.closing !== undefined) {
      session.discard('shutdown');
      return;
    }
    if (!this.pool.park(session.key, session)) return;
    session.watch(() => {
      this.pool.remove(session, 'closed');
    });
  }

  private scheduleSweep(size: number): void {
    if (size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    } else if (this.sweeper === undefined) {
      const every = Math.max(50, Math.min(this.config.idleTimeoutMs, this.config.maxLifetimeMs, 10_000) / 2);
      this.sweeper = setInterval(() => this.pool.sweep(), every);
      this.sweeper.unref();
    }
  }
}

/** Resolves when `socket` has closed. */
function socketClosed(socket: Duplex): Promise<void> {
  return socket.destroyed ? Promise.resolve() : new Promise((resolve) => socket.once('close', () => resolve()));
}

/** Why a reset left the session unfit for another agent connection; undefined when it is fit. */
export function resetProblem(
  loginParameters: ReadonlyMap<string, string>,
  sessionParameters: ReadonlyMap<string, string>,
  loginSettings: string,
  outcome: Awaited<ReturnType<typeof runSimpleQueries>>,
): string | undefined {
  const [discard, check] = outcome.results;
  if (discard?.error !== undefined) return `DISCARD ALL failed: ${discard.error.code} ${discard.error.message}`;
  if (check?.error !== undefined) return `the reset check failed: ${check.error.code} ${check.error.message}`;
  if (check?.firstValue !== `0/${loginSettings}`) {
    return `session state left after DISCARD ALL (check answered ${JSON.stringify(check?.firstValue)}, expected ${JSON.stringify(`0/${loginSettings}`)})`;
  }
  if (outcome.transactionStatus !== 'I') return `transaction status ${outcome.transactionStatus} after the reset`;
  // Every setting the server reported during the agent connection and the reset must be back at its login value.
  const current = new Map(sessionParameters);
  for (const [name, value] of outcome.parameterStatus) current.set(name, value);
  for (const [name, value] of current) {
    if (loginParameters.get(name) !== value)
      return `${name} is ${JSON.stringify(value)} after the reset, not its login value`;
  }
  return undefined;
}
