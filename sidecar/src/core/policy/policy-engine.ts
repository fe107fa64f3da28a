// Evaluates every loaded AccessPolicy bundle (OPA WebAssembly, compiled by the operator) for one command
// and combines the results (docs/policy.md). Loading is asynchronous; deciding is synchronous, so one
// decision always runs to completion on the bundle set it started with, and replaceBundles swaps the set
// in a single assignment.
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import type { LoadedPolicy } from '@open-policy-agent/opa-wasm';
import { bundleDigest, combineDecisions, POLICY_ENTRYPOINT, POLICY_INPUT_VERSION } from '@chaperone/api';
import type { BundleManifest } from '@chaperone/api';
import type { CombinedDecision, EvaluatedPolicy, PolicyIdentity, PolicyInput, PolicyResult } from '@chaperone/api';
import { DecisionCache } from './decision-cache.ts';
import { policyEvaluation, type PolicyEvaluation } from './opa-evaluation.ts';
import type { CacheStats } from './decision-cache.ts';
import { checkPolicyResult, failedResult } from './policy-result.ts';
import { ResultMemo } from './result-memo.ts';
import { ZonedClock } from './zoned-time.ts';

export type { BundleManifest } from '@chaperone/api';

export interface PolicyBundle {
  readonly wasm: Uint8Array;
  readonly manifest: BundleManifest;
  /** sha256:<hex> over the canonical manifest, a NUL byte and the wasm bytes. */
  readonly digest: string;
}

/** A PolicyInput without the fields the engine fills in (version and time). */
export type PolicyRequest = Omit<PolicyInput, 'version' | 'time'>;

export interface PolicyEngineOptions {
  /** Milliseconds since the epoch. Default Date.now. */
  readonly clock?: () => number;
  /** Largest number of cached decisions; 0 disables caching. Default 10000. */
  readonly cacheSize?: number;
  /** Check each bundle's digest against its bytes on load. Default true. */
  readonly verifyDigests?: boolean;
}

export interface BundleStatus {
  readonly policy: string;
  readonly digest: string;
  /** Why the bundle could not be loaded; such a bundle denies every command. */
  readonly error?: string;
}

interface LoadedBundle {
  readonly policy: string;
  readonly digest: string;
  readonly manifest: BundleManifest;
  readonly instance: PolicyEvaluation | undefined;
  readonly entrypoint: number;
  /**
   * What each result the policy returned stood for, checked, by the result's bytes. A policy returns a
   * handful of distinct results (one per rule and statement kind it decides), so decoding, parsing and
   * checking each once saves most of a cache miss's JavaScript. The results are shared as cached decisions
   * are: nothing modifies them.
   */
  readonly results: ResultMemo<KnownResult>;
  readonly error: string | undefined;
}

/** A policy's checked result, and the decision it makes when its bundle is the only one loaded. */
interface KnownResult {
  readonly evaluated: EvaluatedPolicy;
  /** combineDecisions([evaluated]), made once: with one bundle loaded (the usual case) a miss combines nothing. */
  readonly alone: CombinedDecision;
}

interface BundleSet {
  readonly bundles: readonly LoadedBundle[];
  readonly clock: ZonedClock;
  /** Some bundle uses time windows: cached decisions are only valid within one minute. */
  readonly timeBucketed: boolean;
  /** No bundle carries raw Rego (which could read any input field), so decisions may be cached. */
  readonly cacheable: boolean;
}

export { bundleDigest } from '@chaperone/api';

/** Bound on the results remembered per bundle (LoadedBundle.results); all are dropped when it is reached. */
const RESULT_TEXTS_PER_BUNDLE = 512;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The PolicyResult a result set's UTF-8 JSON stands for; a failed result when it has not the right shape. */
function checkedResult(policy: string, bytes: Uint8Array): PolicyResult {
  let resultSet: unknown;
  try {
    resultSet = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    return failedResult('evaluation-error', `policy ${policy}: evaluation failed: ${describe(e)}`);
  }
  if (!Array.isArray(resultSet) || resultSet.length === 0) {
    return failedResult('invalid-result', `policy ${policy}: result is undefined`);
  }
  const first: unknown = resultSet[0];
  const checked = checkPolicyResult(
    typeof first === 'object' && first !== null ? (first as { result?: unknown }).result : undefined,
  );
  return typeof checked === 'string' ? failedResult('invalid-result', `policy ${policy}: ${checked}`) : checked;
}

function known(b: LoadedBundle, result: PolicyResult): KnownResult {
  const evaluated: EvaluatedPolicy = { policy: b.policy, bundleDigest: b.digest, result };
  return { evaluated, alone: combineDecisions([evaluated]) };
}

function describe(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (typeof e === 'object' && e !== null && typeof (e as { message?: unknown }).message === 'string') {
    return (e as { message: string }).message;
  }
  return String(e);
}

export class PolicyEngine {
  private current: BundleSet = { bundles: [], clock: new ZonedClock([]), timeBucketed: false, cacheable: true };
  private readonly cache: DecisionCache<CombinedDecision>;
  private readonly now: () => number;
  private readonly verifyDigests: boolean;
  private generation = 0;
  // Identity and resource objects live as long as a session; their JSON is computed once per object and
  // interned to a short id for cache keys.
  private readonly jsonOf = new WeakMap<object, string>();
  private readonly idOf = new WeakMap<object, number>();
  private readonly interned = new Map<string, number>();
  private nextId = 0;

  constructor(options: PolicyEngineOptions = {}) {
    this.now = options.clock ?? Date.now;
    this.cache = new DecisionCache(options.cacheSize ?? 10_000);
    this.verifyDigests = options.verifyDigests ?? true;
  }

  /**
   * Loads a new bundle set and swaps it in at once; decisions already running finish on the old set.
   * Bundles whose digest is already loaded reuse their instance. A bundle that fails to load stays in
   * the set and denies every command (fail closed). When calls overlap, the last call wins.
   */
  async replaceBundles(bundles: readonly PolicyBundle[]): Promise<void> {
    const generation = ++this.generation;
    const reusable = new Map(this.current.bundles.map((b) => [b.digest, b]));
    const sorted = [...bundles].sort((a, b) =>
      a.manifest.policy < b.manifest.policy ? -1 : a.manifest.policy > b.manifest.policy ? 1 : 0,
    );
    const loaded = await Promise.all(sorted.map((b) => this.load(b, reusable)));
    if (generation !== this.generation) return;
    const zones = new Set<string>();
    for (const b of loaded) if (b.error === undefined) for (const z of b.manifest.timeZones) zones.add(z);
    this.current = {
      bundles: loaded,
      clock: new ZonedClock(zones),
      timeBucketed: zones.size > 0,
      cacheable: loaded.every((b) => !b.manifest.rawRego),
    };
    this.cache.clear();
  }

  private async load(bundle: PolicyBundle, reusable: ReadonlyMap<string, LoadedBundle>): Promise<LoadedBundle> {
    const { manifest, digest } = bundle;
    const previous = reusable.get(digest);
    if (previous !== undefined && previous.policy === manifest.policy && previous.error === undefined) return previous;
    const broken = (error: string): LoadedBundle => ({
      policy: manifest.policy,
      digest,
      manifest,
      instance: undefined,
      entrypoint: 0,
      results: new ResultMemo(0),
      error,
    });
    try {
      if (this.verifyDigests && bundleDigest(bundle.wasm, manifest) !== digest)
        return broken('bundle digest does not match its contents');
      for (const zone of manifest.timeZones) new Intl.DateTimeFormat('en-US', { timeZone: zone });
      const loaded: LoadedPolicy = await loadPolicy(bundle.wasm);
      const entrypoints = loaded.entrypoints as Record<string, unknown>;
      const entrypoint = entrypoints[POLICY_ENTRYPOINT];
      if (typeof entrypoint !== 'number') return broken(`bundle has no entrypoint ${POLICY_ENTRYPOINT}`);
      const instance = policyEvaluation(loaded);
      const results = new ResultMemo<KnownResult>(RESULT_TEXTS_PER_BUNDLE);
      return { policy: manifest.policy, digest, manifest, instance, entrypoint, results, error: undefined };
    } catch (e) {
      return broken(`bundle failed to load: ${describe(e)}`);
    }
  }

  /** Policy name, digest and load error of every bundle in the current set, sorted by policy. */
  bundles(): readonly BundleStatus[] {
    return this.current.bundles.map((b) => ({
      policy: b.policy,
      digest: b.digest,
      ...(b.error === undefined ? {} : { error: b.error }),
    }));
  }

  /** Digests of the current set, sorted by policy name. */
  get bundleDigests(): readonly string[] {
    return this.current.bundles.map((b) => b.digest);
  }

  cacheStats(): CacheStats {
    return this.cache.stats();
  }

  clearCache(): void {
    this.cache.clear();
  }

  /**
   * Decides one command. `commandFingerprint` must identify everything in request.command the policy can
   * see (for SQL: the statements' kinds, relations, functions and side effects); with it, decisions are
   * cached per identity, resource and command (and per minute when a bundle uses time windows). Without
   * it, nothing is cached. Session fields are not part of the key: declarative rules never read them, and
   * bundles with raw Rego disable the cache.
   */
  decide(request: PolicyRequest, commandFingerprint?: string): CombinedDecision {
    const set = this.current;
    const now = this.now();
    let key: string | undefined;
    if (commandFingerprint !== undefined && set.cacheable) {
      key =
        `${this.intern(request.identity)}:${this.intern(request.resource)}:` +
        (set.timeBucketed ? `${Math.floor(now / 60_000)}:` : ':') +
        commandFingerprint;
      const hit = this.cache.get(key);
      if (hit !== undefined) return hit;
    }
    const decision = this.evaluate(set, request, now);
    if (key !== undefined && set === this.current) this.cache.set(key, decision);
    return decision;
  }

  /** Evaluates without the cache, returning each policy's own result too (for audit and tests). */
  evaluateAll(request: PolicyRequest): {
    readonly combined: CombinedDecision;
    readonly evaluated: readonly EvaluatedPolicy[];
  } {
    const set = this.current;
    const evaluated = this.evaluateEach(set, request, this.now());
    return { combined: combineDecisions(evaluated), evaluated };
  }

  private evaluate(set: BundleSet, request: PolicyRequest, now: number): CombinedDecision {
    const only = set.bundles.length === 1 ? set.bundles[0] : undefined;
    if (only !== undefined) return this.evaluateOne(only, this.inputJson(set, request, now)).alone;
    return combineDecisions(this.evaluateEach(set, request, now));
  }

  private evaluateEach(set: BundleSet, request: PolicyRequest, now: number): EvaluatedPolicy[] {
    const out: EvaluatedPolicy[] = [];
    if (set.bundles.length === 0) return out;
    // One serialisation per decision, shared by every bundle (each encodes it into its own memory).
    const json = this.inputJson(set, request, now);
    for (const b of set.bundles) out.push(this.evaluateOne(b, json).evaluated);
    return out;
  }

  private inputJson(set: BundleSet, request: PolicyRequest, now: number): string {
    return (
      `{"version":${POLICY_INPUT_VERSION},"identity":${this.json(request.identity)},"resource":${this.json(request.resource)},` +
      `"command":${JSON.stringify(request.command)},"session":${JSON.stringify(request.session)},` +
      `"time":{"unixMillis":${now},"zones":${set.clock.jsonAt(now)}}}`
    );
  }

  private evaluateOne(b: LoadedBundle, input: string): KnownResult {
    if (b.instance === undefined) {
      return known(b, failedResult('load-error', `policy ${b.policy}: ${b.error ?? 'not loaded'}`));
    }
    let bytes: Uint8Array;
    try {
      bytes = b.instance.evaluate(input, b.entrypoint);
    } catch (e) {
      return known(b, failedResult('evaluation-error', `policy ${b.policy}: evaluation failed: ${describe(e)}`));
    }
    let result = b.results.get(bytes);
    if (result === undefined) {
      result = known(b, checkedResult(b.policy, bytes));
      b.results.set(bytes, result);
    }
    return result;
  }

  private json(o: PolicyIdentity | PolicyRequest['resource']): string {
    let s = this.jsonOf.get(o);
    if (s === undefined) {
      s = JSON.stringify(o);
      this.jsonOf.set(o, s);
    }
    return s;
  }

  private intern(o: PolicyIdentity | PolicyRequest['resource']): number {
    let id = this.idOf.get(o);
    if (id === undefined) {
      const s = this.json(o);
      id = this.interned.get(s);
      if (id === undefined) {
        // The intern table is bounded like the cache; ids are never reused, so a reset is always safe.
        if (this.interned.size >= 100_000) this.interned.clear();
        id = this.nextId++;
        this.interned.set(s, id);
      }
      this.idOf.set(o, id);
    }
    return id;
  }
}
