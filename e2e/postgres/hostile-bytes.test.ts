// Hostile bytes against the real sidecar process over raw TCP: 10,000+ seeded random or mutated frames in
// every protocol phase (startup, awaiting the password, inside an authenticated session). Each frame must end
// only its own connection, in the way its category defines, while one legitimate node-postgres session stays
// open and usable throughout, a fresh one can connect at the end, the process is still alive, and the
// protocol-error counter grew by exactly the number of connections ended by a protocol violation.
//
// Reproduce one seed with CHAPERONE_FUZZ_SEED=<n>; a failure prints the case index, category and bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { READ_ONLY, startTestSidecar, type RunningTestSidecar } from '../harness/sidecar.ts';
import {
  GSSENC_REQUEST,
  PROTOCOL_3_0,
  RawClient,
  SSL_REQUEST,
  SYNC,
  cstr,
  errorFields,
  i16,
  i32,
  msg,
  packet,
  parseBackend,
  passwordMessage,
  prng,
  query,
  startupMessage,
  type BackendMessage,
} from './raw-client.ts';

const SEED = Number(process.env.CHAPERONE_FUZZ_SEED ?? 0x5eed_2026);
const FRAMES = 10_000;
const CONCURRENCY = 16;
/**
 * A failure bound, not an expectation: the sidecar answers and ends a hostile connection as soon as it has
 * read the bytes; a connection still open after this long is reported as hung (a case that passes never
 * waits for it).
 */
const CONNECTION_TIMEOUT_MS = 60_000;
const LEGIT_EVERY = 300;

const SUBJECT = 'system:serviceaccount:ci:fuzzer';
const VALID_TYPES = new Set('BCdcfDEHFPpQSX'.split('').map((c) => c.charCodeAt(0)));
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

type Rand = () => number;
const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: Rand, items: readonly T[]): T => items[Math.floor(r() * items.length)] as T;
const bytes = (r: Rand, n: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
};
/** Random bytes without NUL (so a string stays unterminated). */
const nonNul = (r: Rand, n: number): Buffer => {
  const b = bytes(r, n);
  for (let i = 0; i < n; i++) if (b[i] === 0) b[i] = 0x41;
  return b;
};
const invalidType = (r: Rand): number => {
  for (;;) {
    const t = int(r, 0, 255);
    if (!VALID_TYPES.has(t)) return t;
  }
};
/** A typed-message header whose Int32 length field is `len` (not necessarily consistent with what follows). */
const header = (type: number, len: number): Buffer => Buffer.concat([Buffer.from([type]), i32(len)]);
const badLength = (r: Rand): number =>
  pick(r, [
    () => int(r, 0, 3),
    () => -int(r, 1, 0x7fffffff),
    () => int(r, MAX_MESSAGE_BYTES + 1, 0x3fffffff),
    () => int(r, 0x40000000, 0x7fffffff), // over 1 GiB
    () => 0x7fffffff,
    () => -0x80000000,
  ])();

/**
 * How a category's connection must end, measured from the first hostile byte:
 * - `fatal`: the sidecar, on its own, sends exactly one ErrorResponse, severity FATAL with `code`, as the last
 *   message (after `sslAnswers` one-byte 'N' answers; in a session, after any well-formed non-error replies to
 *   valid messages sent first), and closes the connection;
 * - `silent`: the sidecar sends nothing at all and closes (after our half-close if `finish`);
 * - `contract` (random mutations, whose meaning is not known in advance): every byte received is a well-formed
 *   backend message, the only FATAL it may send is 08P01 and then as the last message, and the connection is
 *   closed once we half-close.
 */
type Expect =
  | { kind: 'fatal'; code: string; sslAnswers?: number; afterValid?: boolean }
  | { kind: 'silent' }
  | { kind: 'contract' };

interface Step {
  readonly bytes: Buffer;
  /** Wait for this many more received bytes before the next step (the SSL 'N' answer). */
  readonly awaitBytes?: number;
}

interface Case {
  readonly category: string;
  readonly prelude: 'none' | 'startup' | 'session';
  readonly steps: readonly Step[];
  /** Half-close our side after the last step (a client that stops mid-message). */
  readonly finish?: boolean;
  readonly expect: Expect;
}

interface Category {
  readonly name: string;
  readonly weight: number;
  readonly prelude: Case['prelude'];
  make(r: Rand, tokens: { bad: readonly string[] }): Omit<Case, 'category' | 'prelude'>;
}

const fatal08 = { kind: 'fatal', code: '08P01' } as const;
const fatal0A = { kind: 'fatal', code: '0A000' } as const;
const one = (b: Buffer): Step[] => [{ bytes: b }];

/** Valid frontend messages to build batches and mutations from. */
function validBatch(r: Rand): Buffer[] {
  const stmt = pick(r, ['', 's1']);
  const portal = pick(r, ['', 'p1']);
  const extended = [
    msg('P', cstr(stmt), cstr('select $1::int + 1'), i16(1), i32(23)),
    msg('B', cstr(portal), cstr(stmt), i16(1), i16(0), i16(1), i32(1), Buffer.from('7'), i16(1), i16(0)),
    msg('D', Buffer.from('P'), cstr(portal)),
    msg('E', cstr(portal), i32(0)),
    SYNC,
  ];
  return pick(r, [
    () => [query('select 1')],
    () => extended,
    () => [msg('C', Buffer.from('S'), cstr(stmt)), SYNC],
    () => [msg('H'), query("select 'x'")],
  ])();
}

const CATEGORIES: readonly Category[] = [
  // ---- startup phase: untyped packets ----
  {
    name: 'startup: length below 8',
    weight: 3,
    prelude: 'none',
    make: (r) => ({ steps: one(Buffer.concat([i32(int(r, 0, 7)), bytes(r, int(r, 0, 24))])), expect: fatal08 }),
  },
  {
    name: 'startup: negative length',
    weight: 3,
    prelude: 'none',
    make: (r) => ({
      steps: one(Buffer.concat([i32(-int(r, 1, 0x7fffffff)), bytes(r, int(r, 0, 24))])),
      expect: fatal08,
    }),
  },
  {
    name: 'startup: length over 1 GiB',
    weight: 3,
    prelude: 'none',
    make: (r) => ({
      steps: one(Buffer.concat([i32(int(r, 0x40000000, 0x7fffffff)), bytes(r, int(r, 4, 64))])),
      expect: fatal08,
    }),
  },
  {
    name: 'startup: length above 10000 (oversized packet header)',
    weight: 3,
    prelude: 'none',
    make: (r) => ({
      steps: one(Buffer.concat([i32(int(r, 10001, 0x3fffffff)), bytes(r, int(r, 4, 64))])),
      expect: fatal08,
    }),
  },
  {
    name: 'startup: oversized packet actually sent (10 KiB..32 KiB)',
    weight: 1,
    prelude: 'none',
    make: (r) => {
      // Kept within one 64 KiB socket read: see the separate test for bytes that arrive after a violation.
      const n = int(r, 10001, 32768);
      const body = Buffer.concat([i32(PROTOCOL_3_0), nonNul(r, n - 8)]);
      return { steps: one(Buffer.concat([i32(n), body])), expect: fatal08 };
    },
  },
  {
    name: 'startup: garbage packet with a plausible length',
    weight: 4,
    prelude: 'none',
    make: (r) => {
      // Any request code except protocol 3.x and the 1234.x special requests.
      let major = int(r, 0, 65535);
      if (major === 3 || major === 1234) major = 7;
      const code = ((major << 16) | int(r, 0, 65535)) >>> 0;
      const body = Buffer.concat([Buffer.alloc(4), bytes(r, int(r, 0, 120))]);
      body.writeUInt32BE(code, 0);
      // As PostgreSQL: an unsupported protocol version is feature_not_supported.
      return { steps: one(packet(body)), expect: fatal0A };
    },
  },
  {
    name: 'startup: protocol 3.0 with malformed parameters',
    weight: 4,
    prelude: 'none',
    make: (r) => {
      const proto = i32(PROTOCOL_3_0);
      const variant = pick(r, [
        () => packet(proto, cstr('user'), cstr('agent')), // no terminating empty name
        () => packet(proto, cstr('user'), nonNul(r, int(r, 1, 40))), // value without NUL
        () => packet(proto, nonNul(r, int(r, 1, 40))), // name without NUL
        () => packet(proto, cstr('user'), cstr('a'), cstr('user'), cstr('b'), Buffer.from([0])), // duplicate
        () => packet(proto, cstr('user'), cstr('a'), Buffer.from([0]), bytes(r, int(r, 1, 16))), // trailing bytes
      ]);
      return { steps: one(variant()), expect: fatal08 };
    },
  },
  {
    name: 'startup: truncated valid packet, then close',
    weight: 3,
    prelude: 'none',
    make: (r) => {
      const full = pick(r, [startupMessage(), SSL_REQUEST, packet(i32(80877102), i32(1), i32(2))]);
      return { steps: one(full.subarray(0, int(r, 1, full.length - 1))), finish: true, expect: { kind: 'silent' } };
    },
  },
  {
    name: 'startup: random bytes with an out-of-range length',
    weight: 4,
    prelude: 'none',
    make: (r) => {
      for (;;) {
        const b = bytes(r, int(r, 4, 96));
        const len = b.readInt32BE(0);
        if (len < 8 || len > 10000) return { steps: one(b), expect: fatal08 };
      }
    },
  },
  {
    name: 'startup: SSLRequest and plaintext in one write (CVE-2021-23214)',
    weight: 2,
    prelude: 'none',
    make: (r) => ({
      steps: one(
        Buffer.concat([pick(r, [SSL_REQUEST, GSSENC_REQUEST]), pick(r, [startupMessage(), bytes(r, int(r, 1, 64))])]),
      ),
      expect: fatal08,
    }),
  },
  {
    name: "startup: SSLRequest, the 'N' answer, then garbage",
    weight: 2,
    prelude: 'none',
    make: (r) => {
      const garbage = {
        bytes: pick(r, [
          () => SSL_REQUEST, // sent twice
          () => Buffer.concat([i32(pick(r, [0, 3, -1, 20000, 0x7fffffff])), bytes(r, 8)]),
          () => msg('Q', cstr('select 1')), // a typed message where a startup packet belongs
        ])(),
      };
      return {
        steps: [{ bytes: SSL_REQUEST, awaitBytes: 1 }, garbage],
        // SSLRequest twice is a request for protocol 1234.5679 to PostgreSQL: feature_not_supported.
        expect: { kind: 'fatal', code: garbage.bytes === SSL_REQUEST ? '0A000' : '08P01', sslAnswers: 1 },
      };
    },
  },
  {
    name: 'startup: CancelRequest with a bad key length',
    weight: 1,
    prelude: 'none',
    make: (r) => ({
      steps: one(packet(i32(80877102), i32(int(r, 0, 1000)), bytes(r, pick(r, [0, 1, 3, 257, 300])))),
      expect: fatal08,
    }),
  },
  {
    name: 'startup: CancelRequest with a random key, trailing bytes',
    weight: 1,
    prelude: 'none',
    make: (r) => ({
      steps: one(Buffer.concat([packet(i32(80877102), i32(int(r, 0, 1 << 30)), bytes(r, 4)), bytes(r, int(r, 0, 16))])),
      expect: { kind: 'silent' },
    }),
  },
  // ---- after a valid StartupMessage, where the password (the identity token) belongs ----
  {
    name: 'password phase: unknown message type',
    weight: 4,
    prelude: 'startup',
    make: (r) => ({
      steps: one(Buffer.concat([Buffer.from([invalidType(r)]), bytes(r, int(r, 0, 40))])),
      expect: fatal08,
    }),
  },
  {
    name: 'password phase: bad length',
    weight: 3,
    prelude: 'startup',
    make: (r) => ({
      steps: one(Buffer.concat([header(0x70, badLength(r)), bytes(r, int(r, 0, 16))])),
      expect: fatal08,
    }),
  },
  {
    name: 'password phase: a non-password message',
    weight: 3,
    prelude: 'startup',
    make: (r) => ({
      steps: one(
        pick(r, [query('select 1'), msg('P', cstr(''), cstr('select 1'), i16(0)), SYNC, msg('H'), msg('F', i32(1))]),
      ),
      expect: fatal08,
    }),
  },
  {
    name: 'password phase: password without NUL or with trailing bytes',
    weight: 3,
    prelude: 'startup',
    make: (r) => ({
      steps: one(
        pick(r, [() => msg('p', nonNul(r, int(r, 0, 64))), () => msg('p', cstr('x'), bytes(r, int(r, 1, 16)))])(),
      ),
      expect: fatal08,
    }),
  },
  {
    name: 'password phase: not a valid token',
    weight: 3,
    prelude: 'startup',
    make: (r, tokens) => ({
      steps: one(
        pick(r, [
          () => passwordMessage(pick(r, tokens.bad)),
          () => msg('p', nonNul(r, int(r, 0, 300)), Buffer.from([0])),
          () => passwordMessage(`${nonNul(r, 20).toString('base64url')}.${nonNul(r, 40).toString('base64url')}.x`),
        ])(),
      ),
      expect: { kind: 'fatal', code: '28P01' },
    }),
  },
  {
    name: 'password phase: truncated password, then close',
    weight: 2,
    prelude: 'startup',
    make: (r) => {
      const full = passwordMessage('a'.repeat(int(r, 1, 200)));
      return { steps: one(full.subarray(0, int(r, 1, full.length - 1))), finish: true, expect: { kind: 'silent' } };
    },
  },
  // ---- inside an authenticated session (valid token) ----
  {
    name: 'session: unknown message type',
    weight: 2,
    prelude: 'session',
    make: (r) => ({
      steps: one(Buffer.concat([Buffer.from([invalidType(r)]), bytes(r, int(r, 0, 40))])),
      expect: fatal08,
    }),
  },
  {
    name: 'session: bad length (below 4, negative, over the limit, over 1 GiB)',
    weight: 2,
    prelude: 'session',
    make: (r) => ({
      steps: one(Buffer.concat([header(pick(r, [...VALID_TYPES]), badLength(r)), bytes(r, int(r, 0, 16))])),
      expect: fatal08,
    }),
  },
  {
    name: 'session: Query without NUL or with bytes after it',
    weight: 2,
    prelude: 'session',
    make: (r) => ({
      steps: one(
        pick(r, [
          () => msg('Q', nonNul(r, int(r, 0, 200))),
          () => msg('Q', cstr('select 1'), bytes(r, int(r, 1, 16))),
        ])(),
      ),
      expect: fatal08,
    }),
  },
  {
    name: 'session: Parse with counts beyond its body',
    weight: 1,
    prelude: 'session',
    make: (r) => ({
      steps: one(
        pick(r, [
          () => msg('P', cstr('s'), cstr('select 1'), i16(int(r, 1, 0x7fff)), bytes(r, int(r, 0, 3))),
          () => msg('P', cstr('s'), nonNul(r, int(r, 1, 50))),
          () => msg('P', nonNul(r, int(r, 0, 10))),
        ])(),
      ),
      expect: fatal08,
    }),
  },
  {
    name: 'session: Bind with parameter counts beyond its body',
    weight: 2,
    prelude: 'session',
    make: (r) => {
      const names = Buffer.concat([cstr(''), cstr('')]);
      const variant = pick(r, [
        () => msg('B', names, i16(0), i16(int(r, 1, 0x7fff))), // parameter count, no values
        () => msg('B', names, i16(0), i16(1), i32(int(r, 1, 0x7fffffff)), bytes(r, int(r, 0, 8))), // value longer than body
        () => msg('B', names, i16(0), i16(1), i32(-int(r, 2, 0x7fffffff)), i16(0)), // negative length other than -1
        () => msg('B', names, i16(2), i16(0), i16(0), i16(3), i32(-1), i32(-1), i32(-1), i16(0)), // 2 formats, 3 params
        () => msg('B', names, i16(int(r, 1, 0x7fff))), // format count, no formats
        () => msg('B', names, i16(0), i16(0), i16(int(r, 1, 0x7fff))), // result formats missing
        () => msg('B', names, i16(0), i16(0), i16(0), bytes(r, int(r, 1, 8))), // trailing bytes
      ]);
      return { steps: one(variant()), expect: fatal08 };
    },
  },
  {
    name: 'session: Describe/Close/Execute malformed',
    weight: 2,
    prelude: 'session',
    make: (r) => {
      let kind = int(r, 0, 255);
      if (kind === 0x53 || kind === 0x50) kind = 0x58;
      const variant = pick(r, [
        () => msg(pick(r, ['D', 'C']), Buffer.from([kind]), cstr('x')), // bad target kind
        () => msg(pick(r, ['D', 'C']), Buffer.from('S'), nonNul(r, int(r, 0, 20))), // name without NUL
        () => msg('E', cstr(''), bytes(r, int(r, 0, 3))), // row limit missing
        () => msg('E', cstr(''), i32(0), bytes(r, int(r, 1, 8))), // trailing bytes
      ]);
      return { steps: one(variant()), expect: fatal08 };
    },
  },
  {
    name: 'session: body-less message with a body',
    weight: 1,
    prelude: 'session',
    make: (r) => ({ steps: one(msg(pick(r, ['S', 'H', 'X', 'c']), bytes(r, int(r, 1, 32)))), expect: fatal08 }),
  },
  {
    name: 'session: startup-phase or password message inside a session',
    weight: 1,
    prelude: 'session',
    make: (r) => ({
      steps: one(
        pick(r, [() => startupMessage(), () => SSL_REQUEST, () => passwordMessage(nonNul(r, 8).toString('hex'))])(),
      ),
      expect: fatal08,
    }),
  },
  {
    name: 'session: valid messages, then a malformed one in the same write',
    weight: 2,
    prelude: 'session',
    make: (r) => ({
      steps: one(
        Buffer.concat([
          ...validBatch(r),
          pick(r, [
            () => Buffer.concat([Buffer.from([invalidType(r)]), bytes(r, 8)]),
            () => msg('Q', nonNul(r, 10)),
            () => header(0x51, badLength(r)),
          ])(),
        ]),
      ),
      expect: { kind: 'fatal', code: '08P01', afterValid: true },
    }),
  },
  {
    name: 'session: truncated message (up to a 64 MiB length field), then close',
    weight: 1,
    prelude: 'session',
    make: (r) => {
      const full = pick(r, [
        () => query(`select ${'1'.repeat(int(r, 1, 100))}`),
        () => Buffer.concat([header(0x51, int(r, 5, MAX_MESSAGE_BYTES)), nonNul(r, int(r, 0, 100))]),
      ])();
      const cut = full.subarray(0, int(r, 1, Math.min(full.length, 200) - 1));
      return { steps: one(cut), finish: true, expect: { kind: 'silent' } };
    },
  },
  {
    name: 'session: random mutations of a valid batch',
    weight: 5,
    prelude: 'session',
    make: (r) => {
      let b = Buffer.concat(validBatch(r));
      const ops = int(r, 1, 4);
      for (let i = 0; i < ops; i++) {
        const at = int(r, 0, Math.max(0, b.length - 1));
        b = pick(r, [
          () => Buffer.concat([b.subarray(0, at), Buffer.from([int(r, 0, 255)]), b.subarray(at + 1)]),
          () =>
            Buffer.concat([b.subarray(0, at), Buffer.from([(b[at] ?? 0) ^ (1 << int(r, 0, 7))]), b.subarray(at + 1)]),
          () => Buffer.concat([b.subarray(0, at), bytes(r, int(r, 1, 8)), b.subarray(at)]),
          () => Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + int(r, 1, 8)))]),
          () => Buffer.concat([b.subarray(0, at), i32(int(r, -10, 1 << 20)), b.subarray(Math.min(b.length, at + 4))]),
        ])();
      }
      return { steps: one(b), finish: true, expect: { kind: 'contract' } };
    },
  },
  {
    name: 'session: random bytes',
    weight: 2,
    prelude: 'session',
    make: (r) => ({ steps: one(bytes(r, int(r, 1, 128))), finish: true, expect: { kind: 'contract' } }),
  },
];

interface Failure {
  readonly index: number;
  readonly category: string;
  readonly sent: string;
  readonly problem: string;
}

function describe(m: BackendMessage): string {
  if (m.single) return `'${m.type}'`;
  if (m.type === 'E') {
    const f = errorFields(m.body);
    return `E(${f.severity} ${f.code} ${f.message})`;
  }
  return m.type;
}

/** Checks what the sidecar sent after the first hostile byte against the category's expectation. */
function check(c: Case, received: Buffer, end: RawClient['end']): string | undefined {
  if (end === 'open') return `the sidecar had not closed the connection after ${CONNECTION_TIMEOUT_MS} ms (hung)`;
  let messages: BackendMessage[];
  try {
    messages = parseBackend(received, c.expect.kind === 'fatal' ? (c.expect.sslAnswers ?? 0) : 0).messages;
  } catch (err) {
    return `malformed bytes from the sidecar: ${(err as Error).message}`;
  }
  const seen = messages.map(describe).join(' ');
  const errors = messages.filter((m) => m.type === 'E' && !m.single).map((m) => errorFields(m.body));
  const fatals = errors.filter((e) => e.severity === 'FATAL');
  switch (c.expect.kind) {
    case 'silent':
      return received.length === 0 ? undefined : `expected no bytes before the close, got ${seen}`;
    case 'contract': {
      if (fatals.some((f) => f.code !== '08P01')) return `a FATAL other than 08P01: ${seen}`;
      if (fatals.length > 1) return `more than one FATAL: ${seen}`;
      const last = messages.at(-1);
      if (fatals.length === 1 && (last?.type !== 'E' || errorFields(last.body).severity !== 'FATAL')) {
        return `messages after the FATAL: ${seen}`;
      }
      return undefined;
    }
    case 'fatal': {
      const { code, sslAnswers = 0, afterValid = false } = c.expect;
      const last = messages.at(-1);
      if (last === undefined || last.single === true || last.type !== 'E') {
        return `expected a FATAL ${code} ErrorResponse as the last message, got [${seen}] (${end})`;
      }
      const f = errorFields(last.body);
      if (f.severity !== 'FATAL' || f.code !== code) return `expected FATAL ${code}, got ${seen}`;
      if (fatals.length !== 1) return `expected exactly one FATAL, got ${seen}`;
      const before = messages.slice(0, -1);
      if (
        before.filter((m) => m.single === true).length !== sslAnswers ||
        before.some((m) => m.single && m.type !== 'N')
      ) {
        return `expected ${sslAnswers} 'N' answer(s) first, got ${seen}`;
      }
      if (!afterValid && before.length !== sslAnswers) return `unexpected messages before the FATAL: ${seen}`;
      if (before.some((m) => m.type === 'E' && !m.single)) return `an error before the FATAL: ${seen}`;
      return undefined;
    }
  }
}

async function runCase(
  sidecar: RunningTestSidecar,
  token: string,
  c: Case,
): Promise<{ problem?: string; fatal08: boolean }> {
  const client = await RawClient.connect(sidecar.host, sidecar.port);
  try {
    if (c.prelude !== 'none') {
      client.write(startupMessage());
      if (!(await client.untilMessage('R', CONNECTION_TIMEOUT_MS))) {
        return { problem: `no authentication request after a valid StartupMessage (${client.end})`, fatal08: false };
      }
      if (c.prelude === 'session') {
        client.write(passwordMessage(token));
        if (!(await client.untilMessage('Z', CONNECTION_TIMEOUT_MS))) {
          return { problem: `valid login did not reach ReadyForQuery (${client.end})`, fatal08: false };
        }
      }
    }
    const mark = client.receivedLength;
    for (const step of c.steps) {
      client.write(step.bytes);
      if (step.awaitBytes !== undefined) {
        const want = client.receivedLength + step.awaitBytes;
        await client.until(() => client.receivedLength >= want, CONNECTION_TIMEOUT_MS);
      }
    }
    if (c.finish === true) client.finish();
    const end = await client.untilClosed(CONNECTION_TIMEOUT_MS);
    const received = client.received.subarray(mark);
    const problem = check(c, received, end);
    let fatal08 = false;
    try {
      const last = parseBackend(received, c.expect.kind === 'fatal' ? (c.expect.sslAnswers ?? 0) : 0).messages.at(-1);
      if (last?.type === 'E' && last.single !== true) {
        const f = errorFields(last.body);
        // Counted by chaperone_protocol_errors_total: violations, and protocol versions the decoder refuses.
        fatal08 = f.severity === 'FATAL' && (f.code === '08P01' || f.code === '0A000');
      }
    } catch {
      // reported by check()
    }
    return problem === undefined ? { fatal08 } : { problem, fatal08 };
  } finally {
    client.destroy();
  }
}

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `))
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

function makeCases(seed: number, badTokens: readonly string[]): Case[] {
  const r = prng(seed);
  const total = CATEGORIES.reduce((s, c) => s + c.weight, 0);
  const cases: Case[] = [];
  for (let i = 0; i < FRAMES; i++) {
    let x = r() * total;
    let cat = CATEGORIES[0] as Category;
    for (const c of CATEGORIES) {
      x -= c.weight;
      if (x < 0) {
        cat = c;
        break;
      }
    }
    cases.push({ category: cat.name, prelude: cat.prelude, ...cat.make(r, { bad: badTokens }) });
  }
  return cases;
}

test(`hostile bytes: ${FRAMES} seeded frames (seed ${SEED}) each end only their own connection`, async (t) => {
  const sidecar = await startTestSidecar(t, { policies: { 'read-only': READ_ONLY } });
  const token = await sidecar.issuer.sign({ sub: SUBJECT }, { expiresIn: 3600 });
  const badTokens = Object.values(await sidecar.issuer.attacks(SUBJECT));
  const cases = makeCases(SEED, badTokens);

  const legit = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    database: 'agent-db',
    password: token,
    ssl: false,
  });
  let legitError: Error | undefined;
  legit.on('error', (err) => {
    legitError = err;
  });
  await legit.connect();
  const ping = async (): Promise<void> => {
    const res = await legit.query<{ one: number }>('select 1 as one');
    assert.deepEqual(res.rows, [{ one: 1 }]);
  };
  await ping();
  const protocolErrorsBefore = await metric(sidecar.metricsPort, 'chaperone_protocol_errors_total');

  const failures: Failure[] = [];
  const perCategory = new Map<string, number>();
  let fatal08Count = 0;
  let next = 0;
  let completed = 0;
  let pings = 1;
  let crashed: string | undefined;
  const inFlight = new Map<number, Case>();

  const worker = async (): Promise<void> => {
    while (next < cases.length && crashed === undefined) {
      const index = next++;
      const c = cases[index] as Case;
      inFlight.set(index, c);
      perCategory.set(c.category, (perCategory.get(c.category) ?? 0) + 1);
      let outcome: { problem?: string; fatal08: boolean };
      try {
        outcome = await runCase(sidecar, token, c);
      } catch (err) {
        outcome = { problem: `client error: ${(err as Error).message}`, fatal08: false };
      }
      inFlight.delete(index);
      if (outcome.fatal08) fatal08Count += 1;
      if (outcome.problem !== undefined) {
        failures.push({
          index,
          category: c.category,
          sent: Buffer.concat(c.steps.map((s) => s.bytes))
            .subarray(0, 64)
            .toString('hex'),
          problem: outcome.problem,
        });
      }
      if (sidecar.process.exitCode !== null || sidecar.process.signalCode !== null) {
        crashed = `sidecar exited (${String(sidecar.process.exitCode ?? sidecar.process.signalCode)}) around case ${index} (${c.category}); in flight: ${[
          ...inFlight.entries(),
        ]
          .map(([i, f]) => `${i} ${f.category}`)
          .join(
            '; ',
          )}; failures so far: ${JSON.stringify(failures.slice(0, 5))}\n${sidecar.logs().split('\n').slice(-30).join('\n')}`;
        return;
      }
      completed += 1;
      if (completed % LEGIT_EVERY === 0) {
        await ping();
        pings += 1;
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));

  assert.equal(crashed, undefined, crashed);
  assert.equal(completed, cases.length, 'every frame was sent and ended');
  t.diagnostic(
    `${cases.length} frames, ${perCategory.size} categories, ${fatal08Count} ended with FATAL 08P01 or 0A000, ${pings} pings`,
  );
  for (const [name, count] of [...perCategory.entries()].sort()) t.diagnostic(`${count}\t${name}`);
  assert.equal(perCategory.size, CATEGORIES.length, 'every category was exercised');
  assert.deepEqual(
    failures.slice(0, 10),
    [],
    `${failures.length} frames did not end as their category requires (first 10 shown)`,
  );

  // The long-lived session survived everything, and the process still serves new connections.
  assert.equal(legitError, undefined, `legitimate session failed: ${String(legitError)}`);
  await ping();
  const fresh = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    database: 'agent-db',
    password: token,
  });
  await fresh.connect();
  assert.deepEqual((await fresh.query('select 2 as two')).rows, [{ two: 2 }]);
  await fresh.end();
  await legit.end();
  assert.equal(sidecar.process.exitCode, null, 'sidecar process is alive');
  assert.equal(sidecar.process.signalCode, null, 'sidecar process is alive');

  // "Connections ended by a protocol violation": exactly one count per such connection.
  const protocolErrors = (await metric(sidecar.metricsPort, 'chaperone_protocol_errors_total')) - protocolErrorsBefore;
  assert.ok(fatal08Count > 1000, `only ${fatal08Count} connections ended with 08P01`);
  assert.equal(protocolErrors, fatal08Count, 'chaperone_protocol_errors_total grew by one per violating connection');
});

test('hostile bytes: bytes that keep coming after a protocol violation are neither counted nor logged again', async (t) => {
  const sidecar = await startTestSidecar(t);
  const before = await metric(sidecar.metricsPort, 'chaperone_protocol_errors_total');
  const client = await RawClient.connect(sidecar.host, sidecar.port);
  client.write(Buffer.concat([i32(3), Buffer.alloc(4)])); // startup packet length 3
  assert.ok(await client.untilMessage('E', CONNECTION_TIMEOUT_MS), 'the violation is answered');
  // A client that ignores the FATAL and keeps writing, in separate chunks.
  for (let i = 0; i < 5 && client.end === 'open'; i++) {
    client.write(Buffer.alloc(100, 0x51));
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.notEqual(await client.untilClosed(CONNECTION_TIMEOUT_MS), 'open');
  client.destroy();
  const [last] = parseBackend(client.received).messages.slice(-1);
  assert.equal(last === undefined ? '' : errorFields(last.body).code, '08P01');
  // "Connections ended by a protocol violation": one connection, one count, one log line.
  assert.equal((await metric(sidecar.metricsPort, 'chaperone_protocol_errors_total')) - before, 1);
  const violations = sidecar
    .logs()
    .split('\n')
    .filter((l) => l.includes('"msg":"protocol violation"'));
  assert.equal(violations.length, 1, violations.join('\n'));
});
