// The namespace's signed policy set (docs/policy.md, "Delivery"): one ConfigMap chaperone-policies per
// namespace whose key policies.jws is a compact JWS, signed with the operator's key, naming every
// published bundle of the namespace (policy, ConfigMap, digest). Sidecars watch this one ConfigMap and
// load a set only when it verifies against the key pinned in their configuration, so a bundle ConfigMap
// overwritten by someone else is refused (its bytes do not hash to the signed digest) and so is a set
// they wrote (not signed). The publisher restores a set that is missing, altered or rolled back, and says
// so with a Warning Event on the ConfigMap.
import {
  ApiException,
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Api,
  type ObjectCache,
  type V1ConfigMap,
} from '@kubernetes/client-node';
import type { JWK } from 'jose';
import {
  POLICY_SET_CONFIGMAP,
  POLICY_SET_KEY,
  signPolicySet,
  verifyPolicySet,
  type AccessPolicy,
  type PolicySet,
  type PolicySetEntry,
  type StatementSigner,
} from '@chaperone/api';
import type { EventRecorder } from '../controller-runtime/event-recorder.ts';
import type { ReconcileContext } from '../controller-runtime/reconcile.ts';

export const POLICY_SET_COMPONENT = 'policy-set';
/** The name part of a namespace's policy-set key in the AccessPolicy controller's queue. */
export const POLICY_SET_KEY_NAME = ':policy-set';
export const REASON_POLICY_SET_RESTORED = 'PolicySetRestored';

/** The published bundle of one policy, checked against what the operator wrote, or undefined. */
export type PublishedBundle = (policy: AccessPolicy) => Promise<PolicySetEntry | undefined>;

export interface PolicySetPublisherOptions {
  readonly core: CoreV1Api;
  readonly policies: ObjectCache<AccessPolicy>;
  readonly configMaps: ObjectCache<V1ConfigMap>;
  readonly signer: StatementSigner;
  readonly publicKeys: readonly (JWK & { kid?: string })[];
  readonly events: EventRecorder;
  readonly fieldManager: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly published: PublishedBundle;
  readonly now: () => number;
  /** Counts sets found altered and restored. */
  readonly onTampered?: (namespace: string) => void;
}

/** What a live set says, when it verifies for `namespace`. */
function readSet(cm: V1ConfigMap | undefined, namespace: string, keys: PolicySetPublisherOptions['publicKeys']) {
  const jws = cm?.data?.[POLICY_SET_KEY];
  if (jws === undefined) return { jws, set: undefined, problem: cm === undefined ? undefined : 'no signed set' };
  try {
    const set = verifyPolicySet(jws, keys);
    if (set.namespace !== namespace) return { jws, set: undefined, problem: `signed for namespace ${set.namespace}` };
    return { jws, set, problem: undefined };
  } catch (err) {
    return { jws, set: undefined, problem: (err as Error).message };
  }
}

/** Same policies, ConfigMaps and digests, in the same order (key order of the objects does not matter). */
const sameEntries = (a: readonly PolicySetEntry[], b: readonly PolicySetEntry[]) =>
  a.length === b.length &&
  a.every((e, i) => e.name === b[i]?.name && e.configMap === b[i].configMap && e.digest === b[i].digest);

export class PolicySetPublisher {
  private readonly options: PolicySetPublisherOptions;
  /** issuedAt of the newest set this process wrote, per namespace: a live set older than it was rolled back. */
  private readonly written = new Map<string, string>();

  constructor(options: PolicySetPublisherOptions) {
    this.options = options;
  }

  /** Publishes (or restores) the set of `namespace`; returns a requeue delay while a bundle is being restored. */
  async reconcile(namespace: string, context: ReconcileContext): Promise<number | undefined> {
    const { options } = this;
    const policies = options.policies
      .list(namespace)
      .filter((p) => p.metadata.deletionTimestamp === undefined)
      .sort((a, b) => (a.metadata.name ?? '').localeCompare(b.metadata.name ?? ''));
    const entries: PolicySetEntry[] = [];
    let waiting = false;
    for (const policy of policies) {
      if (policy.status?.bundle === undefined) continue;
      const entry = await options.published(policy);
      if (entry === undefined) {
        // Published once, but its ConfigMap does not hold that bundle now (being restored): keep the set
        // as it is until it does, rather than drop the policy from running sidecars.
        waiting = true;
        continue;
      }
      entries.push(entry);
    }
    if (waiting) return 1000;

    let live = options.configMaps.get(POLICY_SET_CONFIGMAP, namespace);
    let current = readSet(live, namespace, options.publicKeys);
    if (current.set === undefined || !sameEntries(current.set.policies, entries)) {
      // The cache may lag our own write: read the object itself before deciding anything.
      live = await options.core
        .readNamespacedConfigMap({ namespace, name: POLICY_SET_CONFIGMAP })
        .catch((err: unknown) => {
          if (err instanceof ApiException && (err as ApiException<unknown>).code === 404) return undefined;
          throw err;
        });
      current = readSet(live, namespace, options.publicKeys);
    }
    const writtenAt = this.written.get(namespace);
    const rolledBack =
      current.set !== undefined && writtenAt !== undefined && Date.parse(current.set.issuedAt) < Date.parse(writtenAt);
    if (current.set !== undefined && !rolledBack && sameEntries(current.set.policies, entries)) return undefined;

    const tampered =
      current.problem !== undefined
        ? current.problem
        : rolledBack
          ? `an older set (${current.set?.issuedAt ?? ''})`
          : undefined;
    const previous = [current.set?.issuedAt, writtenAt].filter((t) => t !== undefined).map((t) => Date.parse(t));
    const issuedAt = new Date(Math.max(options.now(), ...previous.map((t) => t + 1))).toISOString();
    const set: Omit<PolicySet, 'typ'> = { namespace, issuedAt, policies: entries };
    const body: V1ConfigMap = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: POLICY_SET_CONFIGMAP, namespace, labels: { ...options.labels } },
      data: { [POLICY_SET_KEY]: signPolicySet(set, options.signer) },
    };
    const applied = await options.core.patchNamespacedConfigMap(
      { name: POLICY_SET_CONFIGMAP, namespace, body, fieldManager: options.fieldManager, force: true },
      setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
    );
    this.written.set(namespace, issuedAt);
    context.logger.info('policy set published', {
      issuedAt,
      policies: entries.map((e) => `${e.name}@${e.digest}`),
      ...(tampered === undefined ? {} : { restored: tampered }),
    });
    if (tampered !== undefined) {
      options.onTampered?.(namespace);
      await options.events.record(
        {
          apiVersion: 'v1',
          kind: 'ConfigMap',
          metadata: applied.metadata ?? { name: POLICY_SET_CONFIGMAP, namespace },
        },
        'Warning',
        REASON_POLICY_SET_RESTORED,
        `ConfigMap ${namespace}/${POLICY_SET_CONFIGMAP} did not hold the operator's policy set (${tampered}); it was restored. Sidecars refuse sets the operator did not sign and keep the last good one.`,
      );
    }
    return undefined;
  }
}
