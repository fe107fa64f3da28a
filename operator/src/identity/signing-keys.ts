// The token exchange's signing keys, shared by every operator replica through one Secret, rotated with
// overlap. A new key is published (JWKS endpoint and ConfigMap) `publishDelayMs` before any replica signs
// with it, so verifiers that cached the JWKS meet an unknown kid only after they could have refetched; an
// old key stays published until every token it signed has expired. Rotation and retirement are written
// with optimistic concurrency (resourceVersion), so any replica may do them and two never both win.
// Public keys are also appended to a ConfigMap that keeps every key ever used, so exchange log heads stay
// verifiable after their key is retired (docs/identity.md, Keys).
import { generateKeyPairSync } from 'node:crypto';
import type { CoreV1Api, V1ConfigMap, V1Secret } from '@kubernetes/client-node';
import { calculateJwkThumbprint, createLocalJWKSet, type JWK, type JSONWebKeySet } from 'jose';
import type { Logger } from '../observability/logger.ts';

export const SIGNING_KEYS_SECRET = 'chaperone-token-exchange-keys';
export const PUBLIC_KEYS_CONFIGMAP = 'chaperone-token-exchange-jwks';
const KEYS_FILE = 'keys.json';
export const JWKS_FILE = 'jwks.json';
export const SIGNING_ALGORITHM = 'ES256';

export interface ExchangeSigningKey {
  readonly kid: string;
  /** Epoch ms when the key was created. */
  readonly createdAt: number;
  readonly privateJwk: JWK;
  readonly publicJwk: JWK & { kid: string };
}

interface StoredKey {
  kid: string;
  createdAt: string;
  jwk: JWK;
}

export interface SigningKeyRingOptions {
  readonly core: CoreV1Api;
  readonly namespace: string;
  readonly logger: Logger;
  /** Age at which a new key is added. Default 24 h. */
  readonly rotationPeriodMs?: number;
  /** Time between publishing a key and signing with it. Default 60 s. */
  readonly publishDelayMs?: number;
  /** Longest lifetime of an issued token: a replaced key is kept this long (plus 5 minutes). Default 1 h. */
  readonly maxTokenLifetimeMs?: number;
  /** How often the Secret is re-read (keys another replica added). Default 30 s. */
  readonly refreshIntervalMs?: number;
  readonly now?: () => number;
}

function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown };
  return typeof e.code === 'number' ? e.code : typeof e.statusCode === 'number' ? e.statusCode : undefined;
}

async function newKey(now: number): Promise<StoredKey> {
  const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const kid = await calculateJwkThumbprint({ kty: 'EC', crv: 'P-256', x: jwk.x ?? '', y: jwk.y ?? '' });
  return { kid, createdAt: new Date(now).toISOString(), jwk: { ...jwk, kid, alg: SIGNING_ALGORITHM, use: 'sig' } };
}

function publicOf(stored: StoredKey): JWK & { kid: string } {
  const { kty, crv, x, y } = stored.jwk;
  return { kty, crv, x, y, kid: stored.kid, alg: SIGNING_ALGORITHM, use: 'sig' };
}

function parseStored(secret: V1Secret): StoredKey[] {
  const data = secret.data?.[KEYS_FILE];
  if (data === undefined) throw new Error(`Secret ${SIGNING_KEYS_SECRET} has no ${KEYS_FILE}`);
  const parsed = JSON.parse(Buffer.from(data, 'base64').toString('utf8')) as { keys?: unknown };
  if (!Array.isArray(parsed.keys)) throw new Error(`Secret ${SIGNING_KEYS_SECRET}: ${KEYS_FILE} has no keys array`);
  const keys = (parsed.keys as StoredKey[]).filter(
    (k) =>
      typeof k.kid === 'string' &&
      typeof k.createdAt === 'string' &&
      Number.isFinite(Date.parse(k.createdAt)) &&
      k.jwk.kty === 'EC' &&
      k.jwk.crv === 'P-256' &&
      typeof k.jwk.d === 'string',
  );
  if (keys.length === 0) throw new Error(`Secret ${SIGNING_KEYS_SECRET} holds no usable P-256 key`);
  return keys.sort((a, b) => Date.parse(a.createdAt) - Date.parse(b.createdAt));
}

function encode(keys: readonly StoredKey[]): Record<string, string> {
  return { [KEYS_FILE]: Buffer.from(JSON.stringify({ keys }, null, 2)).toString('base64') };
}

export class SigningKeyRing {
  private readonly options: SigningKeyRingOptions;
  private readonly now: () => number;
  private readonly rotationPeriodMs: number;
  private readonly publishDelayMs: number;
  private readonly retireAfterMs: number;
  private stored: StoredKey[] = [];
  private resourceVersion = '';
  private localSet: ReturnType<typeof createLocalJWKSet> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> = Promise.resolve();

  constructor(options: SigningKeyRingOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.rotationPeriodMs = options.rotationPeriodMs ?? 24 * 3_600_000;
    this.publishDelayMs = options.publishDelayMs ?? 60_000;
    this.retireAfterMs = (options.maxTokenLifetimeMs ?? 3_600_000) + 5 * 60_000;
  }

  /** Loads the keys (creating the Secret when absent), rotates when due and starts the refresh timer. */
  async start(): Promise<void> {
    await this.refresh();
    const interval = this.options.refreshIntervalMs ?? 30_000;
    this.timer = setInterval(() => {
      this.refresh().catch((err: unknown) => {
        this.options.logger.warn('token exchange keys: refresh failed', { error: err });
      });
    }, interval);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** The key new tokens are signed with: the newest key published at least publishDelayMs ago. */
  signingKey(): ExchangeSigningKey {
    const now = this.now();
    const published = this.stored.filter((k) => Date.parse(k.createdAt) + this.publishDelayMs <= now);
    // Right after the first key was created none has been published for long; then the oldest key, which
    // has been published longest (a key added by a rotation moments later must still wait its turn).
    const chosen = published.at(-1) ?? this.stored[0];
    if (chosen === undefined) throw new Error('token exchange keys are not loaded');
    return {
      kid: chosen.kid,
      createdAt: Date.parse(chosen.createdAt),
      privateJwk: chosen.jwk,
      publicJwk: publicOf(chosen),
    };
  }

  /** Every key a verifier may meet: the signing key, keys about to sign, keys whose tokens may still live. */
  jwks(): JSONWebKeySet {
    return { keys: this.stored.map(publicOf) };
  }

  /** The same keys as a jose key set, for verifying the exchange's own tokens. */
  keySet(): ReturnType<typeof createLocalJWKSet> {
    this.localSet ??= createLocalJWKSet(this.jwks());
    return this.localSet;
  }

  /**
   * Re-reads the Secret (creating it when absent), then rotates and retires keys when due. Calls run one
   * after another, and each reads the Secret after it was called: a caller never gets an older state.
   */
  refresh(): Promise<void> {
    const run = this.refreshing.catch(() => undefined).then(() => this.doRefresh());
    this.refreshing = run;
    return run;
  }

  /** Adds a new key now (it signs once published); used when rotation is due, and by operators on demand. */
  async rotate(): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      await this.load();
      const next = [...this.retained(), await newKey(this.now())];
      if (await this.write(next)) {
        this.options.logger.info('token exchange keys rotated', { keyId: next.at(-1)?.kid, keys: next.length });
        return;
      }
    }
    throw new Error('token exchange keys: rotation kept conflicting with other replicas');
  }

  private async doRefresh(): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      await this.load();
      const newest = this.stored.at(-1);
      const due = newest === undefined || Date.parse(newest.createdAt) + this.rotationPeriodMs <= this.now();
      const retained = this.retained();
      if (!due && retained.length === this.stored.length) {
        await this.publish();
        return;
      }
      const next = due ? [...retained, await newKey(this.now())] : retained;
      if (await this.write(next)) {
        if (due)
          this.options.logger.info('token exchange keys rotated', { keyId: next.at(-1)?.kid, keys: next.length });
        await this.publish();
        return;
      }
    }
    throw new Error('token exchange keys: refresh kept conflicting with other replicas');
  }

  /** Keys to keep: all but those replaced by a key that has signed for longer than any token lives. */
  private retained(): StoredKey[] {
    const now = this.now();
    return this.stored.filter((k, i) => {
      const replacement = this.stored[i + 1];
      if (replacement === undefined) return true;
      const replacedAt = Date.parse(replacement.createdAt) + this.publishDelayMs;
      return now < replacedAt + this.retireAfterMs;
    });
  }

  /** Reads the Secret into memory, creating it with a first key when it does not exist. */
  private async load(): Promise<void> {
    const { core, namespace, logger } = this.options;
    let secret: V1Secret;
    try {
      secret = await core.readNamespacedSecret({ namespace, name: SIGNING_KEYS_SECRET });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      const first = await newKey(this.now());
      try {
        secret = await core.createNamespacedSecret({
          namespace,
          body: {
            metadata: {
              name: SIGNING_KEYS_SECRET,
              labels: { 'app.kubernetes.io/managed-by': 'chaperone-operator' },
            },
            type: 'Opaque',
            data: encode([first]),
          },
        });
        logger.info('token exchange key created', { namespace, keyId: first.kid });
      } catch (createErr) {
        // Another replica created it first: use theirs.
        if (statusOf(createErr) !== 409) throw createErr;
        secret = await core.readNamespacedSecret({ namespace, name: SIGNING_KEYS_SECRET });
      }
    }
    const keys = parseStored(secret);
    if (keys.map((k) => k.kid).join() !== this.stored.map((k) => k.kid).join()) this.localSet = undefined;
    this.stored = keys;
    this.resourceVersion = secret.metadata?.resourceVersion ?? '';
  }

  /** Replaces the Secret's keys if nobody changed it since load(); false on a conflict. */
  private async write(keys: StoredKey[]): Promise<boolean> {
    const { core, namespace } = this.options;
    try {
      const written = await core.replaceNamespacedSecret({
        namespace,
        name: SIGNING_KEYS_SECRET,
        body: {
          metadata: {
            name: SIGNING_KEYS_SECRET,
            resourceVersion: this.resourceVersion,
            labels: { 'app.kubernetes.io/managed-by': 'chaperone-operator' },
          },
          type: 'Opaque',
          data: encode(keys),
        },
      });
      this.stored = keys;
      this.localSet = undefined;
      this.resourceVersion = written.metadata?.resourceVersion ?? '';
      return true;
    } catch (err) {
      if (statusOf(err) === 409) return false;
      throw err;
    }
  }

  /** Appends public keys not yet in the ConfigMap (earlier keys stay: old log heads must keep verifying). */
  private async publish(): Promise<void> {
    const { core, namespace } = this.options;
    let existing: V1ConfigMap | undefined;
    try {
      existing = await core.readNamespacedConfigMap({ namespace, name: PUBLIC_KEYS_CONFIGMAP });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
    const known = existing === undefined ? [] : parsePublished(existing.data?.[JWKS_FILE]);
    const missing = this.stored.map(publicOf).filter((k) => !known.some((p) => p.kid === k.kid));
    if (missing.length === 0) return;
    const data = { [JWKS_FILE]: JSON.stringify({ keys: [...known, ...missing] }, null, 2) };
    try {
      if (existing === undefined) {
        await core.createNamespacedConfigMap({
          namespace,
          body: {
            metadata: {
              name: PUBLIC_KEYS_CONFIGMAP,
              labels: { 'app.kubernetes.io/managed-by': 'chaperone-operator' },
            },
            data,
          },
        });
      } else {
        await core.replaceNamespacedConfigMap({
          namespace,
          name: PUBLIC_KEYS_CONFIGMAP,
          body: { metadata: existing.metadata, data: { ...existing.data, ...data } },
        });
      }
    } catch (err) {
      // Another replica published at the same time; the next refresh adds whatever is still missing.
      if (statusOf(err) !== 409) throw err;
    }
  }
}

/** The keys of the published JWKS ConfigMap (every key the exchange ever signed with). */
export function parsePublished(text: string | undefined): (JWK & { kid: string })[] {
  if (text === undefined) return [];
  const parsed = JSON.parse(text) as { keys?: unknown };
  if (!Array.isArray(parsed.keys)) return [];
  return (parsed.keys as JWK[]).filter((k): k is JWK & { kid: string } => typeof k.kid === 'string');
}
