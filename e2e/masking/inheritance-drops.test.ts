// A stored copy under an inheritance parent whose rule names only a child (fifteenth session's masking red
// team, left open by the fourteenth): the owner's materialized view over an inheritance parent or a
// partitioned table holds the child's rows, and its lineage reaches the child's rule through pg_inherits
// only. DDL that takes the child away without touching the view — `DROP TABLE child [CASCADE]`, a parent
// dropped from under a grandparent, `DROP SCHEMA … CASCADE` of the child's schema, `DROP OWNED` — would
// leave the stored rows under a parent no rule reaches; renames and SET SCHEMA take the child's name out of
// the rule. Each attack is one hierarchy of its own: the DDL step, then the read of the view; judged on the
// bytes the agent gets (leakIn) and on the server's own catalogue (the child still exists).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessPolicySpec } from '@chaperone/api';
import { startTestSidecar } from '../harness/sidecar.ts';
import { createTestDatabase } from '../harness/databases.ts';
import { postgresEnv, superuserSql } from '../harness/env.ts';
import { authenticatedClient, errorFields, parseBackend, simpleQueryRound } from '../postgres/raw-client.ts';
import { leakIn } from './bypass-corpus.ts';

interface Attack {
  /** What the DDL does. */
  readonly name: string;
  /** The owner's hierarchy (`$` is this attack's number), its stored copy `mv$`, and the table the rule names. */
  readonly setup: string;
  readonly rule: string;
  /** The agent's DDL, refused now. */
  readonly ddl: string;
  /** The relation that must still exist afterwards (schema.name). */
  readonly survivor: string;
}

/** A parent, a child holding the secret rows, and the owner's materialized view over the parent. */
const PARENT_CHILD = `
create table parent$ (id int, ssn text);
create table child$ () inherits (parent$);
insert into child$ values (1, '123-45-6789'), (2, '987-65-4320');
create materialized view mv$ as select id, ssn from parent$;`;

const ATTACKS: readonly Attack[] = [
  { name: 'DROP TABLE child', setup: PARENT_CHILD, rule: 'child$', ddl: 'drop table child$', survivor: 'child$' },
  {
    name: 'DROP TABLE child CASCADE',
    setup: PARENT_CHILD,
    rule: 'child$',
    ddl: 'drop table child$ cascade',
    survivor: 'child$',
  },
  {
    name: 'DROP TABLE IF EXISTS of a list naming the child',
    setup: PARENT_CHILD,
    rule: 'child$',
    ddl: 'drop table if exists no_such_table, public.child$',
    survivor: 'child$',
  },
  {
    name: 'ALTER TABLE child RENAME',
    setup: PARENT_CHILD,
    rule: 'child$',
    ddl: 'alter table child$ rename to renamed$',
    survivor: 'child$',
  },
  {
    name: 'ALTER TABLE parent RENAME',
    setup: PARENT_CHILD,
    rule: 'child$',
    ddl: 'alter table parent$ rename to renamed$',
    survivor: 'parent$',
  },
  {
    name: 'ALTER TABLE child SET SCHEMA',
    setup: `create schema elsewhere$; ${PARENT_CHILD}`,
    rule: 'child$',
    ddl: 'alter table child$ set schema elsewhere$',
    survivor: 'child$',
  },
  {
    name: 'DROP TABLE of a partition',
    setup: `
create table parent$ (id int, ssn text) partition by range (id);
create table child$ partition of parent$ for values from (0) to (100);
insert into parent$ values (1, '123-45-6789'), (2, '987-65-4320');
create materialized view mv$ as select id, ssn from parent$;`,
    rule: 'child$',
    ddl: 'drop table child$',
    survivor: 'child$',
  },
  {
    name: 'DROP TABLE CASCADE of a middle table under a grandparent',
    setup: `
create table top$ (id int, ssn text);
create table parent$ () inherits (top$);
create table child$ () inherits (parent$);
insert into child$ values (1, '123-45-6789'), (2, '987-65-4320');
create materialized view mv$ as select id, ssn from top$;`,
    rule: 'parent$',
    ddl: 'drop table parent$ cascade',
    survivor: 'parent$',
  },
  {
    name: 'DROP SCHEMA CASCADE of the child’s schema',
    setup: `
create schema legacy$;
create table parent$ (id int, ssn text);
create table legacy$.child$ () inherits (parent$);
insert into legacy$.child$ values (1, '123-45-6789'), (2, '987-65-4320');
create materialized view mv$ as select id, ssn from parent$;`,
    rule: 'child$',
    ddl: 'drop schema legacy$ cascade',
    survivor: 'child$',
  },
  // Last: it drops everything the agent's login owns. The parent and the view belong to another role.
  {
    name: 'DROP OWNED BY the session’s own role',
    setup: PARENT_CHILD,
    rule: 'child$',
    ddl: 'drop owned by current_user',
    survivor: 'child$',
  },
];

const numbered = (text: string, i: number): string => text.replaceAll('$', `_${i}`);

test('a materialized view over a parent keeps a child’s rows masked: DDL taking the child away is refused', async (t) => {
  const setup = ATTACKS.map((a, i) => numbered(a.setup, i)).join('\n');
  const database = await createTestDatabase(t, setup);
  // DROP OWNED's parent and view belong to a role of their own (cluster-wide: one per database).
  const owner = `${database}_owner`;
  const last = ATTACKS.length - 1;
  superuserSql(
    `create role ${owner}; alter table parent_${last} owner to ${owner};
     alter materialized view mv_${last} owner to ${owner}; grant select on mv_${last} to ${postgresEnv().user}`,
    database,
  );
  t.after(() => superuserSql(`drop role if exists ${owner}`));
  const policy: AccessPolicySpec = {
    resources: { names: ['test-db'] },
    rules: [{ name: 'everything', decision: 'allow', match: {} }],
    defaultDecision: 'deny',
    masking: ATTACKS.map((a, i) => ({
      name: `child-ssn-${i}`,
      columns: [`${numbered(a.rule, i)}.ssn`],
      strategy: 'redact' as const,
    })),
  };
  const sidecar = await startTestSidecar(t, { policies: { masked: policy }, database });
  const token = await sidecar.issuer.sign({ sub: 'system:serviceaccount:ci:agent' });
  const client = await authenticatedClient(sidecar.host, sidecar.port, token, 30_000);
  t.after(() => {
    client.destroy();
  });

  const failures: string[] = [];
  for (const [i, attack] of ATTACKS.entries()) {
    const ddl = numbered(attack.ddl, i);
    // Masked before anything changes.
    const before = await simpleQueryRound(client, `select * from mv_${i} order by id`);
    if (leakIn(before.bytes) !== undefined) failures.push(`[${attack.name}] the view leaked before the DDL`);
    const round = await simpleQueryRound(client, ddl);
    const errors = parseBackend(round.bytes)
      .messages.filter((m) => m.type === 'E')
      .map((m) => errorFields(m.body));
    if (!errors.some((e) => e.code === '42501' && e.message.startsWith('chaperone:')))
      failures.push(`[${attack.name}] ${ddl}: expected a denial, got ${JSON.stringify(errors)}`);
    if (round.status !== 'I') await simpleQueryRound(client, 'rollback');
    const after = await simpleQueryRound(client, `select * from mv_${i} order by id`);
    const leak = leakIn(after.bytes);
    if (leak !== undefined) failures.push(`[${attack.name}] ${ddl}: the view LEAKED ${leak}`);
    // The server's own catalogue: the DDL did not run.
    const survivor = numbered(attack.survivor, i);
    const exists = superuserSql(`select count(*) from pg_class where relname = '${survivor}'`, database).trim();
    if (exists !== '1') failures.push(`[${attack.name}] ${ddl}: ${survivor} is gone from the server`);
  }
  assert.deepEqual(failures, [], failures.join('\n'));

  // Tables outside any hierarchy, and a schema dropped without CASCADE, stay the agent's to drop.
  for (const sql of [
    'create table scratch (id int)',
    'drop table scratch',
    'create schema scratch_schema',
    'drop schema scratch_schema',
    'drop table if exists never_made',
  ]) {
    const round = await simpleQueryRound(client, sql);
    assert.deepEqual(round.errors, [], sql);
  }
});
