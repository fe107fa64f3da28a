// Partition maintenance of the evidence store against a real PostgreSQL (docs/evidence-store.md,
// "Partitions and retention"): `kubectl chaperone evidence partitions` creates the daily partitions ahead,
// owned by the table's owner and guarded like the rest; drops or detaches the days past retention, never
// the default partition or a day still kept; refuses to run for a login that is not the owner's member
// (the writer); and says what is wrong when a day's records already sit in the default partition.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { evidencePartitionSql } from '@chaperone/api';
import { postgresEnv } from '../harness/env.ts';
import { createEvidenceDatabase, psql } from './evidence-store-fixture.ts';
import { runCli } from './run-cli.ts';

const DAY = 86_400_000;
const dayName = (d: Date) => `audit_records_${d.toISOString().slice(0, 10).replaceAll('-', '')}`;

test('evidence partitions: created ahead as the owner, expired days dropped or detached, the writer refused', async (t) => {
  const db = createEvidenceDatabase(t);
  const env = postgresEnv();
  const maintainer = { user: `${db.owner.replace(/_owner$/, '')}_maint`, password: randomBytes(12).toString('hex') };
  // The installer's login: a member of the table's owner (which cannot log in).
  db.superuser(
    `create role ${maintainer.user} login password '${maintainer.password}'; grant ${db.owner} to ${maintainer.user};`,
  );
  t.after(() => psql('postgres', `drop role if exists ${maintainer.user}`));
  const url = (user: string) =>
    `postgresql://${user}@localhost:${String(env.port)}/${db.database}?sslmode=verify-full&sslrootcert=${encodeURIComponent(env.caFile)}`;
  const partitions = (user: { user: string; password: string }, ...args: string[]) =>
    runCli(['evidence', 'partitions', '--evidence-store', url(user.user), ...args], { PGPASSWORD: user.password });
  const now = Date.now();
  const today = new Date(now - (now % DAY));
  // Days the store had long ago: 100 and 40 days back (past 30 days of retention), 10 days back (kept).
  for (const back of [100, 40, 10]) {
    db.superuser(
      `set role ${db.owner};\nbegin;\n${evidencePartitionSql(new Date(today.getTime() - back * DAY))}\ncommit;`,
    );
  }
  const attached = () =>
    db
      .superuser(
        `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = 'chaperone.audit_records'::regclass order by 1`,
      )
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('audit_records_'));
  const before = attached();

  // A dry run says what it would do and changes nothing.
  const dry = await partitions(maintainer, '--ahead', '10', '--retain', '720h', '--dry-run');
  assert.equal(dry.code, 0, dry.stdout + dry.stderr);
  assert.match(
    dry.stdout,
    new RegExp(`partition chaperone\\.${dayName(new Date(today.getTime() + 10 * DAY))} created \\(dry run\\)`),
  );
  assert.deepEqual(attached(), before);

  // The writer (what every sidecar logs in as) cannot maintain partitions.
  const refused = await partitions(db.writer, '--ahead', '10', '--retain', '720h');
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /permission denied to set role/);
  assert.deepEqual(attached(), before);

  const done = await partitions(maintainer, '--ahead', '10', '--retain', '720h');
  assert.equal(done.code, 0, done.stdout + done.stderr);
  const after = attached();
  for (let i = 8; i <= 10; i++)
    assert.ok(after.includes(dayName(new Date(today.getTime() + i * DAY))), `day +${String(i)} created`);
  for (const back of [100, 40]) {
    const name = dayName(new Date(today.getTime() - back * DAY));
    assert.ok(!after.includes(name), `${name} past retention is gone`);
    assert.equal(db.superuser(`select to_regclass('chaperone.${name}') is null`).trim(), 't');
  }
  assert.ok(after.includes(dayName(new Date(today.getTime() - 10 * DAY))), 'a day within retention is kept');
  assert.ok(after.includes('audit_records_default'), 'the default partition is never touched');
  assert.match(done.stdout, /3 created, 2 dropped/);
  // Owned by the table's owner and guarded against TRUNCATE like the others.
  const plus10 = dayName(new Date(today.getTime() + 10 * DAY));
  assert.match(db.superuser(`select tableowner from pg_tables where tablename = '${plus10}'`), new RegExp(db.owner));
  assert.match(
    db.superuser(
      `select count(*) from pg_trigger where tgname = 'audit_records_no_truncate' and tgrelid = 'chaperone.${plus10}'::regclass`,
    ),
    /\b1\b/,
  );
  // A record of that day lands in its partition, not in the default one.
  const writer = await db.connect(db.writer);
  const time = new Date(today.getTime() + 10 * DAY + 3_600_000).toISOString();
  await writer.query(
    `insert into chaperone.audit_records (session_id, seq, time, type, hash, prev_hash, namespace, pod_namespace, pod, resource, record)
     values ('s-ahead', 1, $1, 'session.start', 'sha256:h', 'sha256:p', 'ns', 'ns', 'p', 'r', '{}')`,
    [time],
  );
  assert.match(
    db.superuser(`select tableoid::regclass from chaperone.audit_records where session_id = 's-ahead'`),
    new RegExp(plus10),
  );

  // Running again is a no-op.
  const again = await partitions(maintainer, '--ahead', '10', '--retain', '720h');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /0 created, 0 dropped/);

  // --detach keeps an expired day as a plain table (for archiving) outside the records table.
  const old = new Date(today.getTime() - 60 * DAY);
  db.superuser(`set role ${db.owner};\nbegin;\n${evidencePartitionSql(old)}\ncommit;`);
  const detached = await partitions(maintainer, '--ahead', '10', '--retain', '720h', '--detach');
  assert.equal(detached.code, 0, detached.stderr);
  assert.match(detached.stdout, new RegExp(`partition chaperone\\.${dayName(old)} detached`));
  assert.ok(!attached().includes(dayName(old)));
  assert.equal(db.superuser(`select to_regclass('chaperone.${dayName(old)}') is not null`).trim(), 't');

  // A record whose day had no partition went to the default partition: creating that day's partition
  // would have to move it, which PostgreSQL refuses; the command says so and which day.
  const stray = new Date(today.getTime() + 20 * DAY + 60_000);
  await writer.query(
    `insert into chaperone.audit_records (session_id, seq, time, type, hash, prev_hash, namespace, pod_namespace, pod, resource, record)
     values ('s-stray', 1, $1, 'session.start', 'sha256:h', 'sha256:p', 'ns', 'ns', 'p', 'r', '{}')`,
    [stray.toISOString()],
  );
  const blocked = await partitions(maintainer, '--ahead', '25');
  assert.equal(blocked.code, 1);
  assert.match(
    blocked.stderr,
    new RegExp(
      `creating chaperone\\.${dayName(new Date(stray.getTime() - (stray.getTime() % DAY)))}: .*default partition`,
    ),
  );
});
