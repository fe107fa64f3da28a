// Values the row masker writes, valid for the column's type in text and binary format (the server's own
// input/output and send/receive functions are the reference: src/backend/utils/adt/*.c), so drivers decode
// them as they decode the server's: the fixed value of each type, keyed hashes of integers, numerics, UUIDs
// and text, and the canonical text of a value (the same in both formats, so a hash joins across clients
// whatever format they ask for).
import { keyedHash } from '../../../core/masking/mask-value.ts';

/** Type OIDs of pg_catalog types the masker writes values for (pg_type.dat). */
export const T = {
  bool: 16,
  bytea: 17,
  char: 18,
  name: 19,
  int8: 20,
  int2: 21,
  int4: 23,
  text: 25,
  oid: 26,
  json: 114,
  xml: 142,
  cidr: 650,
  float4: 700,
  float8: 701,
  unknown: 705,
  inet: 869,
  bpchar: 1042,
  varchar: 1043,
  date: 1082,
  timestamp: 1114,
  timestamptz: 1184,
  numeric: 1700,
  uuid: 2950,
  jsonb: 3802,
} as const;

/** Element type of each array type the masker writes an empty array for (pg_type.dat typarray). */
const ARRAY_ELEMENTS: ReadonlyMap<number, number> = new Map([
  [1000, T.bool],
  [1001, T.bytea],
  [1002, T.char],
  [1003, T.name],
  [1005, T.int2],
  [1007, T.int4],
  [1009, T.text],
  [1014, T.bpchar],
  [1015, T.varchar],
  [1016, T.int8],
  [1021, T.float4],
  [1022, T.float8],
  [1028, T.oid],
  [1041, T.inet],
  [651, T.cidr],
  [1115, T.timestamp],
  [1182, T.date],
  [1185, T.timestamptz],
  [1231, T.numeric],
  [2951, T.uuid],
  [199, T.json],
  [3807, T.jsonb],
  [143, T.xml],
]);

/** Types whose values are text in both formats. */
export const TEXT_LIKE: ReadonlySet<number> = new Set([T.text, T.varchar, T.bpchar, T.name, T.unknown, T.xml]);

export interface Encoded {
  readonly text: Buffer;
  readonly binary: Buffer;
}

function encoded(text: string, binary: Buffer): Encoded {
  return { text: Buffer.from(text), binary };
}

function int32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(v);
  return b;
}

function int64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(v);
  return b;
}

/** The value redact and fixed write for types whose values are not text: fixed, valid, and saying nothing. */
const FIXED: ReadonlyMap<number, Encoded> = new Map([
  [T.bool, encoded('f', Buffer.from([0]))],
  [T.int2, encoded('0', Buffer.alloc(2))],
  [T.int4, encoded('0', Buffer.alloc(4))],
  [T.oid, encoded('0', Buffer.alloc(4))],
  [T.int8, encoded('0', Buffer.alloc(8))],
  [T.float4, encoded('0', Buffer.alloc(4))],
  [T.float8, encoded('0', Buffer.alloc(8))],
  // ndigits 0, weight 0, sign positive, dscale 0.
  [T.numeric, encoded('0', Buffer.alloc(8))],
  [T.uuid, encoded('00000000-0000-0000-0000-000000000000', Buffer.alloc(16))],
  // Days and microseconds since 2000-01-01.
  [T.date, encoded('1970-01-01', int32(-10957))],
  [T.timestamp, encoded('1970-01-01 00:00:00', int64(-946684800000000n))],
  [T.timestamptz, encoded('1970-01-01 00:00:00+00', int64(-946684800000000n))],
  // family AF_INET (2), bits, is_cidr, address length, address.
  [T.inet, encoded('0.0.0.0', Buffer.from([2, 32, 0, 4, 0, 0, 0, 0]))],
  [T.cidr, encoded('0.0.0.0/0', Buffer.from([2, 0, 1, 4, 0, 0, 0, 0]))],
]);

/** Whether the type has a fixed value of its own (not text, not an array). */
export function hasFixedValue(type: number): boolean {
  return FIXED.has(type);
}

export function isArrayType(type: number): boolean {
  return ARRAY_ELEMENTS.has(type);
}

/**
 * The fixed value of a type that is not text-like: FIXED, an empty array, or NULL for types without one
 * (composites, ranges, user types: NULL is valid in every type and format).
 */
export function fixedValue(type: number, binary: boolean): Buffer | null {
  const f = FIXED.get(type);
  if (f !== undefined) return binary ? f.binary : f.text;
  const element = ARRAY_ELEMENTS.get(type);
  if (element === undefined) return null;
  // array_send of an empty array: ndim 0, no nulls, the element type.
  return binary ? Buffer.concat([int32(0), int32(0), int32(element)]) : Buffer.from('{}');
}

/** A text in a text-like, json, jsonb or bytea column; other types get their fixed value. */
export function textValue(type: number, binary: boolean, text: string): Buffer | null {
  if (TEXT_LIKE.has(type) || type === 0) return Buffer.from(text);
  if (type === T.json) return Buffer.from(JSON.stringify(text));
  if (type === T.jsonb) {
    const json = Buffer.from(JSON.stringify(text));
    return binary ? Buffer.concat([JSONB_VERSION, json]) : json;
  }
  if (type === T.bytea) return binary ? Buffer.from(text) : Buffer.from(`\\x${Buffer.from(text).toString('hex')}`);
  return fixedValue(type, binary);
}

const JSONB_VERSION = Buffer.from([1]);

/** jsonb in binary format: a version byte, then the text. */
export function jsonbBinary(text: string): Buffer {
  return Buffer.concat([JSONB_VERSION, Buffer.from(text)]);
}

/** Types the hash strategy writes a hashed value of its own type for. */
const HASHED: ReadonlySet<number> = new Set([
  T.text,
  T.varchar,
  T.bpchar,
  T.name,
  T.unknown,
  T.xml,
  T.json,
  T.jsonb,
  T.bytea,
  T.uuid,
  T.int2,
  T.int4,
  T.int8,
  T.numeric,
  0,
]);

/**
 * The keyed hash of a value, written in the column's own type: `hmac:` and 16 hex digits in text (and in
 * json, jsonb, bytea as their text), a UUID made of the HMAC, a non-negative integer of the type's width,
 * a 15-digit numeric. The hash is of the value's canonical text, so text and binary clients, and every
 * sidecar sharing the key, write the same masked value for the same original. Other types: their fixed value.
 */
export function hashedValue(type: number, binary: boolean, original: Buffer, key: Buffer): Buffer | null {
  if (!HASHED.has(type)) return fixedValue(type, binary);
  const canonical = canonicalText(type, binary, original);
  if (canonical === undefined) return fixedValue(type, binary);
  const mac = keyedHash(key, canonical);
  switch (type) {
    case T.uuid: {
      const u = mac.subarray(0, 16);
      return binary ? Buffer.from(u) : Buffer.from(uuidText(u));
    }
    case T.int2: {
      const v = mac.readUInt16BE(0) & 0x7fff;
      return binary ? Buffer.from([v >> 8, v & 0xff]) : Buffer.from(String(v));
    }
    case T.int4: {
      const v = mac.readUInt32BE(0) & 0x7fffffff;
      return binary ? int32(v) : Buffer.from(String(v));
    }
    case T.int8: {
      const v = mac.readBigUInt64BE(0) & 0x7fffffffffffffffn;
      return binary ? int64(v) : Buffer.from(v.toString());
    }
    case T.numeric: {
      // 48 bits: at most 15 decimal digits.
      const digits = String(mac.readUIntBE(0, 6));
      return binary ? numericBinary(digits) : Buffer.from(digits);
    }
    default:
      return textValue(type, binary, `hmac:${mac.toString('hex', 0, 8)}`);
  }
}

function uuidText(u: Buffer): string {
  const h = u.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** numeric_send of a non-negative integer written in decimal digits (base-10000 digits, weight, dscale 0). */
function numericBinary(decimal: string): Buffer {
  const trimmed = decimal.replace(/^0+/, '');
  const groups: number[] = [];
  for (let end = trimmed.length; end > 0; end -= 4) groups.unshift(Number(trimmed.slice(Math.max(0, end - 4), end)));
  while (groups.length > 0 && groups[groups.length - 1] === 0) groups.pop();
  const weight = groups.length === 0 ? 0 : Math.ceil(trimmed.length / 4) - 1;
  const out = Buffer.alloc(8 + 2 * groups.length);
  out.writeInt16BE(groups.length, 0);
  out.writeInt16BE(weight, 2);
  out.writeUInt16BE(0, 4);
  out.writeInt16BE(0, 6);
  groups.forEach((g, i) => out.writeInt16BE(g, 8 + 2 * i));
  return out;
}

/** numeric_out of numeric_send's bytes (the text the server would have sent for the same value). */
export function numericText(b: Buffer): string | undefined {
  if (b.length < 8) return undefined;
  const ndigits = b.readInt16BE(0);
  const weight = b.readInt16BE(2);
  const sign = b.readUInt16BE(4);
  const dscale = b.readInt16BE(6);
  if (b.length !== 8 + 2 * ndigits) return undefined;
  if (sign === 0xc000) return 'NaN';
  if (sign === 0xd000) return 'Infinity';
  if (sign === 0xf000) return '-Infinity';
  const digit = (i: number): number => (i >= 0 && i < ndigits ? b.readInt16BE(8 + 2 * i) : 0);
  let integer = '';
  for (let i = 0; i <= weight; i++) integer += i === 0 ? String(digit(i)) : String(digit(i)).padStart(4, '0');
  if (integer === '') integer = '0';
  let fraction = '';
  for (let i = weight + 1; fraction.length < dscale; i++) fraction += String(digit(i)).padStart(4, '0');
  fraction = fraction.slice(0, dscale);
  return `${sign === 0x4000 ? '-' : ''}${integer}${dscale > 0 ? `.${fraction}` : ''}`;
}

/**
 * The value as the server's output function writes it in text format, from either format; undefined for a
 * binary value this does not decode (the caller then writes the fixed value). bytea is canonical as its
 * lower-case hex, whichever bytea_output the session has.
 */
export function canonicalText(type: number, binary: boolean, value: Buffer): string | undefined {
  if (!binary) {
    if (type === T.bytea) return byteaHex(value.toString('latin1'));
    if (type === T.uuid) return value.toString('latin1').toLowerCase();
    return value.toString('utf8');
  }
  switch (type) {
    case T.jsonb:
      return value.subarray(1).toString('utf8');
    case T.bytea:
      return `\\x${value.toString('hex')}`;
    case T.uuid:
      return value.length === 16 ? uuidText(value) : undefined;
    case T.int2:
      return value.length === 2 ? String(value.readInt16BE(0)) : undefined;
    case T.int4:
      return value.length === 4 ? String(value.readInt32BE(0)) : undefined;
    case T.int8:
      return value.length === 8 ? value.readBigInt64BE(0).toString() : undefined;
    case T.numeric:
      return numericText(value);
    default:
      return TEXT_LIKE.has(type) || type === T.json || type === 0 ? value.toString('utf8') : undefined;
  }
}

/** bytea in text format (hex or escape output) as `\x` and lower-case hex. */
function byteaHex(text: string): string {
  if (text.startsWith('\\x')) return text.toLowerCase();
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x5c && text[i + 1] === '\\') {
      bytes.push(0x5c);
      i += 1;
    } else if (c === 0x5c && /^[0-3][0-7]{2}$/.test(text.slice(i + 1, i + 4))) {
      bytes.push(parseInt(text.slice(i + 1, i + 4), 8));
      i += 3;
    } else {
      bytes.push(c & 0xff);
    }
  }
  return `\\x${Buffer.from(bytes).toString('hex')}`;
}

/** JSON strings and numbers of a JSON text (valid JSON, as the server sends it), each whole. */
const JSON_TOKEN = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/**
 * Detector replacement inside a JSON text, token by token: a string is decoded, masked and written again
 * as a JSON string; a number in which something was found becomes a JSON string of its masked text. The
 * result stays valid JSON whatever a match spans (a PEM block without its end line would otherwise run
 * over the closing quote and braces).
 */
export function maskJsonTokens(json: string, mask: (text: string) => string): string {
  JSON_TOKEN.lastIndex = 0;
  return json.replace(JSON_TOKEN, (token) => {
    if (token.startsWith('"')) {
      let decoded: unknown;
      try {
        decoded = JSON.parse(token);
      } catch {
        return JSON.stringify(mask(token));
      }
      if (typeof decoded !== 'string') return token;
      const masked = mask(decoded);
      return masked === decoded ? token : JSON.stringify(masked);
    }
    const masked = mask(token);
    return masked === token ? token : JSON.stringify(masked);
  });
}
