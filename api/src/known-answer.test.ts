// Known answers computed outside the product (api/testdata/make-known-answer.py: python3 hashlib and json,
// the `cryptography` package for Ed25519) and checked in as data. The record format, the hash chain and
// the signed statements are specified so that any implementation can recompute them (docs/audit.md); these
// vectors hold Chaperone's implementation to an independent one, byte for byte, instead of to itself.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import canonicalize from 'canonicalize';
import type { JWK } from 'jose';
import {
  GENESIS_HASH,
  canonicalRecord,
  canonicalRecordText,
  checkpointDigest,
  hashRecord,
  sealRecord,
  signChainHead,
  signCheckpoint,
  signSignerCertificate,
  verifyChain,
  verifyChainHead,
  verifyCheckpoint,
  verifySignerCertificate,
  type AuditRecord,
  type ChainHead,
  type Checkpoint,
  type SignerCertificate,
  type UnhashedRecord,
} from './index.ts';
import { jcs } from './jcs.ts';

type KeyedJwk = JWK & { kid: string };

interface Vectors {
  readonly jcs: readonly { name: string; input: string; canonical: string }[];
  readonly genesisHash: string;
  readonly records: readonly {
    unhashed: UnhashedRecord;
    canonicalWithoutHash: string;
    hash: string;
    canonical: string;
  }[];
  readonly head: {
    privateJwk: KeyedJwk;
    publicJwk: KeyedJwk;
    payload: ChainHead;
    payloadText: string;
    jws: string;
  };
  readonly authority: {
    privateJwk: KeyedJwk;
    publicJwk: KeyedJwk;
    certificate: SignerCertificate;
    certificateJws: string;
    checkpoint: Checkpoint;
    checkpointJws: string;
    checkpointDigest: string;
  };
}

const VECTORS = JSON.parse(readFileSync(new URL('../testdata/known-answer.json', import.meta.url), 'utf8')) as Vectors;

/** The same compact JWS with one character of its signature changed (still valid base64url). */
function flipSignature(jws: string): string {
  const at = jws.lastIndexOf('.') + 5;
  const c = jws[at] === 'A' ? 'B' : 'A';
  return `${jws.slice(0, at)}${c}${jws.slice(at + 1)}`;
}

describe('known answers: RFC 8785 canonical JSON', () => {
  for (const v of VECTORS.jcs) {
    it(v.name, () => {
      const value: unknown = JSON.parse(v.input);
      assert.equal(jcs(value), v.canonical, 'the fast serialiser');
      assert.equal(canonicalize(value), v.canonical, 'the reference package the chain is specified against');
    });
  }
});

describe('known answers: audit records and the hash chain', () => {
  it('the genesis hash', () => {
    assert.equal(GENESIS_HASH, VECTORS.genesisHash);
  });

  VECTORS.records.forEach((v, i) => {
    it(`record ${String(i + 1)} (${v.unhashed.type}): canonical form and sha256`, () => {
      assert.equal(canonicalRecord(v.unhashed), v.canonicalWithoutHash);
      assert.equal(hashRecord(v.unhashed), v.hash);
      const sealed = sealRecord(structuredClone(v.unhashed));
      assert.equal(sealed.record.hash, v.hash, 'sealRecord hashes what hashRecord hashes');
      assert.equal(sealed.canonical, v.canonical, 'the text written to the spool and JSON lines');
      assert.equal(canonicalRecordText(sealed.record), v.canonical);
    });
  });

  it('the records form one chain from the genesis hash', () => {
    const records = VECTORS.records.map((v): AuditRecord => ({ ...v.unhashed, hash: v.hash }));
    assert.equal(records[0]?.prevHash, GENESIS_HASH);
    assert.deepEqual(verifyChain(records, GENESIS_HASH), []);
    // The product's check fails on the independent chain once one byte of a record differs.
    const edited = structuredClone(records);
    const decision = edited[1];
    assert.ok(decision?.command?.text !== undefined);
    decision.command.text = decision.command.text.replace('orders', 'orderz');
    assert.deepEqual(
      verifyChain(edited, GENESIS_HASH).map((p) => `${p.problem}@${String(p.seq)}`),
      ['hash-mismatch@2'],
    );
  });
});

describe('known answers: Ed25519-signed statements', () => {
  const { head, authority } = VECTORS;

  it('a chain head signed with a fixed key is the same JWS, and it verifies', async () => {
    assert.equal(await signChainHead(head.payload, head.privateJwk), head.jws);
    assert.equal(Buffer.from(head.jws.split('.')[1] ?? '', 'base64url').toString('utf8'), head.payloadText);
    assert.deepEqual(await verifyChainHead(head.jws, [head.publicJwk]), head.payload);
    await assert.rejects(verifyChainHead(flipSignature(head.jws), [head.publicJwk]));
    await assert.rejects(verifyChainHead(head.jws, [{ ...authority.publicJwk, kid: head.publicJwk.kid }]));
  });

  it('the head names the last record of the independent chain', () => {
    const last = VECTORS.records.at(-1);
    assert.equal(head.payload.hash, last?.hash);
    assert.equal(head.payload.seq, last?.unhashed.seq);
  });

  it('a signer certificate and a checkpoint signed with a fixed authority key', async () => {
    assert.equal(await signSignerCertificate(authority.certificate, authority.privateJwk), authority.certificateJws);
    assert.deepEqual(
      await verifySignerCertificate(authority.certificateJws, [authority.publicJwk]),
      authority.certificate,
    );
    await assert.rejects(verifySignerCertificate(flipSignature(authority.certificateJws), [authority.publicJwk]));

    assert.equal(await signCheckpoint(authority.checkpoint, authority.privateJwk), authority.checkpointJws);
    assert.deepEqual(await verifyCheckpoint(authority.checkpointJws, [authority.publicJwk]), authority.checkpoint);
    assert.equal(checkpointDigest(authority.checkpointJws), authority.checkpointDigest);
    await assert.rejects(verifyCheckpoint(flipSignature(authority.checkpointJws), [authority.publicJwk]));
  });

  it('the certificate names the sidecar key by its RFC 7638 thumbprint', () => {
    assert.equal(authority.certificate.keyId, head.publicJwk.kid);
    assert.equal(authority.certificate.x, head.publicJwk.x);
  });
});
