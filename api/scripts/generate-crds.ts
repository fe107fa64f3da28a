// Writes crds/<plural>.chaperone.dev.yaml from the schemas in api/src, and copies the CRDs and the
// admission policies (config/admission) into the Helm chart, which can only package files inside it.
// Run with `make generate`; tests fail when a copy is stale.
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KINDS, customResourceDefinition, renderCrdYaml } from '../src/crds.ts';

const root = join(import.meta.dirname, '..', '..');
const chart = join(root, 'charts', 'chaperone');
mkdirSync(join(chart, 'crds'), { recursive: true });
mkdirSync(join(chart, 'files', 'admission'), { recursive: true });
for (const kind of KINDS) {
  const crd = customResourceDefinition(kind);
  const name = `${kind.plural}.chaperone.dev.yaml`;
  writeFileSync(join(root, 'crds', name), renderCrdYaml(crd));
  copyFileSync(join(root, 'crds', name), join(chart, 'crds', name));
  console.log(`wrote crds/${name} and its copy in the chart`);
}
for (const name of readdirSync(join(root, 'config', 'admission'))) {
  copyFileSync(join(root, 'config', 'admission', name), join(chart, 'files', 'admission', name));
  console.log(`copied config/admission/${name} into the chart`);
}
