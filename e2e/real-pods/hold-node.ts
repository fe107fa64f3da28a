// Starts a local node for the node-cleanup test and holds it until this process is killed: prints one
// JSON line with where the node lives on the host, then waits. The test SIGKILLs this process, as an
// out-of-memory kill or a CI timeout would, and checks what is left and that the next harness removes it.
import { ENV, controlPlaneEnv } from '../harness/env.ts';
import { startLocalNode } from '../harness/node.ts';

const cp = controlPlaneEnv();
const node = await startLocalNode({
  runDir: process.env[ENV.runDir] ?? '',
  controlPlane: { kubeconfig: cp.kubeconfig, server: cp.server, caFile: cp.caFile },
});
console.log(JSON.stringify({ host: node.host, dir: node.dir }));
setInterval(() => undefined, 60_000);
