import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CredentialScrubber, credentialSpellings, SCRUBBED, scrubText } from './credential-scrub.ts';

async function run(secret: string, chunks: readonly Buffer[]): Promise<{ out: string; found: number }> {
  const scrubber = new CredentialScrubber(secret);
  const parts: Buffer[] = [];
  scrubber.on('data', (c: Buffer) => parts.push(c));
  const ended = new Promise<void>((resolve) => scrubber.once('end', resolve));
  for (const c of chunks) scrubber.write(c);
  scrubber.end();
  await ended;
  return { out: Buffer.concat(parts).toString(), found: scrubber.found };
}

test('the credential is replaced wherever the response is cut', async () => {
  const secret = 'tok-3f9a-secret';
  const text = `{"headers":{"authorization":"Bearer ${secret}","x":"${secret}${secret}"}} tail`;
  const expected = text.split(secret).join(SCRUBBED);
  const bytes = Buffer.from(text);
  for (let a = 0; a <= bytes.length; a++) {
    for (const b of [a, Math.min(bytes.length, a + 3), Math.min(bytes.length, a + 9)]) {
      const { out, found } = await run(secret, [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)]);
      assert.equal(out, expected, `cut at ${String(a)}, ${String(b)}`);
      assert.equal(found, 3);
    }
  }
});

test('text without the credential passes unchanged; header values are scrubbed too', async () => {
  assert.equal((await run('s3cr3t', [Buffer.from('nothing here s3cr')])).out, 'nothing here s3cr');
  assert.equal(scrubText('Bearer s3cr3t', 's3cr3t'), `Bearer ${SCRUBBED}`);
  assert.equal(scrubText('x', ''), 'x');
});

test('a stream without the credential is passed on at once, held back only where it could begin', async () => {
  const scrubber = new CredentialScrubber('secret-value');
  const out: string[] = [];
  scrubber.on('data', (c: Buffer) => out.push(c.toString()));
  scrubber.write(Buffer.from('first part\n'));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(out, ['first part\n']);
  scrubber.write(Buffer.from('then secr'));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(out, ['first part\n', 'then ']);
  scrubber.end(Buffer.from('et-value!'));
  await new Promise((r) => scrubber.once('end', r));
  assert.equal(out.join(''), `first part\nthen ${SCRUBBED}!`);
});

test('an echo in another spelling is scrubbed too: JSON-escaped, percent-encoded, HTML', async () => {
  const secret = 'k3y/with+chars=&"';
  const spelled = [
    JSON.stringify(secret).slice(1, -1),
    JSON.stringify(secret).slice(1, -1).replaceAll('/', '\\/'),
    encodeURIComponent(secret),
    encodeURIComponent(secret).replace(/%[0-9A-F]{2}/g, (e) => e.toLowerCase()),
    secret.replace(/[&<>"']/g, (c) => `&#${String(c.charCodeAt(0))};`),
    secret.replaceAll('&', '&amp;').replaceAll('"', '&quot;'),
  ];
  assert.equal(new Set(spelled).size, spelled.length, 'six different texts');
  for (const spelling of spelled) {
    const wrap = (inner: string) => `{"echo":"${inner}"} and more`;
    const bytes = Buffer.from(wrap(spelling));
    for (let a = 0; a <= bytes.length; a++) {
      const { out, found } = await run(secret, [bytes.subarray(0, a), bytes.subarray(a)]);
      assert.equal(out, wrap(SCRUBBED), `${spelling} cut at ${String(a)}`);
      assert.equal(found, 1);
    }
    assert.equal(scrubText(`Bearer ${spelling}`, secret), `Bearer ${SCRUBBED}`);
  }
  assert.deepEqual(credentialSpellings(''), []);
});
