// The evidence bundle: one self-contained JSON file an auditor can verify offline. It holds the Session
// objects of a time window (every part, records as written), the signed heads and the public keys that
// sign them, the verification report made at export, and a NIST SP 800-53 map saying where each control
// is evidenced. The file is written in RFC 8785 canonical form, so its sha256 is stable (docs/audit.md).
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { API_VERSION, GENESIS_HASH, type AuditRecord, type ObjectMeta, type Session } from '@chaperone/api';
import type { JWK } from 'jose';
import { podHashKey, restrictReport, verifyTrail, type TrailReport, type VerifyTrailOptions } from './verify-trail.ts';

export const EVIDENCE_KIND = 'chaperone.dev/evidence';
export const EVIDENCE_VERSION = 1;

export interface EvidenceKey {
  readonly kid: string;
  readonly jwk: JWK;
  /** The operator's certificate for the key, when it had one (verified against the authority keys). */
  readonly certificate?: string;
  /** namespace/name of the Session objects whose heads this key signs. */
  readonly objects: readonly string[];
}

export interface EvidenceHead {
  readonly object: string;
  readonly keyId: string;
  readonly seq: number;
  readonly hash: string;
  /** The compact JWS exactly as stored. */
  readonly signature: string;
}

export interface NistEvidence {
  readonly control: string;
  readonly title: string;
  /** Where in this file (and in the product) the control is evidenced. */
  readonly evidence: readonly string[];
}

export interface EvidenceBundle {
  readonly kind: typeof EVIDENCE_KIND;
  readonly version: typeof EVIDENCE_VERSION;
  readonly generatedAt: string;
  readonly source: { readonly server?: string; readonly context?: string; readonly user?: string };
  readonly scope: {
    readonly namespaces: readonly string[] | 'all';
    readonly from?: string;
    readonly to?: string;
  };
  /** Session objects (every part of every session that overlaps the window), metadata trimmed. */
  readonly sessions: readonly Session[];
  readonly heads: readonly EvidenceHead[];
  readonly keys: readonly EvidenceKey[];
  /** Hashes of records in sessions outside the window that sessions inside it link to (namespace/pod/hash). */
  readonly anchors: readonly string[];
  /** Retention (ms) per namespace/resource at export time. */
  readonly retention: Readonly<Record<string, number>>;
  /** The operator's audit authority at export: its public keys and the checkpoints read (oldest first). */
  readonly authority?: { readonly keys: readonly JWK[]; readonly checkpoints: readonly string[] };
  readonly report: TrailReport;
  readonly nist: readonly NistEvidence[];
}

export interface ExportOptions {
  readonly from?: Date;
  readonly to?: Date;
  readonly namespaces: readonly string[] | 'all';
  readonly source: EvidenceBundle['source'];
  readonly retention: ReadonlyMap<string, number>;
  readonly trustedKeys?: VerifyTrailOptions['trustedKeys'];
  readonly authorityKeys?: VerifyTrailOptions['authorityKeys'];
  readonly checkpoints?: readonly string[];
  /** An uncertified signer key is an error (verify's default) rather than a warning. */
  readonly requireCertified?: boolean;
  readonly now?: Date;
}

const objectName = (s: Session) => `${s.metadata.namespace ?? ''}/${s.metadata.name ?? ''}`;

/** Whether a session (by its parts) overlaps [from, to]. */
function overlaps(parts: readonly Session[], from: Date | undefined, to: Date | undefined, now: Date): boolean {
  const start = Math.min(...parts.map((p) => Date.parse(p.spec.startTime)));
  const ends = parts.map((p) => (p.status?.endTime === undefined ? now.getTime() : Date.parse(p.status.endTime)));
  const end = Math.max(...ends, ...parts.flatMap((p) => p.spec.records.map((r) => Date.parse(r.time))));
  return (to === undefined || start <= to.getTime()) && (from === undefined || end >= from.getTime());
}

function trimMetadata(m: ObjectMeta): ObjectMeta {
  const kept: ObjectMeta = {
    name: m.name,
    namespace: m.namespace,
    uid: m.uid,
    resourceVersion: m.resourceVersion,
    creationTimestamp: m.creationTimestamp,
  };
  if (m.labels !== undefined) kept.labels = m.labels;
  if (m.annotations !== undefined) {
    kept.annotations = Object.fromEntries(
      Object.entries(m.annotations).filter(([k]) => k !== 'kubectl.kubernetes.io/last-applied-configuration'),
    );
  }
  return kept;
}

/**
 * Builds the bundle from every Session in scope: verification runs over all of them (so links to sessions
 * outside the window are checked live), then the sessions overlapping the window are kept.
 */
export async function buildEvidence(all: readonly Session[], options: ExportOptions): Promise<EvidenceBundle> {
  const now = options.now ?? new Date();
  const retentionFor = (ns: string, r: string) => options.retention.get(`${ns}/${r}`);
  const fullReport = await verifyTrail(all, {
    retentionFor,
    trustedKeys: options.trustedKeys,
    authorityKeys: options.authorityKeys,
    checkpoints: options.checkpoints,
    requireCertified: options.requireCertified,
    now,
  });
  // A key's certificate from any part in scope, also one outside the window: the offline check finds the
  // certificate of a key whose certified parts were left out (verify-trail.ts, checkCertificate).
  const certificateOf = new Map<string, string>();
  for (const s of all) {
    const signer = s.spec.signer;
    if (signer?.certificate !== undefined && !certificateOf.has(signer.keyId))
      certificateOf.set(signer.keyId, signer.certificate);
  }

  const bySession = new Map<string, Session[]>();
  for (const s of all) bySession.set(s.spec.sessionId, [...(bySession.get(s.spec.sessionId) ?? []), s]);
  const kept = new Set<string>();
  for (const [id, parts] of bySession) if (overlaps(parts, options.from, options.to, now)) kept.add(id);
  const sessions = all
    .filter((s) => kept.has(s.spec.sessionId))
    .map((s): Session => ({
      apiVersion: API_VERSION,
      kind: 'Session',
      metadata: trimMetadata(s.metadata),
      spec: s.spec,
      ...(s.status === undefined ? {} : { status: s.status }),
    }))
    .sort((a, b) => objectName(a).localeCompare(objectName(b)));

  const keptHashes = new Set(sessions.flatMap((s) => s.spec.records.map((r) => podHashKey(s, r.hash))));
  const allHashes = new Set(all.flatMap((s) => s.spec.records.map((r) => podHashKey(s, r.hash))));
  const anchors = sessions
    .filter((s) => s.spec.part === 0 && s.spec.records[0]?.seq === 1 && s.spec.records[0].prevHash !== GENESIS_HASH)
    .map((s) => podHashKey(s, s.spec.records[0]?.prevHash ?? ''))
    .filter((k) => !keptHashes.has(k) && allHashes.has(k));

  const report: TrailReport = restrictReport(fullReport, kept);
  const heads: EvidenceHead[] = [];
  const keys = new Map<string, { jwk: JWK; certificate?: string; objects: string[] }>();
  for (const s of sessions) {
    if (s.spec.head !== undefined) {
      heads.push({
        object: objectName(s),
        keyId: s.spec.head.keyId,
        seq: s.spec.head.seq,
        hash: s.spec.head.hash,
        signature: s.spec.head.signature,
      });
    }
    const signer = s.spec.signer;
    if (signer !== undefined) {
      const certificate = signer.certificate ?? certificateOf.get(signer.keyId);
      const entry = keys.get(signer.keyId) ?? {
        jwk: JSON.parse(signer.publicKey) as JWK,
        ...(certificate === undefined ? {} : { certificate }),
        objects: [],
      };
      entry.objects.push(objectName(s));
      keys.set(signer.keyId, entry);
    }
  }
  const retention: Record<string, number> = {};
  for (const [k, v] of options.retention) retention[k] = v;
  return {
    kind: EVIDENCE_KIND,
    version: EVIDENCE_VERSION,
    generatedAt: now.toISOString(),
    source: options.source,
    scope: {
      namespaces: options.namespaces,
      ...(options.from === undefined ? {} : { from: options.from.toISOString() }),
      ...(options.to === undefined ? {} : { to: options.to.toISOString() }),
    },
    sessions,
    heads,
    keys: [...keys].map(([kid, k]) => ({ kid, ...k })),
    anchors,
    retention,
    ...(options.authorityKeys === undefined
      ? {}
      : { authority: { keys: options.authorityKeys, checkpoints: options.checkpoints ?? [] } }),
    report,
    nist: nistMap(sessions.flatMap((s) => s.spec.records)),
  };
}

/** The file's bytes: RFC 8785 canonical JSON plus a newline. */
export function serializeEvidence(bundle: EvidenceBundle): string {
  const text = canonicalize(bundle);
  if (text === undefined) throw new Error('evidence cannot be canonicalized');
  return `${text}\n`;
}

export function evidenceDigest(text: string): string {
  return `sha256:${createHash('sha256').update(text).digest('hex')}`;
}

export interface EvidenceCheck {
  /** The report recomputed from the file's own content. */
  readonly report: TrailReport;
  /** Disagreements between the file's parts (embedded report, heads, keys) and its sessions. */
  readonly inconsistencies: readonly string[];
  readonly ok: boolean;
}

/** Verifies an evidence file offline: recomputes everything from the sessions and keys it carries. */
export async function verifyEvidence(
  text: string,
  options: {
    trustedKeys?: VerifyTrailOptions['trustedKeys'];
    /** Pinned authority keys; default the ones the file carries. */
    authorityKeys?: VerifyTrailOptions['authorityKeys'];
    /** An uncertified signer key is an error (the auditor's choice, whatever the export accepted). */
    requireCertified?: boolean;
    now?: Date;
  } = {},
): Promise<EvidenceCheck> {
  const bundle = JSON.parse(text) as Partial<EvidenceBundle>;
  if (bundle.kind !== EVIDENCE_KIND || bundle.version !== EVIDENCE_VERSION) {
    throw new Error(`not a Chaperone evidence file (kind ${String(bundle.kind)}, version ${String(bundle.version)})`);
  }
  const sessions = bundle.sessions ?? [];
  const retention = bundle.retention ?? {};
  // Retention is judged as of export: a session that was present then cannot have expired before it.
  const exportedAt = bundle.generatedAt === undefined ? undefined : new Date(bundle.generatedAt);
  const inFile = new Set(sessions.map((s) => s.spec.sessionId));
  const authorityKeys = options.authorityKeys ?? bundle.authority?.keys;
  const verifyAs = (requireCertified: boolean) =>
    verifyTrail(sessions, {
      trustedKeys: options.trustedKeys,
      authorityKeys,
      checkpoints: bundle.authority?.checkpoints,
      // The export checked the checkpoints against every Session; offline, only the sessions in the file.
      checkpointScope: (e) => inFile.has(e.sessionId),
      retentionFor: (ns, r) => retention[`${ns}/${r}`],
      externalHashes: new Set(bundle.anchors ?? []),
      // Certificates of the file's keys, for parts whose certified siblings fell outside the window.
      certificates: (bundle.keys ?? []).flatMap((k) => k.certificate ?? []),
      requireCertified,
      now: options.now ?? exportedAt,
    });
  const requireCertified = options.requireCertified === true;
  const report = await verifyAs(requireCertified);
  // The embedded report is compared with one made the way the export made it (files from before the
  // export refused uncertified keys accepted them); the verdict is the auditor's own choice above.
  const exportRefused = (bundle.report?.uncertifiedKeys ?? 'accepted') === 'refused';
  const asExported =
    report.keyTrust !== 'certified' || exportRefused === requireCertified ? report : await verifyAs(exportRefused);
  const inconsistencies: string[] = [];
  const byObject = new Map(sessions.map((s) => [objectName(s), s]));
  for (const h of bundle.heads ?? []) {
    const s = byObject.get(h.object);
    if (s?.spec.head?.signature !== h.signature) inconsistencies.push(`head of ${h.object} differs from its Session`);
  }
  for (const s of sessions) {
    if (s.spec.head !== undefined && !(bundle.heads ?? []).some((h) => h.object === objectName(s))) {
      inconsistencies.push(`head of ${objectName(s)} is missing from heads`);
    }
  }
  for (const k of bundle.keys ?? []) {
    for (const o of k.objects) {
      const signer = byObject.get(o)?.spec.signer;
      if (signer === undefined || signer.keyId !== k.kid || !sameKey(JSON.parse(signer.publicKey) as JWK, k.jwk)) {
        inconsistencies.push(`key ${k.kid} listed for ${o} differs from that Session's signer`);
      }
    }
  }
  const embedded = bundle.report;
  if (embedded === undefined) inconsistencies.push('no embedded verification report');
  else {
    for (const s of embedded.sessions) {
      for (const part of s.parts) {
        if (!byObject.has(`${s.namespace}/${part}`)) {
          inconsistencies.push(`session ${s.namespace}/${part} in the embedded report is missing from the file`);
        }
      }
    }
    if (embedded.ok !== asExported.ok || embedded.summary.errors !== asExported.summary.errors) {
      inconsistencies.push(
        `embedded report says ${embedded.ok ? 'verified' : 'not verified'} with ${embedded.summary.errors} error(s); recomputed: ${asExported.summary.errors} error(s)`,
      );
    }
    if (embedded.summary.records !== report.summary.records) {
      inconsistencies.push(
        `embedded report counted ${embedded.summary.records} record(s); the file holds ${report.summary.records}`,
      );
    }
  }
  return { report, inconsistencies, ok: report.ok && inconsistencies.length === 0 };
}

function sameKey(a: JWK, b: JWK): boolean {
  return a.kty === b.kty && a.crv === b.crv && a.x === b.x;
}

/** Where each NIST SP 800-53 control is evidenced, with counts from the exported records. */
export function nistMap(records: readonly AuditRecord[]): NistEvidence[] {
  const count = (pred: (r: AuditRecord) => boolean) => records.filter(pred).length;
  const byType = (t: AuditRecord['type']) => count((r) => r.type === t);
  const decisions = (d: 'allow' | 'deny' | 'approve') => count((r) => r.decision?.result === d);
  const chained = count((r) => (r.identity?.chain?.length ?? 0) > 0);
  return [
    {
      control: 'AU-2',
      title: 'Event logging',
      evidence: [
        `sessions[].spec.records[].type: ${byType('session.start')} session.start, ${byType('command.decision')} command.decision, ${byType('command.outcome')} command.outcome, ${byType('approval.requested')} approval.requested, ${byType('approval.decided')} approval.decided, ${byType('auth.failure')} auth.failure, ${byType('session.end')} session.end`,
        'docs/audit.md "Record format" lists the event types the sidecar logs for every command',
      ],
    },
    {
      control: 'AU-3',
      title: 'Content of audit records',
      evidence: [
        'who: sessions[].spec.identity and records[type=session.start].identity (subject, issuer, delegation chain)',
        'what: records[].command (kind, text, parameters, statementKinds, relations); where: sessions[].spec.resource and spec.pod',
        'when: records[].time (UTC, microseconds); source: records[type=session.start].source; outcome: records[].decision and records[].outcome',
      ],
    },
    {
      control: 'AU-5',
      title: 'Response to audit logging process failures',
      evidence: [
        `records[type=audit.gap]: ${byType('audit.gap')} gap record(s) (holes recorded under FailOpen; FailClosed denies commands instead)`,
        'ProtectedResource spec.audit.failureMode (default FailClosed); docs/audit.md "Failure modes"',
      ],
    },
    {
      control: 'AU-8',
      title: 'Time stamps',
      evidence: [
        'records[].time: UTC with microsecond precision, fixed format (CRD pattern), covered by the record hash',
        'sessions[].spec.startTime, status.endTime; heads signedAt (inside each JWS payload)',
      ],
    },
    {
      control: 'AU-9',
      title: 'Protection of audit information (incl. AU-9(3) cryptographic protection)',
      evidence: [
        'records[].hash and prevHash: SHA-256 hash chain over the RFC 8785 canonical form; report (recomputed by `kubectl chaperone evidence verify`)',
        'heads[]: Ed25519 JWS over the chain head per Session object; keys[]: the public keys',
        "config/admission/session-protection.yaml: only the pod's own sidecar writes its Sessions, only the retention controller deletes them; CRD CEL rules make records append-only",
      ],
    },
    {
      control: 'AU-10',
      title: 'Non-repudiation',
      evidence: [
        "heads[].signature: each chain head is signed with the writing sidecar's own key (keys[]), binding every record up to heads[].seq",
        `records[type=approval.decided]: ${byType('approval.decided')}; approver identity is the API server's authenticated user (config/admission/approval-decisions.yaml)`,
      ],
    },
    {
      control: 'AU-12',
      title: 'Audit record generation',
      evidence: [
        `${records.length} record(s) generated by the sidecar in the data path of every session in scope; sessions[] names the pod and resource`,
        'report.summary: records and sessions verified complete (no seq gaps, no missing parts or sessions)',
      ],
    },
    {
      control: 'AC-3',
      title: 'Access enforcement',
      evidence: [
        `records[type=command.decision].decision: ${decisions('allow')} allow, ${decisions('deny')} deny, ${decisions('approve')} held for approval; decision.policy, rule and bundleDigest name the enforcing policy (format 3: bundleDigest on a policy's first decision in a session and after a reload, docs/audit.md)`,
        `records[type=command.outcome].approval: ${count((r) => r.type === 'command.outcome' && r.approval !== undefined)} command(s) ran under an approval, each naming its ApprovalRequest and the bindingHash of the exact statement, parameters, session and requester chain it was bound to (docs/approvals.md)`,
      ],
    },
    {
      control: 'AC-6',
      title: 'Least privilege',
      evidence: [
        'records[].decision.policy/rule: each command allowed only by a named rule; default-deny policies show as deny records',
        'records[].outcome.status=denied and masked parameters (records[].command.parameters) show privilege limits applied',
      ],
    },
    {
      control: 'IA-2',
      title: 'Identification and authentication (organizational users)',
      evidence: [
        'sessions[].spec.identity.subject/issuer: verified token subject; identity.tokenHash ties the session to the token presented',
        `records[type=auth.failure]: ${byType('auth.failure')} rejected authentication attempt(s)`,
      ],
    },
    {
      control: 'IA-4',
      title: 'Identifier management',
      evidence: [
        'sessions[].spec.identity.subject (unique service-account or delegated subject), identity.kind, sessions[].spec.pod (name, uid)',
      ],
    },
    {
      control: 'IA-9',
      title: 'Service identification and authentication',
      evidence: [
        `sessions[].spec.identity.chain: ${chained} record(s) carry a delegation chain (RFC 8693 act claims, nearest first)`,
        'sessions[].spec.pod.uid and the pod-bound service account of the sidecar (config/admission/session-protection.yaml) identify the writing service',
      ],
    },
    {
      control: 'SC-7',
      title: 'Boundary protection',
      evidence: [
        'sessions[].spec.resource: every command crossed the sidecar on its way to the named ProtectedResource; records[type=session.start].source gives the client side of the boundary',
      ],
    },
  ];
}
