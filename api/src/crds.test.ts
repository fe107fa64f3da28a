import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KINDS, customResourceDefinition, renderCrdYaml } from './crds.ts';
import { undocumentedFields } from './schema.ts';

const crdDir = join(import.meta.dirname, '..', '..', 'crds');

for (const kind of KINDS) {
  test(`crds/${kind.plural}.chaperone.dev.yaml is what api/src generates (run \`make generate\` after a schema change)`, () => {
    const committed = readFileSync(join(crdDir, `${kind.plural}.chaperone.dev.yaml`), 'utf8');
    assert.equal(committed, renderCrdYaml(customResourceDefinition(kind)));
  });

  test(`${kind.kind}: every field has a description`, () => {
    const crd = customResourceDefinition(kind) as {
      spec: { versions: { schema: { openAPIV3Schema: unknown } }[] };
    };
    const schema = crd.spec.versions[0]?.schema.openAPIV3Schema;
    // The API server forbids any description on the root metadata field.
    const missing = [...undocumentedFields(schema)].filter((p) => p !== '.metadata');
    assert.deepEqual(missing, []);
  });

  test(`${kind.kind}: schema uses only structural constructs`, () => {
    const text = JSON.stringify(customResourceDefinition(kind));
    for (const forbidden of ['"anyOf"', '"oneOf"', '"const"', '"patternProperties"', '"$ref"']) {
      assert.ok(!text.includes(forbidden), `${kind.kind} schema contains ${forbidden}`);
    }
  });
}

test('every kind is in the chaperone category with a short name and an Age column', () => {
  for (const kind of KINDS) {
    const crd = customResourceDefinition(kind) as {
      spec: {
        names: { categories: string[]; shortNames: string[] };
        versions: { additionalPrinterColumns: { name: string }[] }[];
      };
    };
    assert.deepEqual(crd.spec.names.categories, ['chaperone']);
    assert.ok(crd.spec.names.shortNames.length > 0);
    assert.ok(crd.spec.versions[0]?.additionalPrinterColumns.some((c) => c.name === 'Age'));
  }
});
