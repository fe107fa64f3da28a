// What the tests of refused and held commands share (skipped-behind-refusal, refusal-evidence): the
// statements and the policy that denies one of them and allows the rest.
import type { AccessPolicySpec } from '@chaperone/api';

export const TIMEOUT_MS = 30_000;

/** Denied by GUARD. */
export const DENIED = 'delete from accounts';
/** Allowed by GUARD's catch-all. */
export const ALLOWED = "update accounts set owner = 'Zed' where id = 1";
/** Held for approval under POLICIES.payouts (approval-fixture.ts). */
export const PAYOUT = 'insert into payouts(amount) values ($1)';

/** Deleting accounts is denied; everything else is allowed (a catch-all that also covers kind `other`). */
export const GUARD: AccessPolicySpec = {
  resources: { names: ['test-db'] },
  rules: [
    {
      name: 'no-account-deletes',
      decision: 'deny',
      match: { sql: { statementKinds: ['delete'], relations: ['public.accounts'] } },
    },
    { name: 'everything-else', decision: 'allow', match: {} },
  ],
  defaultDecision: 'deny',
};
