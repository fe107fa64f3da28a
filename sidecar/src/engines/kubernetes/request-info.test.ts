import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifyRequest, dryRunMark, fieldSelectorName, parseQuery, UnclassifiableRequest } from './request-info.ts';

// Expected classifications written out from the API server's RequestInfoFactory rules (and its own tests'
// cases), one request per row: method, path?query → verb, group, version, resource, subresource, ns, name.
const CASES: readonly [string, string, string, string, string, string, string, string, string][] = [
  ['GET', '/api/v1/namespaces', 'list', '', 'v1', 'namespaces', '', '', ''],
  ['GET', '/api/v1/namespaces/other', 'get', '', 'v1', 'namespaces', '', 'other', 'other'],
  ['GET', '/api/v1/namespaces/other/status', 'get', '', 'v1', 'namespaces', 'status', 'other', 'other'],
  ['PUT', '/api/v1/namespaces/other/finalize', 'update', '', 'v1', 'namespaces', 'finalize', 'other', 'other'],
  ['GET', '/api/v1/namespaces/other/pods', 'list', '', 'v1', 'pods', '', 'other', ''],
  ['GET', '/api/v1/namespaces/other/pods/foo', 'get', '', 'v1', 'pods', '', 'other', 'foo'],
  ['HEAD', '/api/v1/namespaces/other/pods/foo', 'get', '', 'v1', 'pods', '', 'other', 'foo'],
  ['GET', '/api/v1/pods', 'list', '', 'v1', 'pods', '', '', ''],
  ['GET', '/api/v1/namespaces/other/pods/foo/log', 'get', '', 'v1', 'pods', 'log', 'other', 'foo'],
  ['POST', '/api/v1/namespaces/other/pods/foo/exec', 'create', '', 'v1', 'pods', 'exec', 'other', 'foo'],
  ['GET', '/api/v1/namespaces/other/pods?watch=true', 'watch', '', 'v1', 'pods', '', 'other', ''],
  ['GET', '/api/v1/namespaces/other/pods?watch=1', 'watch', '', 'v1', 'pods', '', 'other', ''],
  ['GET', '/api/v1/namespaces/other/pods?watch=false', 'list', '', 'v1', 'pods', '', 'other', ''],
  ['GET', '/api/v1/watch/namespaces/other/pods', 'watch', '', 'v1', 'pods', '', 'other', ''],
  ['GET', '/api/v1/watch/namespaces/other/pods/foo', 'watch', '', 'v1', 'pods', '', 'other', 'foo'],
  ['GET', '/api/v1/proxy/namespaces/other/pods/foo/a/b', 'proxy', '', 'v1', 'pods', '', 'other', 'foo'],
  ['GET', '/api/v1/namespaces/other/pods/foo/proxy/a/b', 'get', '', 'v1', 'pods', 'proxy', 'other', 'foo'],
  ['POST', '/api/v1/namespaces/other/pods', 'create', '', 'v1', 'pods', '', 'other', ''],
  ['PUT', '/api/v1/namespaces/other/pods/foo', 'update', '', 'v1', 'pods', '', 'other', 'foo'],
  ['PATCH', '/api/v1/namespaces/other/pods/foo', 'patch', '', 'v1', 'pods', '', 'other', 'foo'],
  ['DELETE', '/api/v1/namespaces/other/pods/foo', 'delete', '', 'v1', 'pods', '', 'other', 'foo'],
  ['DELETE', '/api/v1/namespaces/other/pods', 'deletecollection', '', 'v1', 'pods', '', 'other', ''],
  [
    'GET',
    '/apis/apps/v1/namespaces/other/deployments/web/scale',
    'get',
    'apps',
    'v1',
    'deployments',
    'scale',
    'other',
    'web',
  ],
  [
    'GET',
    '/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node',
    'get',
    'rbac.authorization.k8s.io',
    'v1',
    'clusterroles',
    '',
    '',
    'system:node',
  ],
  ['GET', '/apis/apps/v1/deployments', 'list', 'apps', 'v1', 'deployments', '', '', ''],
  [
    'GET',
    '/api/v1/namespaces/other/secrets?fieldSelector=metadata.name%3Ddb',
    'list',
    '',
    'v1',
    'secrets',
    '',
    'other',
    'db',
  ],
  [
    'GET',
    '/api/v1/namespaces/other/secrets?fieldSelector=metadata.name%3D%3Ddb&watch=true',
    'watch',
    '',
    'v1',
    'secrets',
    '',
    'other',
    'db',
  ],
  [
    'GET',
    '/api/v1/namespaces/other/secrets?fieldSelector=metadata.name!%3Ddb',
    'list',
    '',
    'v1',
    'secrets',
    '',
    'other',
    '',
  ],
  ['POST', '/api/v1/namespaces/other/pods?dryRun=All', 'create', '', 'v1', 'pods', '', 'other', ''],
  // Percent-escapes decode before splitting, as Go's URL.Path does.
  ['GET', '/api/v1/namespaces/%6fther/pods/f%6fo', 'get', '', 'v1', 'pods', '', 'other', 'foo'],
];

test('requests are classified as the API server classifies them', () => {
  for (const [method, target, verb, group, version, resource, subresource, namespace, name] of CASES) {
    const [path = '', query = ''] = target.split('?');
    const info = classifyRequest(method, path, query);
    assert.deepEqual(
      [
        info.isResourceRequest,
        info.verb,
        info.apiGroup,
        info.apiVersion,
        info.resource,
        info.subresource,
        info.namespace,
        info.name,
      ],
      [true, verb, group, version, resource, subresource, namespace, name],
      `${method} ${target}`,
    );
  }
});

test('discovery and other short paths are non-resource requests with the method as verb', () => {
  for (const [method, path] of [
    ['GET', '/'],
    ['GET', '/api'],
    ['GET', '/api/v1'],
    ['GET', '/apis'],
    ['GET', '/apis/apps'],
    ['GET', '/apis/apps/v1'],
    ['GET', '/version'],
    ['POST', '/metrics'],
    ['GET', '/logs/kube-apiserver.log'],
  ] as const) {
    const info = classifyRequest(method, path, '');
    assert.equal(info.isResourceRequest, false, path);
    assert.equal(info.verb, method.toLowerCase());
    assert.equal(info.path, path);
  }
});

test('dryRun=All is noted; the verb stays what the API server authorizes', () => {
  assert.equal(classifyRequest('DELETE', '/api/v1/namespaces/a/pods/b', 'dryRun=All').dryRun, true);
  assert.equal(classifyRequest('DELETE', '/api/v1/namespaces/a/pods/b', 'dryRun=All').verb, 'delete');
  assert.equal(classifyRequest('DELETE', '/api/v1/namespaces/a/pods/b', '').dryRun, false);
});

// What Go's server and this classifier could read differently is refused, never guessed.
const REFUSED: readonly [string, string, string][] = [
  ['GET', '/api/v1/namespaces/a/secrets%2Fdb', ''],
  ['GET', '/api/v1/namespaces/a/secrets%2fdb', ''],
  ['GET', '/api/v1/namespaces/a/pods/%2e%2e/secrets/db', ''],
  ['GET', '/api/v1/namespaces/a/pods/../secrets/db', ''],
  ['GET', '/api/v1/namespaces/a/./pods', ''],
  ['GET', '/api/v1//namespaces/a/pods', ''],
  ['GET', '//api/v1/namespaces/a/pods', ''],
  ['GET', '/api/v1/namespaces/a/pods%5cx', ''],
  ['GET', '/api/v1/namespaces/a/pods/%zz', ''],
  ['GET', '/api/v1/namespaces/a/pods/%00', ''],
  ['GET', '/api/v1/namespaces/a/pods/%ff', ''],
  ['GET', '/api/v1/namespaces/a/pods', 'watch=yes'],
  ['GET', '/api/v1/namespaces/a/pods', 'watch='],
  ['GET', '/api/v1/namespaces/a/pods', 'watch=true&watch=false'],
  ['GET', '/api/v1/namespaces/a/pods', 'watch=true;x=1'],
  ['GET', '/api/v1/namespaces/a/pods', 'a=%zz'],
  ['GET', '/api/v1/namespaces/a/pods', 'fieldSelector=metadata.name%3Da&fieldSelector=metadata.name%3Db'],
  ['GET', '/api/v1/namespaces/a/pods', 'fieldSelector=metadata.name%3Da,metadata.name%3Db'],
  ['GET', '/api/v1/namespaces/a/pods', 'fieldSelector=nonsense'],
  ['POST', '/api/v1/namespaces/a/pods', 'dryRun=Some'],
  ['OPTIONS', '/api/v1/namespaces/a/pods', ''],
  ['GET', '/api/v1/watch', ''],
  ['GET', 'api/v1/pods', ''],
];

test('ambiguous paths and queries are refused', () => {
  for (const [method, path, query] of REFUSED) {
    assert.throws(() => classifyRequest(method, path, query), UnclassifiableRequest, `${method} ${path}?${query}`);
  }
});

test('query parsing follows url.ParseQuery: + is a space, repeated keys keep their order', () => {
  const q = parseQuery('a=1&b=x+y&a=2&c&=d');
  assert.deepEqual(q.get('a'), ['1', '2']);
  assert.deepEqual(q.get('b'), ['x y']);
  assert.deepEqual(q.get('c'), ['']);
  assert.deepEqual(q.get(''), ['d']);
});

test('field selectors pin a name only for an exact metadata.name match; escapes are honoured', () => {
  assert.equal(fieldSelectorName('metadata.name=a'), 'a');
  assert.equal(fieldSelectorName('metadata.name==a,status.phase=Running'), 'a');
  assert.equal(fieldSelectorName('status.phase=Running'), undefined);
  assert.equal(fieldSelectorName('metadata.name!=a'), undefined);
  assert.equal(fieldSelectorName('metadata.name=a\\,b'), 'a,b');
  assert.equal(fieldSelectorName('metadata.name=a,metadata.name=a'), 'a');
});

test('dryRun is noted only where the API server runs a dry run', () => {
  // Reads, connect subresources and non-resource URLs have none (the API server ignores it or answers 400).
  assert.equal(classifyRequest('GET', '/api/v1/namespaces/a/configmaps/b', 'dryRun=All').dryRun, false);
  assert.equal(classifyRequest('POST', '/api/v1/namespaces/a/pods/b/exec', 'dryRun=All').dryRun, false);
  assert.equal(classifyRequest('GET', '/api/v1/nodes/n/proxy/exec/a/b/c', 'dryRun=All').dryRun, false);
  assert.equal(classifyRequest('POST', '/metrics', 'dryRun=All').dryRun, false);
  assert.equal(classifyRequest('PATCH', '/api/v1/namespaces/a/configmaps/b', 'dryRun=All').dryRun, true);
  assert.equal(classifyRequest('POST', '/api/v1/namespaces/a/pods/b/eviction', 'dryRun=All').dryRun, true);
  // TokenRequest ignores it and mints the token: refused rather than recorded as a dry run.
  assert.throws(
    () => classifyRequest('POST', '/api/v1/namespaces/a/serviceaccounts/b/token', 'dryRun=All'),
    UnclassifiableRequest,
  );
  assert.equal(classifyRequest('POST', '/api/v1/namespaces/a/serviceaccounts/b/token', '').verb, 'create');
});

test("a dry run is recorded as verified only in kube-apiserver's built-in groups", () => {
  const mark = (method: string, path: string) => dryRunMark(classifyRequest(method, path, 'dryRun=All'));
  assert.equal(mark('DELETE', '/api/v1/namespaces/a/configmaps/b'), ' (dry run)');
  assert.equal(mark('POST', '/apis/apps/v1/namespaces/a/deployments'), ' (dry run)');
  // A CRD's or an aggregated API server's group: asked for, not verified.
  assert.match(mark('DELETE', '/apis/metrics.k8s.io/v1beta1/namespaces/a/pods/b'), /dry run asked, not verified/);
  assert.match(mark('DELETE', '/apis/x.example.com/v1/namespaces/a/widgets/b'), /group x\.example\.com/);
  assert.equal(mark('GET', '/apis/x.example.com/v1/namespaces/a/widgets/b'), '');
  assert.equal(dryRunMark(classifyRequest('DELETE', '/apis/x.example.com/v1/namespaces/a/widgets/b', '')), '');
});
