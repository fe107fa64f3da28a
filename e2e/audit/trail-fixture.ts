// Test fixture: Session objects built the way the sidecar builds them — real record hashing (hashRecord),
// real Ed25519 head signatures (signChainHead) — so verification is tested against genuine trails, then
// tampered with the way an attacker would.
import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import * as k8s from '@kubernetes/client-node';
import {
  API_VERSION,
  AUDIT_RECORD_VERSION,
  GENESIS_HASH,
  GROUP,
  VERSION,
  hashRecord,
  signChainHead,
  type AuditRecord,
  type Identity,
  type Session,
  type UnhashedRecord,
} from '@chaperone/api';

export interface TestSigner {
  readonly kid: string;
  readonly privateJwk: JWK & { kid: string };
  readonly publicJwk: JWK & { kid: string };
}

export async function createSigner(kid = `sidecar-${randomUUID().slice(0, 8)}`): Promise<TestSigner> {
  const { privateKey, publicKey } = await generateKeyPair('EdDSA', { extractable: true });
  return {
    kid,
    privateJwk: { ...(await exportJWK(privateKey)), kid },
    publicJwk: { ...(await exportJWK(publicKey)), kid },
  };
}

export interface TrailOptions {
  readonly name: string;
  readonly namespace: string;
  readonly signer: TestSigner;
  readonly pod?: { name: string; uid?: string };
  readonly resource?: string;
  readonly identity?: Identity;
  /** SQL texts; each becomes a decision and an outcome record. */
  readonly commands?: readonly { text: string; decision?: 'allow' | 'deny' | 'approve' }[];
  /** Records per part (the writer's SESSION_MAX_RECORDS in production); default: one part. */
  readonly recordsPerPart?: number;
  /** Hash of the last record of the pod's previous session (per-pod link); default GENESIS_HASH. */
  readonly prevHash?: string;
  /** Start time; records follow one second apart. */
  readonly start?: Date;
  /** Default true: a session.end record and phase Closed. */
  readonly closed?: boolean;
  /** The pod namespace format-3 session.start states; default `namespace` (as a sidecar writes it). */
  readonly statedNamespace?: string;
  /** The operator's certificate for the signer key, written into spec.signer. */
  readonly certificate?: string;
  /**
   * Record format version; default the one the sidecar writes (3: identity and the session on
   * session.start only). 1 puts the identity on every record, as version 1 did; 2 leaves the session out;
   * anything else is written as asked (an unknown version).
   */
  readonly version?: number;
}

const DEFAULT_POD = { name: 'nightly-report-7x2kq' };

export const DEFAULT_IDENTITY: Identity = {
  subject: 'chaperone:agent:report-writer',
  issuer: 'https://chaperone-operator.chaperone-system.svc',
  kind: 'ai-agent',
  chain: [{ subject: 'system:serviceaccount:ci:nightly-report', issuer: 'https://kubernetes.default.svc', kind: 'ci' }],
};

function micros(d: Date, plusSeconds: number): string {
  return `${new Date(d.getTime() + plusSeconds * 1000).toISOString().slice(0, 19)}.000001Z`;
}

/** The records of one session, hash-chained from `prevHash`. */
export function buildRecords(options: TrailOptions, sessionId: string = randomUUID()): AuditRecord[] {
  const start = options.start ?? new Date();
  const identity = options.identity ?? DEFAULT_IDENTITY;
  const v = options.version ?? AUDIT_RECORD_VERSION;
  // Format 3: where the session runs, stated (and hashed) on session.start.
  const statedSession =
    v >= 3
      ? {
          session: {
            sessionId,
            resource: options.resource ?? 'orders-db',
            resourceType: 'postgres' as const,
            namespace: options.statedNamespace ?? options.namespace,
            pod: (options.pod ?? DEFAULT_POD).name,
          },
        }
      : {};
  const contents: Omit<UnhashedRecord, 'v' | 'seq' | 'time' | 'prevHash'>[] = [
    {
      type: 'session.start',
      identity: structuredClone(identity),
      ...statedSession,
      source: { address: '127.0.0.1:50312', user: 'agent', database: 'orders' },
    },
  ];
  (options.commands ?? [{ text: 'select 1' }]).forEach((c, i) => {
    const result = c.decision ?? 'allow';
    const command = { id: i + 1, kind: 'sql' as const, text: c.text, statementKinds: ['select'] };
    contents.push({ type: 'command.decision', command, decision: { result, policy: 'default/orders', rule: 'r1' } });
    contents.push({
      type: 'command.outcome',
      command: { id: i + 1, kind: 'sql' },
      outcome: result === 'deny' ? { status: 'denied' } : { status: 'success', rows: 1, code: 'SELECT 1' },
    });
  });
  if (options.closed !== false) contents.push({ type: 'session.end' });
  let prevHash = options.prevHash ?? GENESIS_HASH;
  return contents.map((c, i) => {
    const content = v === 1 ? { ...c, identity: structuredClone(identity) } : c;
    const unhashed: UnhashedRecord = { v, seq: i + 1, time: micros(start, i), ...content, prevHash };
    const record: AuditRecord = { ...unhashed, hash: hashRecord(unhashed) };
    prevHash = record.hash;
    return record;
  });
}

/** Every part of one session, each with its signer and a head signed over its last record. */
export async function buildTrail(options: TrailOptions): Promise<Session[]> {
  const sessionId = randomUUID();
  const records = buildRecords(options, sessionId);
  const per = options.recordsPerPart ?? records.length;
  const start = options.start ?? new Date();
  const parts: Session[] = [];
  for (let i = 0, part = 0; i < records.length; i += per, part++) {
    const name = part === 0 ? options.name : `${options.name}-${part}`;
    const chunk = records.slice(i, i + per);
    const last = chunk.at(-1)!;
    const isLast = i + per >= records.length;
    const decisions = records.filter((r) => r.type === 'command.decision');
    const upTo = decisions.filter((r) => r.seq <= last.seq);
    parts.push({
      apiVersion: API_VERSION,
      kind: 'Session',
      metadata: { name, namespace: options.namespace },
      spec: {
        sessionId,
        part,
        ...(part === 0 ? {} : { previousPart: parts[part - 1]!.metadata.name }),
        pod: options.pod ?? DEFAULT_POD,
        resource: { name: options.resource ?? 'orders-db', type: 'postgres' },
        identity: structuredClone(options.identity ?? DEFAULT_IDENTITY),
        startTime: `${start.toISOString().slice(0, 19)}Z`,
        records: chunk,
        signer: {
          keyId: options.signer.kid,
          publicKey: JSON.stringify(options.signer.publicJwk),
          ...(options.certificate === undefined ? {} : { certificate: options.certificate }),
        },
        head: await signHead(options.namespace, name, sessionId, last, options.signer),
      },
      status: {
        phase: !isLast ? 'Continued' : options.closed === false ? 'Active' : 'Closed',
        ...(isLast && options.closed !== false ? { endTime: `${last.time.slice(0, 19)}Z` } : {}),
        counters: {
          commands: upTo.length,
          allowed: upTo.filter((r) => r.decision?.result === 'allow').length,
          denied: upTo.filter((r) => r.decision?.result === 'deny').length,
          held: upTo.filter((r) => r.decision?.result === 'approve').length,
          errors: 0,
        },
      },
    });
  }
  return parts;
}

export async function signHead(
  namespace: string,
  name: string,
  sessionId: string,
  last: AuditRecord,
  signer: TestSigner,
): Promise<NonNullable<Session['spec']['head']>> {
  const signature = await signChainHead(
    {
      typ: 'chaperone.dev/chain-head/v1',
      sessionId,
      object: `${namespace}/${name}`,
      seq: last.seq,
      hash: last.hash,
      signedAt: new Date().toISOString(),
    },
    signer.privateJwk,
  );
  return { seq: last.seq, hash: last.hash, signature, keyId: signer.kid };
}

/** Creates the parts in the API server (spec, then status through the status subresource). */
export async function createTrail(kc: k8s.KubeConfig, parts: readonly Session[]): Promise<void> {
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  for (const p of parts) {
    const namespace = p.metadata.namespace ?? 'default';
    const { status, ...body } = p;
    await custom.createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'sessions', body });
    if (status !== undefined) {
      await custom.patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace,
          plural: 'sessions',
          name: p.metadata.name ?? '',
          body: { status },
        },
        k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
      );
    }
  }
}

export const lastHash = (parts: readonly Session[]): string => parts.at(-1)!.spec.records.at(-1)!.hash;
