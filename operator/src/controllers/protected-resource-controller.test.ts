import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Secret } from '@kubernetes/client-node';
import type { ProtectedResource } from '@chaperone/api';
import { REASON_SECRET_NOT_ALLOWED, REASON_SECRET_NOT_FOUND, resolve } from './protected-resource-controller.ts';

const CREDENTIALS = 'chaperone-credentials';
const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

function secret(data: Record<string, string | Buffer>, allowed?: string): V1Secret {
  return {
    metadata: allowed === undefined ? {} : { annotations: { 'chaperone.dev/allowed-namespaces': allowed } },
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)])),
  };
}

/** A delivered postgres resource of namespace `ci`, with `spec` merged in. */
function resource(spec: Partial<ProtectedResource['spec']>): ProtectedResource {
  return {
    apiVersion: 'chaperone.dev/v1alpha1',
    kind: 'ProtectedResource',
    metadata: { name: 'db', namespace: 'ci' },
    spec: {
      type: 'postgres',
      endpoint: { host: 'db.example', port: 5432, database: 'orders' },
      credentialSecretRef: { name: 'db', namespace: CREDENTIALS, usernameKey: 'username', passwordKey: 'password' },
      ...spec,
    } as ProtectedResource['spec'],
  };
}

const KEY = Buffer.alloc(32, 7);

/** The reason of a resolution that is not ready (failing the test when it is). */
function reasonOf(r: ReturnType<typeof resolve>): string {
  assert.equal(r.ready, false, r.message);
  return r.reason;
}

test('resolve: a masking key and a read-only login in the credential namespace are checked like the credential', () => {
  const secrets = new Map<string, V1Secret>([
    [`${CREDENTIALS}/db`, secret({ username: 'app', password: 'pw' }, 'ci')],
    [`${CREDENTIALS}/db-key`, secret({ key: KEY }, 'ci')],
    [`${CREDENTIALS}/db-reader`, secret({ username: 'reader', password: 'pw2' }, 'ci')],
    [`${CREDENTIALS}/other-key`, secret({ key: KEY }, 'someone-else')],
    ['ci/db-key', secret({ key: KEY })],
  ]);
  const lookup = (name: string, namespace: string) => secrets.get(`${namespace}/${name}`);
  const both = resource({
    maskingKeySecretRef: { name: 'db-key', key: 'key', namespace: CREDENTIALS },
    readOnlyCredentialSecretRef: {
      name: 'db-reader',
      namespace: CREDENTIALS,
      usernameKey: 'username',
      passwordKey: 'password',
    },
  });
  assert.equal(resolve(both, lookup, CREDENTIALS).ready, true);

  const notAllowed = resolve(
    resource({ maskingKeySecretRef: { name: 'other-key', key: 'key', namespace: CREDENTIALS } }),
    lookup,
    CREDENTIALS,
  );
  assert.equal(reasonOf(notAllowed), REASON_SECRET_NOT_ALLOWED);
  assert.match(notAllowed.message, /other-key.*does not list ci/);

  const elsewhere = resolve(
    resource({ maskingKeySecretRef: { name: 'db-key', key: 'key', namespace: 'kube-system' } }),
    lookup,
    CREDENTIALS,
  );
  assert.equal(reasonOf(elsewhere), REASON_SECRET_NOT_ALLOWED);
  assert.match(elsewhere.message, /not the operator's credential namespace/);

  // Without a namespace the key is the resource namespace's, as before.
  assert.equal(
    resolve(resource({ maskingKeySecretRef: { name: 'db-key', key: 'key' } }), lookup, CREDENTIALS).ready,
    true,
  );
  const missingReader = resolve(
    resource({
      readOnlyCredentialSecretRef: { name: 'nope', namespace: CREDENTIALS, usernameKey: 'u', passwordKey: 'p' },
    }),
    lookup,
    CREDENTIALS,
  );
  assert.equal(reasonOf(missingReader), REASON_SECRET_NOT_FOUND);
  assert.match(missingReader.message, new RegExp(`not found in namespace ${CREDENTIALS}`));
});
