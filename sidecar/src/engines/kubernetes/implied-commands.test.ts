import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KubernetesCommand } from '@chaperone/api';
import { impliedCommands } from './implied-commands.ts';
import { proxyRefusal, proxyTargetName } from './kubelet-paths.ts';
import { classifyRequest, type RequestInfo } from './request-info.ts';

function commandOf(info: RequestInfo): KubernetesCommand {
  return {
    type: 'kubernetes',
    verb: info.verb,
    apiGroup: info.apiGroup,
    resource: info.resource,
    subresource: info.subresource,
    namespace: info.namespace,
    name: info.name,
    nonResourcePath: info.isResourceRequest ? '' : info.path,
  };
}
function implied(method: string, path: string): KubernetesCommand[] {
  const info = classifyRequest(method, path, '');
  return impliedCommands(commandOf(info), info.parts).map((i) => i.command);
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

const node = (verb: string, subresource: string, name = 'n'): KubernetesCommand => ({
  type: 'kubernetes',
  verb,
  apiGroup: '',
  resource: 'nodes',
  subresource,
  namespace: '',
  name,
  nonResourcePath: '',
});
const allPods: KubernetesCommand = { ...pod('list', '', '', '') };

test("nodes/proxy to the kubelet's pod endpoints is also the pod command", () => {
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/exec/a/p/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('POST', '/api/v1/nodes/n:10250/proxy/run/a/p/uid/c'), [
    { ...node('create', 'proxy', 'n'), name: 'n' },
    pod('create', 'exec', 'a', 'p'),
  ]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/attach/a/p/c'), [pod('create', 'attach', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/portForward/a/p'), [pod('create', 'portforward', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/containerLogs/a/p/c'), [pod('get', 'log', 'a', 'p')]);
  // Checkpoint dumps the container's memory (exec) and the kubelet authorizes it as nodes/checkpoint.
  assert.deepEqual(implied('POST', '/api/v1/nodes/n/proxy/checkpoint/a/p/c'), [
    pod('create', 'exec', 'a', 'p'),
    node('create', 'checkpoint'),
  ]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/EXEC/a/p/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/proxy/nodes/n/exec/a/p/c'), [pod('create', 'exec', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/exec'), [pod('create', 'exec', '', '')]);
  // Not a proxy, or not the kubelet.
  assert.deepEqual(implied('GET', '/api/v1/nodes/n'), []);
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/pods/p/proxy/exec/a/p/c'), []);
  assert.deepEqual(implied('GET', '/apis/x.io/v1/nodes/n/proxy/exec/a/p/c'), []);
});

test("nodes/proxy to the kubelet's node endpoints is what the kubelet authorizes it as", () => {
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/metrics'), [node('get', 'metrics')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/metrics/cadvisor'), [node('get', 'metrics')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/stats/summary'), [node('get', 'stats')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/logs/'), [node('get', 'log')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/spec'), [node('get', 'spec')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/configz'), [node('get', 'configz')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/healthz'), [node('get', 'healthz')]);
  // Every pod spec on the node: also a list of pods in every namespace.
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/pods'), [allPods, node('get', 'pods')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/runningpods/'), [allPods, node('get', 'pods')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/n/proxy/Pods'), [allPods, node('get', 'pods')]);
  assert.deepEqual(implied('GET', '/api/v1/nodes/https:n:10250/proxy/pods'), [
    { ...node('get', 'proxy'), name: 'n' },
    allPods,
    node('get', 'pods'),
  ]);
});

test('unknown kubelet paths and unsplittable proxy targets are refused', () => {
  const refusal = (method: string, path: string): string | undefined => {
    const info = classifyRequest(method, path, '');
    return proxyRefusal(commandOf(info), info.parts);
  };
  assert.match(refusal('GET', '/api/v1/nodes/n/proxy/debug/pprof/heap') ?? '', /debug\/pprof\/heap/);
  assert.match(refusal('PUT', '/api/v1/nodes/n/proxy/debug/flags/v') ?? '', /kubelet path/);
  assert.match(refusal('GET', '/api/v1/nodes/n/proxy') ?? '', /kubelet path \/:/);
  assert.match(refusal('GET', '/api/v1/nodes/n/proxy/constructor/a/p') ?? '', /kubelet path/);
  assert.match(refusal('GET', '/api/v1/nodes/ftp:n:1/proxy/pods') ?? '', /not \[scheme:\]name/);
  assert.match(refusal('GET', '/api/v1/namespaces/a/services/a:b:c:d/proxy/') ?? '', /not \[scheme:\]name/);
  assert.equal(refusal('GET', '/api/v1/nodes/n/proxy/metrics'), undefined);
  assert.equal(refusal('GET', '/api/v1/nodes/n/proxy/exec/a/p/c'), undefined);
  assert.equal(refusal('GET', '/api/v1/namespaces/a/pods/p:8080/proxy/anything'), undefined);
  assert.equal(refusal('GET', '/api/v1/nodes/n'), undefined);
});

test('a proxy target spelled with a scheme or port is also its plain name', () => {
  const svc = (name: string): KubernetesCommand => ({ ...pod('get', 'proxy', 'a', name), resource: 'services' });
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/services/https:s:10250/proxy/pods'), [svc('s')]);
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/services/s:http/proxy/'), [svc('s')]);
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/pods/p:8080/proxy/x'), [pod('get', 'proxy', 'a', 'p')]);
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/pods/p/proxy/x'), []);
  assert.deepEqual(implied('GET', '/api/v1/namespaces/a/services/s'), []);
});

test('proxy targets split as utilnet.SplitSchemeNamePort splits them', () => {
  assert.equal(proxyTargetName('https:n:10250'), 'n');
  assert.equal(proxyTargetName('n:10250'), 'n');
  assert.equal(proxyTargetName('n'), 'n');
  assert.equal(proxyTargetName(':10250'), undefined);
  assert.equal(proxyTargetName('ftp:n:1'), undefined);
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
