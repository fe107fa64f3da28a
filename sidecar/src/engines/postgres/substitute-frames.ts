// The messages sent upstream in place of a refused one (statement-gate.ts): each fails in PostgreSQL at once,
// and the response tracker replaces its error with the sidecar's denial. Never a message a client could make
// succeed: see FAILING_EXECUTE.
import { encodeParse, encodeQuery } from './protocol/frontend-encoder.ts';

/** Statement text that fails in the upstream's parser at once; its error is replaced by the denial. */
const FAILING_SQL = 'CHAPERONE_DENIED';
const FAILING_QUERY = encodeQuery(FAILING_SQL);
/**
 * An Execute whose portal name is not valid UTF-8 (the byte 0xFF): the server refuses the message itself
 * ("invalid byte sequence", the client encoding is pinned to UTF8), so it fails whatever portals exist. No
 * client can create a portal of that name (a Bind naming it fails the same way, and SQL text must be valid
 * UTF-8), unlike any printable name, which a client could Bind or DECLARE to have a substitute run it.
 */
const FAILING_EXECUTE = Buffer.from([
  0x45, // 'E'
  0x00,
  0x00,
  0x00,
  0x0a, // length: itself, the name and its NUL, maxRows
  0xff,
  0x00, // portal name: one invalid byte
  0x00,
  0x00,
  0x00,
  0x00, // maxRows 0
]);

/**
 * A Bind whose portal name is the same invalid byte: refused as the message is read, before the statement it
 * names is looked up or planned (PostgreSQL plans at Bind), whatever statements exist.
 */
const FAILING_BIND = Buffer.from([
  0x42, // 'B'
  0x00,
  0x00,
  0x00,
  0x0d, // length: itself, the two names and their NULs, three empty counts
  0xff,
  0x00, // portal name: one invalid byte
  0x00, // statement name: the unnamed one (never read)
  0x00,
  0x00, // no parameter formats
  0x00,
  0x00, // no parameters
  0x00,
  0x00, // no result formats
]);

/**
 * What is sent upstream instead of a refused message of this kind: a message that fails at once there. Also
 * sent for messages the upstream discards (after an extended-protocol error until Sync): if the proxy's view
 * of the stream were ever wrong, that fails closed, not open.
 */
export function substituteFrame(
  type: 'Query' | 'Parse' | 'Bind' | 'Execute' | 'FunctionCall',
  statementName = '',
): Buffer {
  switch (type) {
    case 'Query':
    case 'FunctionCall':
      return FAILING_QUERY;
    case 'Parse':
      return encodeParse(statementName, FAILING_SQL);
    case 'Bind':
      return FAILING_BIND;
    case 'Execute':
      return FAILING_EXECUTE;
  }
}
