import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { md5Password, saslPrep, ScramClient, ScramError } from './scram.ts';

// RFC 7677 section 3 test vector.
const NONCE = 'rOprNGfwEbeRWgbNEkqO';
const SERVER_FIRST = 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096';
const CLIENT_FINAL =
  'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=';
const SERVER_FINAL = 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=';

function rfcClient(): ScramClient {
  return new ScramClient({ username: 'user', password: 'pencil', nonce: NONCE });
}

describe('ScramClient', () => {
  it('reproduces the RFC 7677 exchange', () => {
    const c = rfcClient();
    assert.equal(c.mechanism, 'SCRAM-SHA-256');
    assert.equal(c.clientFirstMessage(), 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO');
    assert.equal(c.clientFinalMessage(Buffer.from(SERVER_FIRST)), CLIENT_FINAL);
    assert.equal(c.isVerified, false);
    c.verifyServerFinal(SERVER_FINAL);
    assert.equal(c.isVerified, true);
  });

  it('a second login with the same salt (derived keys reused) still answers its own nonces, and another password is not mistaken for it', () => {
    for (let i = 0; i < 3; i++) {
      const c = rfcClient();
      c.clientFirstMessage();
      assert.equal(c.clientFinalMessage(SERVER_FIRST), CLIENT_FINAL, `login ${String(i + 1)}`);
      c.verifyServerFinal(SERVER_FINAL);
    }
    // Same salt, iterations and nonces, another password: another proof, and the RFC server signature fails.
    const other = new ScramClient({ username: 'user', password: 'pencil2', nonce: NONCE });
    other.clientFirstMessage();
    assert.notEqual(other.clientFinalMessage(SERVER_FIRST), CLIENT_FINAL);
    assert.throws(() => {
      other.verifyServerFinal(SERVER_FINAL);
    }, /server signature does not match/);
    // A different client nonce with the cached keys: the proof changes with the nonce (it is not replayed).
    const fresh = new ScramClient({ username: 'user', password: 'pencil', nonce: 'anotherNonce' });
    fresh.clientFirstMessage();
    const final = fresh.clientFinalMessage(SERVER_FIRST.replace(NONCE, 'anotherNonce'));
    assert.notEqual(final.slice(final.indexOf(',p=')), CLIENT_FINAL.slice(CLIENT_FINAL.indexOf(',p=')));
  });

  it('sends an empty user name by default, as libpq does', () => {
    const c = new ScramClient({ password: 'x', nonce: 'abc' });
    assert.equal(c.clientFirstMessage(), 'n,,n=,r=abc');
    assert.match(new ScramClient({ password: 'x' }).clientFirstMessage(), /^n,,n=,r=[A-Za-z0-9+/=]{24}$/);
  });

  it('rejects a wrong server signature, a server error, and a foreign nonce', () => {
    const c = rfcClient();
    c.clientFirstMessage();
    c.clientFinalMessage(SERVER_FIRST);
    assert.throws(
      () => {
        c.verifyServerFinal('v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=');
      },
      (e: unknown) => e instanceof ScramError && e.reason === 'server-signature',
    );
    assert.equal(c.isVerified, false);
    assert.throws(
      () => {
        c.verifyServerFinal('e=invalid-proof');
      },
      (e: unknown) => e instanceof ScramError && e.reason === 'server-error',
    );
    const d = rfcClient();
    d.clientFirstMessage();
    assert.throws(
      () => d.clientFinalMessage('r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096'),
      (e: unknown) => e instanceof ScramError && e.reason === 'nonce-mismatch',
    );
    assert.throws(() => d.clientFinalMessage(`r=${NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`), /does not extend/);
    assert.throws(() => d.clientFinalMessage(`r=${NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1`), /iteration count 1/);
    assert.throws(() => d.clientFinalMessage(`r=${NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==`), /lacks r, s or i/);
    assert.throws(() => d.clientFinalMessage(`m=ext,r=${NONCE}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`), /extension/);
    assert.throws(() => d.clientFinalMessage('garbage'), /malformed/);
    assert.throws(() => rfcClient().clientFinalMessage(SERVER_FIRST), /out of order/);
    assert.throws(() => {
      rfcClient().verifyServerFinal(SERVER_FINAL);
    }, /before clientFinalMessage/);
  });

  it('never puts the password in error messages', () => {
    const c = new ScramClient({ password: 'hunter2-very-secret', nonce: 'n' });
    c.clientFirstMessage();
    try {
      c.clientFinalMessage('r=nX,s=!!,i=4096');
      assert.fail('should throw');
    } catch (e) {
      assert.ok(e instanceof ScramError);
      assert.doesNotMatch(e.message, /hunter2/);
    }
  });
});

describe('saslPrep', () => {
  it('leaves ASCII alone and maps spaces, soft hyphens and compatibility characters', () => {
    assert.equal(saslPrep('pencil'), 'pencil');
    assert.equal(saslPrep('I\u00ADX'), 'IX');
    assert.equal(saslPrep('a\u00A0b'), 'a b');
    assert.equal(saslPrep('\u2168'), 'IX');
    assert.equal(saslPrep('\u00AA'), 'a');
    // Prohibited output (a control character): the password is used unchanged, like libpq.
    assert.equal(saslPrep('\u00E9\u0007'), '\u00E9\u0007');
  });
});

describe('md5Password', () => {
  it('matches node-postgres for the same inputs', async () => {
    // pg ships no types for its internals; this is its own MD5 helper, an independent implementation.
    const { postgresMd5PasswordHash } = createRequire(import.meta.url)('pg/lib/crypto/utils.js') as {
      postgresMd5PasswordHash: (user: string, password: string, salt: Buffer) => Promise<string>;
    };
    const salt = Buffer.from([0x9f, 0x01, 0x7e, 0x22]);
    const expected = await postgresMd5PasswordHash('alice', 'correct horse', salt);
    assert.equal(md5Password('alice', 'correct horse', salt), expected);
    assert.match(expected, /^md5[0-9a-f]{32}$/);
  });

  it('matches a hand-computed value', () => {
    // Computed with Python's hashlib: md5(md5(b'postgrespostgres').hexdigest() + b'abcd').
    assert.equal(md5Password('postgres', 'postgres', Buffer.from('abcd')), 'md50800ba833a175e428fc0110c29998942');
  });
});
