// Structured JSON logs, one object per line on stderr, shared by the operator, the sidecar and the CLI:
// time, level, msg, then the logger's and the call's fields. Tokens and passwords never reach a logger:
// callers log hashes of them instead (a test scans the sidecar's logs for secrets).
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

export interface LoggerOptions {
  /** Lowest level written. */
  level: LogLevel;
  /** Where lines go. Default process.stderr. */
  write?: (line: string) => void;
  now?: () => Date;
  base?: Record<string, unknown>;
}

export function isLogLevel(value: string): value is LogLevel {
  return Object.hasOwn(LEVELS, value);
}

export function createLogger(options: LoggerOptions): Logger {
  const min = LEVELS[options.level];
  const write = options.write ?? ((line: string) => process.stderr.write(line));
  const now = options.now ?? (() => new Date());
  const base = options.base ?? {};
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (LEVELS[level] < min) return;
    write(`${JSON.stringify({ time: now().toISOString(), level, msg, ...base, ...fields }, errorReplacer)}\n`);
  };
  return {
    debug: (m, f) => {
      emit('debug', m, f);
    },
    info: (m, f) => {
      emit('info', m, f);
    },
    warn: (m, f) => {
      emit('warn', m, f);
    },
    error: (m, f) => {
      emit('error', m, f);
    },
    child: (fields) => createLogger({ ...options, base: { ...base, ...fields } }),
  };
}

function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) return { name: value.name, message: value.message };
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/** A logger that drops everything, for tests that do not look at logs. */
export const silentLogger: Logger = createLogger({ level: 'error', write: () => undefined });
