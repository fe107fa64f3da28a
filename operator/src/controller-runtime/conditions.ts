// metav1.Condition helpers with the semantics of k8s.io/apimachinery/pkg/api/meta.SetStatusCondition:
// conditions are keyed by type; lastTransitionTime changes only when status changes; reason, message and
// observedGeneration are updated in place. The input list is never mutated.
import type { Condition } from '@chaperone/api';

export type ConditionStatus = Condition['status'];

/** A condition as a controller computes it; lastTransitionTime is filled in by setCondition. */
export type ConditionUpdate = Omit<Condition, 'lastTransitionTime'>;

export function findCondition(conditions: readonly Condition[] | undefined, type: string): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

export function isConditionTrue(conditions: readonly Condition[] | undefined, type: string): boolean {
  return findCondition(conditions, type)?.status === 'True';
}

/**
 * Returns the list with `update` applied. A new type, or a status change, stamps lastTransitionTime with
 * `now`; otherwise the previous lastTransitionTime is kept. Timestamps are RFC 3339 with second
 * precision, as metav1.Time serialises them.
 */
export function setCondition(
  conditions: readonly Condition[] | undefined,
  update: ConditionUpdate,
  now: Date,
): Condition[] {
  const list = [...(conditions ?? [])];
  const index = list.findIndex((c) => c.type === update.type);
  const previous = index === -1 ? undefined : list[index];
  const lastTransitionTime =
    previous !== undefined && previous.status === update.status ? previous.lastTransitionTime : rfc3339(now);
  const next: Condition = {
    type: update.type,
    status: update.status,
    ...(update.observedGeneration === undefined ? {} : { observedGeneration: update.observedGeneration }),
    lastTransitionTime,
    reason: update.reason,
    message: update.message,
  };
  if (index === -1) list.push(next);
  else list[index] = next;
  return list;
}

/** Removes the condition of this type, if any. */
export function removeCondition(conditions: readonly Condition[] | undefined, type: string): Condition[] {
  return (conditions ?? []).filter((c) => c.type !== type);
}

/** True when both lists hold the same conditions (order of types ignored), timestamps included. */
export function conditionsEqual(a: readonly Condition[] | undefined, b: readonly Condition[] | undefined): boolean {
  const left = a ?? [];
  const right = b ?? [];
  if (left.length !== right.length) return false;
  return left.every((c) => {
    const other = findCondition(right, c.type);
    return (
      other !== undefined &&
      other.status === c.status &&
      other.reason === c.reason &&
      other.message === c.message &&
      other.observedGeneration === c.observedGeneration &&
      other.lastTransitionTime === c.lastTransitionTime
    );
  });
}

/** metav1.Time's wire form: RFC 3339 in UTC without fractional seconds. */
export function rfc3339(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
