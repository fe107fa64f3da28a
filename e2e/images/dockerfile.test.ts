// images/Dockerfile is the one image definition: `make images` reads its final stages (images/dockerfile.ts)
// for the layers and configuration it packs without a registry. Every line of the final stages must be
// understood, and what the images promise (non-root, minimal, opa in the operator) must be there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { imageStage } from '../../images/dockerfile.ts';
import { LAYERS, NONROOT_UID } from '../../images/rootfs.ts';
import { REPO_ROOT } from '../harness/tools.ts';
import { SIDECAR_NODE_FLAGS } from '../../sidecar/src/bin/node-flags.ts';

const dockerfile = readFileSync(join(REPO_ROOT, 'images', 'Dockerfile'), 'utf8');

test('the operator, sidecar and agent stages are understood entirely, as non-root images FROM scratch', () => {
  for (const target of ['operator', 'sidecar', 'agent']) {
    const stage = imageStage(dockerfile, target);
    assert.equal(stage.config.User, `${String(NONROOT_UID)}:${String(NONROOT_UID)}`, `${target} runs as nonroot`);
    assert.ok(stage.layers.length > 0);
    for (const layer of stage.layers) assert.ok((LAYERS as readonly string[]).includes(layer), `${target}: ${layer}`);
    assert.equal(stage.config.Env[0], 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
    assert.equal(stage.config.Labels['org.opencontainers.image.title'], `chaperone-${target}`);
  }
  const operator = imageStage(dockerfile, 'operator');
  assert.deepEqual(operator.layers, ['node-runtime', 'operator'], 'the Node.js runtime layer is shared');
  assert.deepEqual(
    operator.config.Entrypoint,
    ['/usr/local/bin/node', '/app/operator/chaperone-operator.js'],
    "the operator's bundle (operator/scripts/build.ts), not its sources",
  );
  assert.ok(operator.config.Env.includes('CHAPERONE_OPA=/usr/local/bin/opa'), 'the operator finds opa in its image');
  assert.deepEqual(Object.keys(operator.config.ExposedPorts).sort(), ['8080/tcp', '9443/tcp']);
  const sidecar = imageStage(dockerfile, 'sidecar');
  assert.deepEqual(sidecar.layers, ['node-runtime', 'sidecar']);
  assert.deepEqual(
    sidecar.config.Entrypoint,
    ['/usr/local/bin/node', ...SIDECAR_NODE_FLAGS, '/app/sidecar/chaperone-sidecar.js'],
    'the image runs the sidecar with the V8 flags the bench measures (sidecar/src/bin/node-flags.ts)',
  );
  assert.deepEqual(imageStage(dockerfile, 'agent').layers, ['agent']);
});

test('a final stage with an instruction make images cannot reproduce is refused, not silently dropped', () => {
  const base = 'FROM node:24 AS build\nRUN true\n\nFROM scratch AS app\nCOPY --from=build /rootfs/agent/ /\n';
  assert.equal(imageStage(`${base}USER 1:1\n`, 'app').config.User, '1:1');
  assert.throws(() => imageStage(`${base}RUN rm -rf /tmp\n`, 'app'), /RUN is not allowed in a final stage/);
  assert.throws(() => imageStage(`${base}COPY README.md /\n`, 'app'), /copies only --from=build/);
  assert.throws(() => imageStage(`${base}ENTRYPOINT /bin/sh -c x\n`, 'app'), /exec \(JSON array\) form/);
  assert.throws(
    () => imageStage(`${base}FROM debian AS other\nCOPY --from=build /rootfs/agent/ /\n`, 'other'),
    /FROM scratch/,
  );
  assert.throws(() => imageStage(base, 'missing'), /no stage missing/);
});

test('ENV and LABEL pairs, quoting, inheritance and continuation lines read as Docker reads them', () => {
  const stage = imageStage(
    [
      'FROM scratch AS base',
      'COPY --from=build /rootfs/node-runtime/ /',
      'ENV A=1 B="two words"',
      'CMD ["inherited"]',
      'FROM base AS app',
      '# a comment',
      'COPY --from=build /rootfs/sidecar/ / ',
      'ENV A=3',
      'LABEL k="v \\"q\\"" \\',
      '      other=x',
      'ENTRYPOINT ["/bin/app"]',
      'EXPOSE 53/udp 80',
    ].join('\n'),
    'app',
  );
  assert.deepEqual(stage.layers, ['node-runtime', 'sidecar']);
  assert.deepEqual(stage.config.Env.slice(1), ['A=3', 'B=two words']);
  assert.deepEqual(stage.config.Labels, { k: 'v "q"', other: 'x' });
  assert.equal(stage.config.Cmd, undefined, 'ENTRYPOINT resets an inherited CMD');
  assert.deepEqual(Object.keys(stage.config.ExposedPorts), ['53/udp', '80/tcp']);
});
