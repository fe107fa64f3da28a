// Delivered credentials (docs/injection.md, "Credentials out of the editors' reach"): when the upstream
// credential lives in the operator's credential namespace, which the agents' editors cannot read, the
// sidecar asks the operator for it with its pod-bound token (operator/src/credentials/credential-delivery.ts)
// and writes it where its listeners read it (`<dir>/<resource>/username`, `password`, `ca.crt`, the
// read-only login's `read-only/username` and `read-only/password`, and the key of the hash masking
// strategy, `masking-key`, which the engine reads at start): a memory
// emptyDir mounted in the sidecar alone. It asks again every refreshSeconds, so a rotated credential is
// picked up without a restart (new upstream connections read the files). Files are replaced atomically.
// The evidence store's writer password and CA (docs/evidence-store.md) come the same way, asked for with
// `{"evidenceStore": true}`, into their own memory volume (`password`, `ca.crt`).
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../observability/logger.ts';
import { callOperator, type OperatorEndpoint } from '../operator-client.ts';

export interface CredentialFetcherOptions extends OperatorEndpoint {
  readonly dir: string;
  readonly resources: readonly string[];
  /** Also fetch the evidence store's writer password and CA into this directory. */
  readonly evidenceStore?: { readonly dir: string };
  readonly refreshMs: number;
  readonly logger: Logger;
}

/** The evidence store's entry among what was fetched (not a resource name: those are DNS subdomains). */
const EVIDENCE_STORE = ':evidence-store';

interface Delivered {
  readonly username?: unknown;
  readonly password?: unknown;
  readonly ca?: unknown;
  readonly maskingKey?: unknown;
  readonly readOnlyUsername?: unknown;
  readonly readOnlyPassword?: unknown;
}

function writeAtomically(path: string, content: Buffer): void {
  const tmp = `${path}.${String(process.pid)}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  renameSync(tmp, path);
}

export class CredentialFetcher {
  private readonly options: CredentialFetcherOptions;
  private timer: NodeJS.Timeout | undefined;
  private readonly fetched = new Set<string>();

  constructor(options: CredentialFetcherOptions) {
    this.options = options;
  }

  /** What is to be fetched: the resources' names and, for the evidence store's, EVIDENCE_STORE. */
  private get wanted(): string[] {
    return [...this.options.resources, ...(this.options.evidenceStore === undefined ? [] : [EVIDENCE_STORE])];
  }

  /** Fetches every credential once, retrying for up to `waitMs`, then keeps refreshing in the background. */
  async start(waitMs: number): Promise<void> {
    const until = Date.now() + waitMs;
    let delay = 500;
    for (;;) {
      await this.refresh();
      if (this.fetched.size === this.wanted.length || Date.now() >= until) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
    if (this.fetched.size < this.wanted.length) {
      this.options.logger.error(
        'not every credential was delivered; connections to those resources (or the evidence store) fail until it is',
        { missing: this.wanted.filter((r) => !this.fetched.has(r)) },
      );
    }
    this.timer = setInterval(() => void this.refresh(), this.options.refreshMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async refresh(): Promise<void> {
    for (const resource of this.options.resources) {
      try {
        const answer = (await callOperator(this.options, { resource })) as Delivered | null;
        if (typeof answer?.username !== 'string' || typeof answer.password !== 'string') {
          throw new Error('the answer holds no username and password');
        }
        const dir = join(this.options.dir, resource);
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        writeAtomically(join(dir, 'username'), Buffer.from(answer.username, 'base64'));
        writeAtomically(join(dir, 'password'), Buffer.from(answer.password, 'base64'));
        if (typeof answer.ca === 'string') writeAtomically(join(dir, 'ca.crt'), Buffer.from(answer.ca, 'base64'));
        if (typeof answer.maskingKey === 'string') {
          writeAtomically(join(dir, 'masking-key'), Buffer.from(answer.maskingKey, 'base64'));
        }
        if (typeof answer.readOnlyUsername === 'string' && typeof answer.readOnlyPassword === 'string') {
          // The least-privilege login, where the listener's readOnlyUsernameFile/readOnlyPasswordFile point.
          mkdirSync(join(dir, 'read-only'), { recursive: true, mode: 0o700 });
          writeAtomically(join(dir, 'read-only', 'username'), Buffer.from(answer.readOnlyUsername, 'base64'));
          writeAtomically(join(dir, 'read-only', 'password'), Buffer.from(answer.readOnlyPassword, 'base64'));
        }
        if (!this.fetched.has(resource)) this.options.logger.info('credential delivered by the operator', { resource });
        this.fetched.add(resource);
      } catch (err) {
        this.options.logger.warn('credential delivery failed; keeping the last one', { resource, error: err });
      }
    }
    const store = this.options.evidenceStore;
    if (store !== undefined) {
      try {
        const answer = (await callOperator(this.options, { evidenceStore: true })) as Delivered | null;
        if (typeof answer?.password !== 'string') throw new Error('the answer holds no password');
        mkdirSync(store.dir, { recursive: true, mode: 0o700 });
        writeAtomically(join(store.dir, 'password'), Buffer.from(answer.password, 'base64'));
        if (typeof answer.ca === 'string') writeAtomically(join(store.dir, 'ca.crt'), Buffer.from(answer.ca, 'base64'));
        if (!this.fetched.has(EVIDENCE_STORE))
          this.options.logger.info('evidence store credential delivered by the operator');
        this.fetched.add(EVIDENCE_STORE);
      } catch (err) {
        this.options.logger.warn('evidence store credential delivery failed; keeping the last one', { error: err });
      }
    }
  }
}
