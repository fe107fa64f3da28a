// Looking for secrets where they must not be: the forms in which a credential could plausibly leak (plain,
// base64, base64url, hex, and for the upstream PostgreSQL role its md5 and SCRAM-SHA-256 material), and an
// assertion that none of them occurs in a haystack (client bytes, logs, records, objects, metrics).
import assert from 'node:assert/strict';
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { postgresEnv, superuserSql } from './env.ts';

export interface Secret {
  readonly label: string;
  /** Text forms searched for (hex ones case-insensitively). */
  readonly forms: readonly string[];
  /** Raw bytes also searched for in binary haystacks. */
  readonly raw?: Buffer;
}

/** The forms in which a secret could plausibly leak: plain, base64, base64url, hex. */
export function encodings(secret: Buffer | string): string[] {
  const b = Buffer.isBuffer(secret) ? secret : Buffer.from(secret, 'utf8');
  const forms = [
    b.toString('base64'),
    b.toString('base64').replace(/=+$/, ''),
    b.toString('base64url'),
    b.toString('hex'),
  ];
  if (!Buffer.isBuffer(secret)) forms.unshift(secret);
  return [...new Set(forms)];
}

/** A key's bytes in the forms of `encodings`, and as raw bytes read as latin1 (for text read as latin1). */
export function keyEncodings(key: Buffer): string[] {
  return [...encodings(key), key.toString('latin1')];
}

/** Every regular file under `path`, with its content (kubelet-style `..data` links skipped). */
export function filesUnder(path: string): Buffer[] {
  if (!statSync(path).isDirectory()) return [readFileSync(path)];
  return readdirSync(path)
    .filter((e) => !e.startsWith('..'))
    .flatMap((e) => filesUnder(join(path, e)));
}

/** A secret string searched for in every encoding. */
export function secretOf(label: string, value: string): Secret {
  return { label, forms: encodings(value) };
}

/** SCRAM-SHA-256 keys of a role from its stored verifier (read as superuser over the Unix socket). */
export function scramKeys(
  user = postgresEnv().user,
  password = postgresEnv().password,
): { label: string; value: Buffer }[] {
  const verifier = superuserSql(`select rolpassword from pg_authid where rolname = '${user}'`).trim();
  const m = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$/.exec(verifier);
  assert.ok(m, `role ${user} has a SCRAM verifier (got ${verifier.slice(0, 14)}…)`);
  const [, iterations, salt, storedKey, serverKey] = m;
  const salted = pbkdf2Sync(password, Buffer.from(salt ?? '', 'base64'), Number(iterations), 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  return [
    { label: `${user} SCRAM SaltedPassword`, value: salted },
    { label: `${user} SCRAM ClientKey`, value: clientKey },
    { label: `${user} SCRAM StoredKey`, value: Buffer.from(storedKey ?? '', 'base64') },
    { label: `${user} SCRAM ServerKey`, value: Buffer.from(serverKey ?? '', 'base64') },
  ];
}

/**
 * Every credential of a PostgreSQL role of the harness server: its password in every encoding,
 * md5(password + user) and the SCRAM keys derived from the password.
 */
export function credentialsOf(user: string, password: string): Secret[] {
  const md5 = `md5${createHash('md5')
    .update(password + user)
    .digest('hex')}`;
  return [
    secretOf(`${user}'s password`, password),
    { label: `md5(${user}'s password + user)`, forms: [md5, md5.slice(3)] },
    ...scramKeys(user, password).map((k) => ({ label: k.label, forms: encodings(k.value), raw: k.value })),
  ];
}

/** Every credential of the upstream role the harness sidecars log in as. */
export function upstreamCredentials(): Secret[] {
  const env = postgresEnv();
  return credentialsOf(env.user, env.password);
}

/** Which of `secrets` occur in `haystack`: `label (as form…)` per finding; empty when none. */
export function findSecrets(haystack: Buffer | string, secrets: readonly Secret[]): string[] {
  const text = Buffer.isBuffer(haystack) ? haystack.toString('latin1') : haystack;
  const lower = text.toLowerCase();
  const found: string[] = [];
  for (const s of secrets) {
    for (const form of s.forms) {
      if (form === '') continue;
      // Hex is checked case-insensitively; the other forms are case-sensitive.
      const hit = /^[0-9a-f]+$/.test(form) ? lower.includes(form) : text.includes(form);
      if (hit) found.push(`${s.label} (as ${form.slice(0, 12)}…)`);
    }
    if (Buffer.isBuffer(haystack) && s.raw !== undefined && haystack.includes(s.raw)) found.push(`raw ${s.label}`);
  }
  return found;
}

export function assertAbsent(haystack: Buffer | string, secrets: readonly Secret[], where: string): void {
  const found = findSecrets(haystack, secrets);
  assert.deepEqual(found, [], `${where} contains secrets`);
}
