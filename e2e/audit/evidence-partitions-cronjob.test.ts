// The documented partition-maintenance CronJob (examples/operations/evidence-partitions-cronjob.yaml): the real API
// server accepts it (server-side dry run: schema, schedule, time zone), and its container's arguments are
// ones the CLI runs with against the real evidence store (as the maintainer, pointed at the harness server).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parse } from 'yaml';
import { postgresEnv } from '../harness/env.ts';
import { createTestNamespace, kubeConfig } from '../harness/kube.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { createEvidenceDatabase, psql } from './evidence-store-fixture.ts';
import { runCli } from './run-cli.ts';

const EXAMPLE = join(REPO_ROOT, 'examples', 'operations', 'evidence-partitions-cronjob.yaml');

test('evidence partitions CronJob example: accepted by the API server, its arguments run by the CLI', async (t) => {
  const cronJob = parse(readFileSync(EXAMPLE, 'utf8')) as {
    metadata: Record<string, unknown>;
    spec: {
      schedule: string;
      jobTemplate: {
        spec: {
          template: {
            spec: {
              containers: {
                args?: string[];
                env?: { name: string; valueFrom?: { secretKeyRef?: { name: string } } }[];
              }[];
            };
          };
        };
      };
    };
  };
  const namespace = await createTestNamespace(t);
  const batch = kubeConfig().makeApiClient(k8s.BatchV1Api);
  const accepted = await batch.createNamespacedCronJob({
    namespace,
    body: { ...cronJob, metadata: { ...cronJob.metadata, namespace } } as k8s.V1CronJob,
    dryRun: 'All',
    fieldValidation: 'Strict',
  });
  assert.equal(accepted.spec.schedule, cronJob.spec.schedule);
  const container = cronJob.spec.jobTemplate.spec.template.spec.containers[0];
  assert.ok(container?.args !== undefined);
  assert.equal(
    container.env?.find((e) => e.name === 'PGPASSWORD')?.valueFrom?.secretKeyRef?.name,
    'chaperone-evidence-maintainer',
    'the password comes from a Secret, never the manifest',
  );

  // The same arguments against the real store, the URL pointed at the harness server and its CA.
  const db = createEvidenceDatabase(t);
  const env = postgresEnv();
  const maintainer = { user: `${db.owner.replace(/_owner$/, '')}_maint`, password: randomBytes(12).toString('hex') };
  db.superuser(
    `create role ${maintainer.user} login password '${maintainer.password}'; grant ${db.owner} to ${maintainer.user};`,
  );
  t.after(() => psql('postgres', `drop role if exists ${maintainer.user}`));
  const args = container.args.map((a) =>
    a.startsWith('postgresql://')
      ? `postgresql://${maintainer.user}@localhost:${String(env.port)}/${db.database}?sslmode=verify-full&sslrootcert=${encodeURIComponent(env.caFile)}`
      : a,
  );
  const run = await runCli([...args, '--dry-run'], { PGPASSWORD: maintainer.password });
  assert.equal(run.code, 0, run.stdout + run.stderr);
  // The schema made a week ahead already: nothing to do, and it says so.
  assert.match(run.stdout, /^0 created, 0 dropped, [0-9]+ kept; 0 row\(s\) in the default partition$/m);
});
