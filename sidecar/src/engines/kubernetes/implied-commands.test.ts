import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KubernetesCommand } from '@chaperone/api';
import { impliedCommands } from './implied-commands.ts';
import { classifyRequest } from './request-info.ts';

function implied(method: string, path: string): KubernetesCommand[] {
  const info = classifyRequest(method, path, '');
  const command: KubernetesCommand = {
    type: 'kubernetes',
    verb: info.verb,
    apiGroup: info.apiGroup,
    resource: info.resource,
    subresource: info.subresource,
    namespace: info.namespace,
    name: info.name,
    nonResourcePath: info.isResourceRequest ? '' : info.path,
  };
  return impliedCommands(command, info.parts).map((i) => i.command);
}
const pod = (verb: string, subresource: string, namespace: string, name: string): KubernetesCommand => ({
  type: 'kubernetes',
  verb,
  apiGroup: '',
  resource: 'pods',
  subresource,
  namespace,
  name,
  nonResourcePath: '',
});

test("nodes/proxy to the kubelet's pod endpoints is also the pod command", () => {
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/exec/a/p/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('POST', '/api/v1/nodes/n:10250/proxy/run/a/p/uid/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/attach/a/p/c'), [pod('create', 'attach', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/portForward/a/p'), [pod('create', 'portforward', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/containerLogs/a/p/c'), [pod('get', 'log', 'a', 'p')]);
  assert.deepEqual(implied('POST', '/api/v1/nodes/n/proxy/checkpoint/a/p/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/EXEC/a/p/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/proxy/nodes/n/exec/a/p/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/exec'), [pod('create', 'exec', '', '')]);
  // Not a pod endpoint, or not the kubelet.
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/metrics'), []);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/constructor/a/p'), []);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n'), []);
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/pods/p/proxy/exec/a/p/c'), []);
  assert.deepEqual(implied('GET', '/apis/x.io/v1/nodes/n/proxy/exec/a/p/c'), []);
});

test('the Namespace object is also decided as cluster-scoped', () => {
  const outside = (verb: string, subresource: string): KubernetesCommand => ({
    type: 'kubernetes',
    verb,
    apiGroup: '',
    resource: 'namespaces',
    subresource,
    namespace: '',
    name: 'a',
    nonResourcePath: '',
  });
  assert.deepEqual(implied('DELETE', '/api/v1/namespaces/a'), [outside('delete', '')]);
  assert.deepEqual(implied('PATCH', '/api/v1/namespaces/a'), [outside('patch', '')]);
  assert.deepEqual(implied('PUT', '/api/v1/namespaces/a/finalize'), [outside('update', 'finalize')]);
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/status'), [outside('get', 'status')]);
  // Objects in the namespace, and cluster-scoped namespace requests, imply nothing.
  assert.deepEqual(implied('DELETE', '/api/v1/namespaces/a/configmaps/c'), []);
  assert.deepEqual(implied('GET', '/api/v1/namespaces'), []);
});
