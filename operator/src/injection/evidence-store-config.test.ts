// The evidence store's settings from the chart's ConfigMap as mounted: every key read, defaults applied,
// and a Secret outside the credential namespace or a missing key refused by name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readEvidenceStoreConfig } from './evidence-store-config.ts';
import { validateInjectionSettings } from './settings.ts';

function configDir(t: { after(fn: () => void): void }, data: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'evidence-store-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const [key, value] of Object.entries(data)) writeFileSync(join(dir, key), value);
  return dir;
}

const CHART = {
  type: 'postgres',
  location: 'evidence.db:5432/evidence',
  host: 'evidence.db',
  port: '5432',
  database: 'evidence',
  writerUser: 'chaperone_writer',
  auditorUser: 'chaperone_auditor',
  passwordSecret: 'chaperone-credentials/chaperone-evidence-writer',
  caSecret: 'chaperone-credentials/chaperone-evidence-ca',
  batchRecords: '4096',
  headIntervalMs: '2000',
};

test('readEvidenceStoreConfig reads what the chart renders', (t) => {
  const settings = readEvidenceStoreConfig(configDir(t, CHART), 'chaperone-credentials');
  assert.deepEqual(settings, {
    host: 'evidence.db',
    port: 5432,
    database: 'evidence',
    writerUser: 'chaperone_writer',
    passwordSecret: 'chaperone-evidence-writer',
    caSecret: 'chaperone-evidence-ca',
    batchRecords: 4096,
    headIntervalMs: 2000,
  });
  // And the settings pass validation with the credential namespace, not without it.
  const base = { image: 'sidecar:1', operatorNamespace: 'chaperone-system', evidenceStore: settings };
  assert.equal(
    validateInjectionSettings({ ...base, credentialNamespace: 'chaperone-credentials' }).evidenceStore,
    settings,
  );
  assert.throws(() => validateInjectionSettings(base), /evidenceStore: needs credentialNamespace/);
  assert.throws(
    () =>
      validateInjectionSettings({
        ...base,
        credentialNamespace: 'chaperone-credentials',
        evidenceStore: { ...settings, headIntervalMs: 60_001 },
      }),
    /evidenceStore.headIntervalMs: an integer in 0..60000/,
  );
});

test('readEvidenceStoreConfig refuses Secrets outside the credential namespace and missing keys', (t) => {
  assert.throws(
    () => readEvidenceStoreConfig(configDir(t, { ...CHART, passwordSecret: 'agents/writer' }), 'chaperone-credentials'),
    /passwordSecret: agents\/writer is not in the credential namespace chaperone-credentials/,
  );
  const { host: _host, ...withoutHost } = CHART;
  assert.throws(() => readEvidenceStoreConfig(configDir(t, withoutHost), 'chaperone-credentials'), /host: required/);
  assert.throws(
    () => readEvidenceStoreConfig(configDir(t, { ...CHART, type: 's3' }), 'chaperone-credentials'),
    /type: s3 is not a store/,
  );
  assert.throws(
    () => readEvidenceStoreConfig(configDir(t, { ...CHART, port: '54x' }), 'chaperone-credentials'),
    /port: 54x is not a number/,
  );
  // Bad values reach validation: an identifier that is not one.
  const settings = readEvidenceStoreConfig(
    configDir(t, { ...CHART, writerUser: 'Writer; drop' }),
    'chaperone-credentials',
  );
  assert.throws(
    () =>
      validateInjectionSettings({
        image: 'sidecar:1',
        operatorNamespace: 'chaperone-system',
        credentialNamespace: 'chaperone-credentials',
        evidenceStore: settings,
      }),
    /evidenceStore.writerUser: a plain SQL identifier/,
  );
});
