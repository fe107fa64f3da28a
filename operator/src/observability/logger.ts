// The shared structured logger (api/src/logger.ts).
export { createLogger, isLogLevel, silentLogger, type Logger, type LoggerOptions, type LogLevel } from '@chaperone/api';
