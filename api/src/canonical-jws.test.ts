import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify } from 'node:crypto';
import { canonicalCompactJws, ecdsaHighS, lowSEcdsa } from './canonical-jws.ts';

/** Curve orders written out here (SEC 2), not taken from the module under test. */
const ORDERS = {
  ES256: {
    curve: 'P-256',
    hash: 'sha256',
    size: 32,
    n: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n,
  },
  ES384: {
    curve: 'P-384',
    hash: 'sha384',
    size: 48,
    n: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
  },
  ES512: {
    curve: 'P-521',
    hash: 'sha512',
    size: 66,
    n: 0x1fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409n,
  },
} as const;

test('an ECDSA signature and its twin (r, n − s) both verify; lowSEcdsa picks the low one, ecdsaHighS spots the other', () => {
  for (const [alg, c] of Object.entries(ORDERS)) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: c.curve });
    let sawHigh = false;
    let sawLow = false;
    for (let i = 0; i < 24; i++) {
      const input = `${Buffer.from(JSON.stringify({ alg })).toString('base64url')}.${Buffer.from(String(i)).toString('base64url')}`;
      const raw = cryptoSign(c.hash, Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
      const s = BigInt(`0x${raw.subarray(c.size).toString('hex')}`);
      const twin = Buffer.concat([
        raw.subarray(0, c.size),
        Buffer.from((c.n - s).toString(16).padStart(c.size * 2, '0'), 'hex'),
      ]);
      const verifies = (sig: Buffer) =>
        cryptoVerify(c.hash, Buffer.from(input), { key: publicKey, dsaEncoding: 'ieee-p1363' }, sig);
      assert.ok(verifies(raw) && verifies(twin), `${alg}: both twins verify (the malleability this guards against)`);
      const token = `${input}.${raw.toString('base64url')}`;
      const twinToken = `${input}.${twin.toString('base64url')}`;
      const high = s > c.n / 2n;
      if (high) sawHigh = true;
      else sawLow = true;
      assert.equal(ecdsaHighS(token, alg), high);
      assert.equal(ecdsaHighS(twinToken, alg), !high);
      const low = lowSEcdsa(token, alg);
      assert.equal(low, high ? twinToken : token);
      assert.equal(lowSEcdsa(twinToken, alg), low, 'both twins map to one text');
      assert.ok(canonicalCompactJws(low) && !ecdsaHighS(low, alg));
    }
    assert.ok(sawHigh && sawLow, `${alg}: the signer emits both halves`);
  }
});

test('other algorithms and signatures of the wrong length are left alone', () => {
  const token = `e30.e30.${Buffer.alloc(64, 0xff).toString('base64url')}`;
  assert.equal(ecdsaHighS(token, 'RS256'), false);
  assert.equal(lowSEcdsa(token, 'EdDSA'), token);
  const der = `e30.e30.${Buffer.alloc(71, 0xff).toString('base64url')}`;
  assert.equal(ecdsaHighS(der, 'ES256'), false, 'not r || s: jose refuses it by its signature');
  assert.equal(lowSEcdsa(der, 'ES256'), der);
});

test('the canonical compact text: padding, whitespace, other alphabets, a fourth part are not it', () => {
  const good = `e30.e30.${Buffer.from('signature!').toString('base64url')}`;
  assert.ok(canonicalCompactJws(good));
  for (const bad of [
    `${good}=`,
    `${good} `,
    `${good}\n`,
    'e30.e30',
    `${good}.x`,
    good.replace(/.$/, '+'),
    `e30.e30.${Buffer.from('signature!').toString('base64url').slice(0, -1)}R`,
  ]) {
    assert.equal(canonicalCompactJws(bad), false, JSON.stringify(bad));
  }
});
