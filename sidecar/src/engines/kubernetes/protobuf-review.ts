// Reads a SelfSubjectAccessReview sent as Kubernetes protobuf (kubectl auth can-i sends
// application/vnd.kubernetes.protobuf), so the sidecar can answer it from policy. Pure and minimal: the
// `k8s\0` envelope (runtime.Unknown: 1 typeMeta{1 apiVersion, 2 kind}, 2 raw), then the review's
// spec (field 2) with resourceAttributes (1: namespace, verb, group, version, resource, subresource, name as
// fields 1-7) or nonResourceAttributes (2: path 1, verb 2). Wire types other than varint and length-delimited
// are refused; so is anything truncated.
import { MalformedReview } from './access-review.ts';

const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);

/** Field number → the last length-delimited value with it (protobuf: the last one wins). */
function fields(buf: Buffer): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let i = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (i >= buf.length) throw new MalformedReview('truncated protobuf varint');
      const byte = buf[i++] ?? 0;
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7;
      if (shift > 49) throw new MalformedReview('protobuf varint too long');
    }
  };
  while (i < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) varint();
    else if (wire === 2) {
      const length = varint();
      if (i + length > buf.length) throw new MalformedReview('truncated protobuf field');
      out.set(field, buf.subarray(i, i + length));
      i += length;
    } else throw new MalformedReview(`unexpected protobuf wire type ${String(wire)}`);
  }
  return out;
}

const text = (b: Buffer | undefined): string | undefined => b?.toString('utf8');

/** The review in the JSON document's shape (access-review.ts reads it from there). */
export function decodeProtobufReview(body: Buffer): {
  apiVersion?: string;
  kind?: string;
  spec?: { resourceAttributes?: Record<string, unknown>; nonResourceAttributes?: Record<string, unknown> };
} {
  if (body.length < 4 || !body.subarray(0, 4).equals(MAGIC))
    throw new MalformedReview('not a Kubernetes protobuf body');
  const unknown = fields(body.subarray(4));
  const typeMeta = fields(unknown.get(1) ?? Buffer.alloc(0));
  const object = fields(unknown.get(2) ?? Buffer.alloc(0));
  const spec = fields(object.get(2) ?? Buffer.alloc(0));
  const apiVersion = text(typeMeta.get(1));
  const kind = text(typeMeta.get(2));
  const result: ReturnType<typeof decodeProtobufReview> = {
    ...(apiVersion === undefined ? {} : { apiVersion }),
    ...(kind === undefined ? {} : { kind }),
  };
  const resource = spec.get(1);
  const nonResource = spec.get(2);
  if (resource !== undefined) {
    const a = fields(resource);
    const names = ['namespace', 'verb', 'group', 'version', 'resource', 'subresource', 'name'] as const;
    const attrs: Record<string, unknown> = {};
    names.forEach((name, index) => {
      const value = text(a.get(index + 1));
      if (value !== undefined) attrs[name] = value;
    });
    result.spec = { resourceAttributes: attrs };
  } else if (nonResource !== undefined) {
    const a = fields(nonResource);
    result.spec = { nonResourceAttributes: { path: text(a.get(1)) ?? '', verb: text(a.get(2)) ?? '' } };
  } else {
    result.spec = {};
  }
  return result;
}
