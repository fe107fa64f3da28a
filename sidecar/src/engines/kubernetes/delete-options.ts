// The dryRun of a DELETE's body, read as the API server reads it (k8s.io/apiserver handlers/delete.go): a
// non-empty body is decoded as DeleteOptions by the serializer its Content-Type names — JSON (also when no
// Content-Type is given), YAML or protobuf — and replaces the query's options altogether. Pure.
// Anything the engine cannot read the way the API server would is refused, never guessed at: a media type
// the API server would not decode here (415; CBOR too, which a feature gate can turn on), a protobuf body
// outside the plain encoding (400).

import { parse as parseYaml } from 'yaml';
import { UnclassifiableRequest, type RequestInfo } from './request-info.ts';

/** A DELETE body in a media type the engine does not read for DeleteOptions; answered 415. */
export class UnreadableDeleteOptions extends Error {
  override name = 'UnreadableDeleteOptions';
}

const PROTOBUF_TYPE = 'application/vnd.kubernetes.protobuf';
/** The envelope every protobuf body of the API server starts with (runtime/serializer/protobuf). */
const PROTOBUF_MAGIC = Buffer.from('k8s\0', 'latin1');

/** Go's mime.ParseMediaType, as far as the API server uses it: the lower-cased type/subtype, or undefined. */
export function mediaType(contentType: string): string | undefined {
  const [type = '', ...params] = contentType.split(';');
  const essence = type.trim().toLowerCase();
  if (!/^[!#$%&'*+\-.^_`|~0-9a-z]+\/[!#$%&'*+\-.^_`|~0-9a-z]+$/.test(essence)) return undefined;
  // Parameters are read but not used; a malformed one makes Go refuse the whole header.
  for (const param of params) {
    if (param.trim() === '') continue;
    if (!/^\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|"(?:[^"\\]|\\.)*")\s*$/.test(param))
      return undefined;
  }
  return essence;
}

/**
 * The dryRun values of DeleteOptions in a DELETE body, or undefined when the body sets none. Throws
 * UnreadableDeleteOptions for a media type other than JSON, YAML or protobuf, UnclassifiableRequest for a
 * protobuf body outside the plain encoding. A JSON or YAML body that does not parse gives undefined: the API
 * server cannot decode it either and answers 400.
 */
export function deleteOptionsDryRun(body: Buffer, contentType: string): readonly unknown[] | undefined {
  const type = contentType === '' ? 'application/json' : mediaType(contentType);
  if (type === PROTOBUF_TYPE) return protobufDryRun(body);
  if (type !== 'application/json' && type !== 'application/yaml') {
    throw new UnreadableDeleteOptions(
      `a DELETE body of type ${contentType === '' ? '(none)' : JSON.stringify(contentType)} cannot be read for its DeleteOptions (JSON, YAML or protobuf only)`,
    );
  }
  let options: unknown;
  try {
    const text = body.toString('utf8');
    options = type === 'application/yaml' ? parseYaml(text) : JSON.parse(text);
  } catch {
    return undefined;
  }
  // Field names match exactly (the API server's JSON decoder is case-sensitive); the last of duplicates wins
  // in JSON.parse as in Go.
  const dryRun = typeof options === 'object' && options !== null ? (options as { dryRun?: unknown }).dryRun : undefined;
  return Array.isArray(dryRun) ? dryRun : undefined;
}

/** A protobuf reader over one message: varints, length-delimited fields; groups and overruns refused. */
class ProtobufFields {
  private offset = 0;
  private readonly bytes: Buffer;
  constructor(bytes: Buffer) {
    this.bytes = bytes;
  }

  done(): boolean {
    return this.offset >= this.bytes.length;
  }

  varint(): number {
    let value = 0;
    let factor = 1;
    for (let i = 0; i < 10; i++) {
      const byte = this.bytes[this.offset++];
      if (byte === undefined) throw new UnclassifiableRequest('protobuf DeleteOptions cut inside a varint');
      value += (byte & 0x7f) * factor;
      if (byte < 0x80) return value;
      factor *= 128;
    }
    throw new UnclassifiableRequest('protobuf DeleteOptions with an overlong varint');
  }

  /** The next field's number and, for a length-delimited one, its bytes; other wire types are skipped. */
  next(): { field: number; bytes?: Buffer } {
    const tag = this.varint();
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (field === 0) throw new UnclassifiableRequest('protobuf DeleteOptions with field number 0');
    if (wire === 0) {
      this.varint();
      return { field };
    }
    if (wire === 1 || wire === 5) {
      this.skip(wire === 1 ? 8 : 4);
      return { field };
    }
    if (wire === 2) {
      const length = this.varint();
      const start = this.offset;
      this.skip(length);
      return { field, bytes: this.bytes.subarray(start, start + length) };
    }
    throw new UnclassifiableRequest(`protobuf DeleteOptions with wire type ${String(wire)}`);
  }

  private skip(n: number): void {
    if (this.offset + n > this.bytes.length) throw new UnclassifiableRequest('protobuf DeleteOptions cut short');
    this.offset += n;
  }
}

/**
 * dryRun of a protobuf body: the `k8s\0` envelope, runtime.Unknown {2: raw}, and in raw DeleteOptions
 * {5: repeated string dryRun} (k8s.io/apimachinery meta/v1 generated.proto). Go appends every dryRun field
 * and keeps the last raw; a second raw is refused rather than followed.
 */
function protobufDryRun(body: Buffer): readonly unknown[] | undefined {
  if (body.length <= PROTOBUF_MAGIC.length || !body.subarray(0, PROTOBUF_MAGIC.length).equals(PROTOBUF_MAGIC)) {
    throw new UnclassifiableRequest('a protobuf body without the k8s envelope');
  }
  const envelope = new ProtobufFields(body.subarray(PROTOBUF_MAGIC.length));
  let raw: Buffer | undefined;
  while (!envelope.done()) {
    const { field, bytes } = envelope.next();
    if (field !== 2) continue;
    if (bytes === undefined) throw new UnclassifiableRequest('protobuf envelope whose raw field is not bytes');
    if (raw !== undefined) throw new UnclassifiableRequest('protobuf envelope with two raw fields');
    raw = bytes;
  }
  if (raw === undefined) return undefined;
  const options = new ProtobufFields(raw);
  const dryRun: string[] = [];
  while (!options.done()) {
    const { field, bytes } = options.next();
    if (field !== 5) continue;
    // The API server refuses a dryRun of another wire type; so does the engine.
    if (bytes === undefined) throw new UnclassifiableRequest('protobuf DeleteOptions whose dryRun is not a string');
    dryRun.push(bytes.toString('latin1'));
  }
  return dryRun.length === 0 ? undefined : dryRun;
}

/**
 * A DELETE with a body, as the API server reads it: the DeleteOptions in the body replace the query's
 * (handlers/delete.go decodes the query only when the body is empty). So a `dryRun=All` in the query of such
 * a request is not what runs — the delete is real — and is refused rather than recorded as a dry run; a
 * `dryRun: ["All"]` in the body (what client-go sends for `kubectl delete --dry-run=server`, in JSON or
 * protobuf) is the dry run. Throws as deleteOptionsDryRun does, and UnclassifiableRequest for dryRun values
 * other than All (the API server refuses them).
 */
export function withDeleteOptions(info: RequestInfo, body: Buffer, contentType: string): RequestInfo {
  if (info.dryRun) {
    throw new UnclassifiableRequest(
      'dryRun in the query of a DELETE with a body: the API server reads the options in the body and ignores the query',
    );
  }
  const dryRun = deleteOptionsDryRun(body, contentType);
  if (dryRun === undefined || dryRun.length === 0) return info;
  if (!dryRun.every((v) => v === 'All')) throw new UnclassifiableRequest('dryRun must be All');
  return { ...info, dryRun: true };
}
