// The Helm chart's evidence store values (docs/evidence-store.md, "Helm values"): rendered into a
// ConfigMap naming the store's location and roles and where the writer's password Secret is (the
// credential namespace), never a password; refused without a host or without a credential namespace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { REPO_ROOT, toolPath } from '../harness/tools.ts';

const CHART = join(REPO_ROOT, 'charts', 'chaperone');
const run = promisify(execFile);

function template(values: Record<string, string>, show = 'templates/evidence-store.yaml'): Promise<{ stdout: string }> {
  const set = Object.entries(values).flatMap(([k, v]) => ['--set', `${k}=${v}`]);
  return run(toolPath('helm'), [
    'template',
    'r',
    CHART,
    '--namespace',
    'chaperone-system',
    '--kube-version',
    '1.37.2',
    '--show-only',
    show,
    ...set,
  ]);
}

test('helm: evidenceStore renders the store location and roles, and where the password Secret is, never a password', async () => {
  const { stdout } = await template({
    'evidenceStore.enabled': 'true',
    'evidenceStore.postgres.host': 'evidence.db.svc',
    'credentials.namespace': 'chaperone-credentials',
  });
  const [cm] = parseAllDocuments(stdout).map((d) => d.toJS() as { kind: string; data: Record<string, string> });
  assert.equal(cm?.kind, 'ConfigMap');
  assert.deepEqual(cm.data, {
    type: 'postgres',
    location: 'evidence.db.svc:5432/evidence',
    host: 'evidence.db.svc',
    port: '5432',
    database: 'evidence',
    writerUser: 'chaperone_writer',
    auditorUser: 'chaperone_auditor',
    passwordSecret: 'chaperone-credentials/chaperone-evidence-writer',
    caSecret: 'chaperone-credentials/chaperone-evidence-ca',
    batchRecords: '4096',
    headIntervalMs: '5000',
  });
});

test('helm: with evidenceStore the operator reads the ConfigMap, mounted, and nothing else of the store', async () => {
  const values = {
    'evidenceStore.enabled': 'true',
    'evidenceStore.postgres.host': 'evidence.db.svc',
    'credentials.namespace': 'chaperone-credentials',
  };
  const { stdout } = await template(values, 'templates/deployment.yaml');
  const [deployment] = parseAllDocuments(stdout).map(
    (d) =>
      d.toJS() as {
        spec: {
          template: {
            spec: {
              containers: { args: string[]; volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[] }[];
              volumes: { name: string; configMap?: { name: string } }[];
            };
          };
        };
      },
  );
  const pod = deployment?.spec.template.spec;
  const operator = pod?.containers[0];
  assert.ok(operator !== undefined);
  assert.ok(operator.args.includes('--evidence-store-config=/etc/chaperone/evidence-store'));
  assert.ok(operator.args.includes('--credential-namespace=chaperone-credentials'));
  assert.deepEqual(
    operator.volumeMounts.find((m) => m.name === 'evidence-store'),
    { name: 'evidence-store', mountPath: '/etc/chaperone/evidence-store', readOnly: true },
  );
  assert.deepEqual(pod?.volumes.find((v) => v.name === 'evidence-store')?.configMap, {
    name: 'r-chaperone-evidence-store',
  });
  // Without the store: no flag, no volume.
  const plain = await template({ 'credentials.namespace': 'chaperone-credentials' }, 'templates/deployment.yaml');
  assert.doesNotMatch(plain.stdout, /evidence-store/);
});

test('helm: evidenceStore without a host or without a credential namespace is refused', async () => {
  await assert.rejects(
    template({ 'evidenceStore.enabled': 'true', 'credentials.namespace': 'c' }),
    /evidenceStore\.postgres\.host is required/,
  );
  await assert.rejects(
    template({ 'evidenceStore.enabled': 'true', 'evidenceStore.postgres.host': 'db' }),
    /evidenceStore needs credentials\.namespace/,
  );
  // The schema keeps role names plain SQL identifiers (they are written into GRANTs).
  await assert.rejects(
    template({
      'evidenceStore.enabled': 'true',
      'evidenceStore.postgres.host': 'db',
      'credentials.namespace': 'c',
      'evidenceStore.postgres.writerUser': 'x; drop table y',
    }),
    /writerUser/,
  );
});
