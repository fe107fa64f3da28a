// The installation's evidence store as the chart describes it: the ConfigMap `<release>-evidence-store`
// (charts/chaperone/templates/evidence-store.yaml) mounted into the operator, one file per key, read once at
// start (--evidence-store-config DIR). The Secrets it names must be in the credential namespace: the
// operator delivers from there only, so a Secret elsewhere is a mistake to report, not to follow.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EvidenceStoreSettings } from './settings.ts';

/** Reads the store's settings from `dir`; throws naming the key that is missing or wrong. */
export function readEvidenceStoreConfig(dir: string, credentialNamespace: string): EvidenceStoreSettings {
  const read = (key: string): string | undefined => {
    try {
      return readFileSync(join(dir, key), 'utf8').trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  };
  const required = (key: string): string => {
    const value = read(key);
    if (value === undefined || value === '') throw new Error(`${key}: required`);
    return value;
  };
  const type = read('type') ?? 'postgres';
  if (type !== 'postgres') throw new Error(`type: ${type} is not a store this operator knows (postgres)`);
  /** `namespace/name` (as the chart writes it) or a bare name, in the credential namespace. */
  const secret = (key: string): string => {
    const value = required(key);
    const [namespace, name] = value.includes('/') ? value.split('/', 2) : [credentialNamespace, value];
    if (namespace !== credentialNamespace) {
      throw new Error(`${key}: ${value} is not in the credential namespace ${credentialNamespace}`);
    }
    return name ?? '';
  };
  const number = (key: string, fallback: number): number => {
    const value = read(key);
    if (value === undefined || value === '') return fallback;
    if (!/^[0-9]+$/.test(value)) throw new Error(`${key}: ${value} is not a number`);
    return Number(value);
  };
  const ca = read('caSecret');
  return {
    host: required('host'),
    port: number('port', 5432),
    database: required('database'),
    writerUser: required('writerUser'),
    passwordSecret: secret('passwordSecret'),
    ...(ca === undefined || ca === '' ? {} : { caSecret: secret('caSecret') }),
    batchRecords: number('batchRecords', 4096),
    headIntervalMs: number('headIntervalMs', 5000),
  };
}
