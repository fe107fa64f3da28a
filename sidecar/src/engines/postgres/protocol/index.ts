/**
 * PostgreSQL v3 wire protocol for the sidecar: frontend decoding, backend encoding, backend scanning,
 * and the sidecar's own upstream login. Import from here rather than from the individual modules.
 */
export * from './protocol-violation.ts';
export * from './frontend-messages.ts';
export * from './frontend-decoder.ts';
export * from './frontend-encoder.ts';
export * from './backend-messages.ts';
export * from './backend-encoder.ts';
export * from './backend-scanner.ts';
export * from './scram.ts';
export * from './upstream-connection.ts';
