// Writes crds/<plural>.chaperone.dev.yaml from the schemas in api/src. Run with `npm run generate`.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KINDS, customResourceDefinition, renderCrdYaml } from '../src/crds.ts';

const outDir = join(import.meta.dirname, '..', '..', 'crds');
for (const kind of KINDS) {
  const crd = customResourceDefinition(kind);
  const file = join(outDir, `${kind.plural}.chaperone.dev.yaml`);
  writeFileSync(file, renderCrdYaml(crd));
  console.log(`wrote ${file}`);
}
