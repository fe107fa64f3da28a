// A local Kubernetes node that runs real pods next to the harness's control plane: containerd + runc +
// the CNI bridge (Debian packages), kubelet, kube-proxy and kube-scheduler (built at the control plane's
// version), and CoreDNS for cluster DNS — all inside namespaces of their own, so the node leaves the
// host as it found it:
//
// - a PID namespace whose init is a shell reading this process's pipe: when the harness stops the node,
//   dies, or is killed, the init exits and the kernel kills every process of the node (containerd, its
//   shims, every container) — nothing outlives the node;
// - a mount namespace: tmpfs on /run, overlays on /var/lib and /var/log whose upper layers live in the
//   node's directory, so the kubelet's and CNI's fixed paths (/var/lib/kubelet/device-plugins,
//   /var/lib/cni, /var/log/containers, /run/netns, /run/xtables.lock…) never touch the host's; every
//   mount (overlay snapshots, volume tmpfs, netns bind mounts) disappears with the namespace;
// - a network namespace joined to the host by one veth pair (host end chp<N>, 10.213.N.1/30; node end
//   eth0, 10.213.N.2): the CNI bridge, every iptables chain kube-proxy and the bridge plugin write, and
//   the node's sysctls live there and vanish with it. The host gets only a route to the pod range
//   10.214.N.0/24 through its own veth, which goes when the veth goes;
// - the kubelet's kernel tunables (vm.overcommit_memory, kernel.panic, …, which it would otherwise
//   rewrite host-wide) are presented to it, inside the mount namespace, as files already holding the
//   values it wants; the host's values are never written;
// - cgroups are not namespaced: the kubelet's cgroup root /chaperone-node-<pid>-<N> is created here in
//   every hierarchy and removed when the node stops (or by the next harness, if this process was killed).
//
// The API server and PostgreSQL listen on 127.0.0.1; pods reach them through TCP forwarders on the
// host's end of the link (tcp-forwarder.ts): the `kubernetes` Service's EndpointSlice points there (the
// launcher runs without an endpoint reconciler), kube-proxy does the rest, as in any cluster.
// The node is tainted chaperone.dev/local-node:NoSchedule so only pods that tolerate it run here: test
// files that do not ask for a node keep their pods Pending as before.
import { spawn, execFile, execFileSync, type ChildProcess } from 'node:child_process';
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  rmdirSync,
  writeFileSync,
} from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { RUN_ROOT, isAlive, recordServer, waitForExit } from './processes.ts';
import { freePort } from './postgres.ts';
import { forwardTcp, type TcpForwarder } from './tcp-forwarder.ts';
import { REPO_ROOT, toolPath } from './tools.ts';

const execFileAsync = promisify(execFile);

/** The taint every local node carries; pods meant for it tolerate it (LOCAL_NODE_TOLERATION). */
export const LOCAL_NODE_TAINT = { key: 'chaperone.dev/local-node', effect: 'NoSchedule' } as const;
export const LOCAL_NODE_TOLERATION: k8s.V1Toleration = {
  key: LOCAL_NODE_TAINT.key,
  operator: 'Exists',
  effect: LOCAL_NODE_TAINT.effect,
};
export const LOCAL_NODE_NAME = 'chaperone-node';

/** Prefix of the kubelet's cgroup root in every hierarchy: chaperone-node-<owner pid>-<network index>. */
const CGROUP_PREFIX = 'chaperone-node-';
const CGROUP_FS = '/sys/fs/cgroup';
/** Claims of network indexes, one directory each, holding the owner's pid. */
const NETWORK_CLAIMS = join(RUN_ROOT, 'node-networks');
const VETH_PREFIX = 'chp';

/** What the kubelet sets host-wide at start unless it already finds these values (container_manager_linux.go). */
export const KUBELET_KERNEL_TUNABLES: Readonly<Record<string, string>> = {
  'vm/overcommit_memory': '1',
  'vm/panic_on_oom': '0',
  'kernel/panic': '10',
  'kernel/panic_on_oops': '1',
  'kernel/keys/root_maxkeys': '1000000',
  'kernel/keys/root_maxbytes': '25000000',
};

/** Fixed host paths the node's programs use; the node must leave every one of them as it found it. */
export const HOST_PATHS_THE_NODE_SHADOWS = [
  '/var/lib/kubelet',
  '/var/lib/cni',
  '/var/lib/containerd',
  '/var/log/pods',
  '/var/log/containers',
  '/run/containerd',
  '/run/netns',
  '/run/xtables.lock',
  '/etc/cni',
  '/opt/cni',
  '/opt/containerd',
] as const;

export interface LocalNodeControlPlane {
  /** Admin kubeconfig (system:masters). */
  readonly kubeconfig: string;
  /** https://127.0.0.1:PORT */
  readonly server: string;
  /** The cluster CA; its key (ca.key beside it, the launcher's layout) signs the node components' certificates. */
  readonly caFile: string;
}

export interface LocalNodeOptions {
  /** The harness run directory (the node keeps its state in a subdirectory). */
  readonly runDir: string;
  readonly controlPlane: LocalNodeControlPlane;
  /** Image archives to import into the node's containerd (default: every image `make images` built). */
  readonly images?: readonly string[];
  /** Progress lines (default: none). */
  readonly log?: (line: string) => void;
  /** Deadline for the node to become Ready, ms (default 180 s: the kubelet and CoreDNS build caches on a busy machine). */
  readonly timeoutMs?: number;
}

export interface LocalNode {
  readonly name: string;
  /** The node's address: kubelet, CoreDNS (the pods' nameserver). */
  readonly nodeIp: string;
  /** This machine as pods see it (the host's end of the node's link). */
  readonly hostIp: string;
  readonly podCidr: string;
  /** The node's state: configuration, logs, containerd's root, the kubelet's root. */
  readonly dir: string;
  /** containerd's socket (for `ctr -a SOCKET -n k8s.io ...`). */
  readonly containerdSocket: string;
  /** Where the node lives on the host: its namespaces' init, the namespaces, its cgroup root, the host end of its link. */
  readonly host: NodeHostHandles;
  /** Makes a server on 127.0.0.1:port reachable from pods at hostIp:port (the same port number when free). */
  exposeHostPort(port: number): Promise<{ host: string; port: number }>;
  importImages(archives: readonly string[]): Promise<void>;
  /** The log of one of the node's programs. */
  logs(component: NodeComponent): string;
  /** Runs a command inside the node's namespaces (for example `iptables-save`) and returns its stdout. */
  exec(command: string, args: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

export interface NodeHostHandles {
  /** Host pid of the init of the node's PID namespace (killing it ends every process of the node). */
  readonly initPid: number;
  /** Host pid of the unshare that created the namespaces (the init's parent). */
  readonly unsharePid: number;
  /** The node's namespaces as /proc/PID/ns links read them, e.g. `pid:[4026532301]`. */
  readonly namespaces: { readonly pid: string; readonly mnt: string; readonly net: string };
  /** Name of the kubelet's cgroup root in every hierarchy. */
  readonly cgroupRoot: string;
  /** Host end of the node's veth pair. */
  readonly veth: string;
}

export type NodeComponent = 'containerd' | 'kubelet' | 'kube-proxy' | 'kube-scheduler' | 'coredns';

/** Where `make images` wrote its archives (.images/images.json). */
export function builtImageArchives(): string[] {
  const record = join(REPO_ROOT, '.images', 'images.json');
  if (!existsSync(record)) throw new Error('no images in .images/; run `make images`');
  const images = JSON.parse(readFileSync(record, 'utf8')) as { image: string; path: string }[];
  return images.map((i) => join(REPO_ROOT, '.images', `${i.image}.tar`));
}

/** The reference `make images` gave an image (operator, sidecar, agent, pause). */
export function builtImageRef(image: string): string {
  const record = join(REPO_ROOT, '.images', 'images.json');
  if (!existsSync(record)) throw new Error('no images in .images/; run `make images`');
  const found = (JSON.parse(readFileSync(record, 'utf8')) as { image: string; ref: string }[]).find(
    (i) => i.image === image,
  );
  if (found === undefined) throw new Error(`make images built no ${image} image`);
  return found.ref;
}

function run(command: string, args: readonly string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * Removes what a killed harness left of its nodes: processes still in their cgroups, the cgroups, network
 * claims, and (given the run directory) node directories whose owner is gone. Every namespace dies with its
 * init when the owner's pipe closes, and the veth pair and the host's route with the network namespace;
 * what is left here is what the kernel does not remove by itself. startLocalNode calls it first.
 */
export function reapDeadNodes(runDir?: string): void {
  for (const root of nodeCgroupRoots()) {
    const owner = Number(/^chaperone-node-(\d+)-/.exec(root)?.[1]);
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && isAlive(owner)) continue;
    removeCgroupRoot(root);
  }
  if (existsSync(NETWORK_CLAIMS)) {
    for (const claim of readdirSync(NETWORK_CLAIMS)) {
      const owner = readOwner(join(NETWORK_CLAIMS, claim));
      if (owner !== undefined && owner !== process.pid && isAlive(owner)) continue;
      rmSync(join(NETWORK_CLAIMS, claim), { recursive: true, force: true });
    }
    if (readdirSync(NETWORK_CLAIMS).length === 0) rmSync(NETWORK_CLAIMS, { recursive: true, force: true });
  }
  if (runDir !== undefined && existsSync(runDir)) {
    for (const entry of readdirSync(runDir)) {
      const owner = Number(/^node-(\d+)-\d+$/.exec(entry)?.[1]);
      if (!Number.isInteger(owner) || owner <= 0 || owner === process.pid || isAlive(owner)) continue;
      // Its init exits when the owner's pipe closes; should it still be there, end it (and so the node).
      const init = Number(readIfPresent(join(runDir, entry, 'init.pid')));
      if (Number.isInteger(init) && init > 0 && readIfPresent(`/proc/${String(init)}/cmdline`) === INIT_CMDLINE) {
        try {
          process.kill(init, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      rmSync(join(runDir, entry), { recursive: true, force: true });
      rmSync(join(runDir, `node-${String(owner)}.server-pid`), { force: true });
    }
  }
}

/** The node namespace init's command line, as /proc/PID/cmdline shows it. */
const INIT_SCRIPT = 'echo ready; read -r _';
const INIT_CMDLINE = ['/bin/sh', '-c', INIT_SCRIPT, ''].join('\0');

function readIfPresent(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function readOwner(dir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dir, 'owner.pid'), 'utf8'));
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function cgroupHierarchies(): string[] {
  if (!existsSync(CGROUP_FS)) return [];
  const entries = readdirSync(CGROUP_FS, { withFileTypes: true }).filter((e) => e.isDirectory());
  // cgroup v2 alone: the hierarchy is /sys/fs/cgroup itself (it has cgroup.controllers).
  if (existsSync(join(CGROUP_FS, 'cgroup.controllers'))) return [CGROUP_FS];
  return entries.map((e) => join(CGROUP_FS, e.name));
}

/** Names of node cgroup roots present in any hierarchy. */
export function nodeCgroupRoots(): string[] {
  const names = new Set<string>();
  for (const hierarchy of cgroupHierarchies()) {
    for (const entry of readdirSync(hierarchy, { withFileTypes: true })) {
      if (entry.isDirectory() && entry.name.startsWith(CGROUP_PREFIX)) names.add(entry.name);
    }
  }
  return [...names].sort();
}

/** Every directory of a cgroup tree, deepest first. */
function cgroupTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) walk(join(d, e.name));
    out.push(d);
  };
  walk(dir);
  return out;
}

function cgroupProcesses(dir: string): number[] {
  const pids: number[] = [];
  for (const d of cgroupTree(dir)) {
    try {
      for (const line of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n')) {
        if (line !== '') pids.push(Number(line));
      }
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** Kills every process left in the cgroup root `name` and removes its directories in every hierarchy. */
function removeCgroupRoot(name: string): void {
  const dirs = cgroupHierarchies()
    .map((h) => join(h, name))
    .filter((d) => existsSync(d));
  for (let attempt = 0; attempt < 50; attempt++) {
    let left = false;
    for (const dir of dirs) {
      for (const pid of cgroupProcesses(dir)) {
        left = true;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      for (const d of cgroupTree(dir)) {
        try {
          rmdirSync(d);
        } catch {
          left = true;
        }
      }
    }
    if (!left) return;
    execFileSync('sleep', ['0.1']);
  }
  const remaining = dirs.filter((d) => existsSync(d));
  if (remaining.length > 0) throw new Error(`could not remove cgroups ${remaining.join(', ')}`);
}

function createCgroupRoot(name: string): void {
  for (const hierarchy of cgroupHierarchies()) {
    const dir = join(hierarchy, name);
    mkdirSync(dir, { recursive: true });
    // cgroup v1 cpuset: a new cgroup has no CPUs or memory nodes until given its parent's.
    if (existsSync(join(dir, 'cpuset.cpus')) && readFileSync(join(dir, 'cpuset.cpus'), 'utf8').trim() === '') {
      writeFileSync(join(dir, 'cpuset.cpus'), readFileSync(join(hierarchy, 'cpuset.cpus')));
      writeFileSync(join(dir, 'cpuset.mems'), readFileSync(join(hierarchy, 'cpuset.mems')));
    }
  }
}

/** Claims a network index no other node uses and no host route overlaps. */
function claimNetwork(): number {
  mkdirSync(NETWORK_CLAIMS, { recursive: true });
  const routes = run('ip', ['-o', '-4', 'route', 'show', 'table', 'all']);
  const links = run('ip', ['-o', 'link', 'show']);
  for (let index = 1; index < 255; index++) {
    if (routes.includes(`10.213.${index}.`) || routes.includes(`10.214.${index}.`)) continue;
    if (new RegExp(`: ${VETH_PREFIX}${index}[@:]`).test(links)) continue;
    const claim = join(NETWORK_CLAIMS, String(index));
    try {
      mkdirSync(claim);
    } catch {
      continue;
    }
    writeFileSync(join(claim, 'owner.pid'), String(process.pid));
    return index;
  }
  throw new Error('no free network index for a local node (10.213.N.0/30, 10.214.N.0/24)');
}

/** Signs a client certificate for a node component with the cluster CA (openssl, like the PostgreSQL harness). */
function clientCertificate(dir: string, name: string, subject: string, ca: { cert: string; key: string }): void {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  run('openssl', [
    'req',
    '-new',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-subj',
    subject,
    '-keyout',
    key,
    '-out',
    csr,
  ]);
  writeFileSync(ext, 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n');
  run('openssl', [
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    ca.cert,
    '-CAkey',
    ca.key,
    '-CAcreateserial',
    '-CAserial',
    join(dir, 'ca.srl'),
    '-days',
    '7',
    '-extfile',
    ext,
    '-out',
    join(dir, `${name}.crt`),
  ]);
}

function kubeconfig(server: string, caFile: string, pki: string, name: string): string {
  // The API server's certificate names `kubernetes`, not the forwarder's address.
  return `apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: ${server}
    certificate-authority: ${caFile}
    tls-server-name: kubernetes
users:
- name: ${name}
  user:
    client-certificate: ${join(pki, `${name}.crt`)}
    client-key: ${join(pki, `${name}.key`)}
contexts:
- name: local
  context: {cluster: local, user: ${name}}
current-context: local
`;
}

/** GET an http(s) URL of the node; resolves with the status code (TLS unverified: the components' self-signed serving certificates). */
function probe(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { rejectUnauthorized: false, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

function httpProbe(url: string): Promise<number> {
  return fetch(url, { signal: AbortSignal.timeout(2000) }).then((r) => r.status);
}

async function until<T>(
  what: string,
  deadline: number,
  fn: () => Promise<T | undefined>,
  why: () => string,
): Promise<T> {
  let last: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const cause = last instanceof Error ? `: ${last.message}` : '';
      throw new Error(`local node: ${what} not reached in time${cause}\n${why()}`);
    }
    await sleep(250);
  }
}

function tail(path: string, lines = 25): string {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return `(no ${path})`;
  }
}

/** Starts a local node joined to the control plane and resolves once it is Ready and untainted of not-ready. */
export async function startLocalNode(options: LocalNodeOptions): Promise<LocalNode> {
  const log = options.log ?? (() => undefined);
  // Set once this run's node lock is ours: waiting for another test file's node is not slowness.
  let deadline: number;
  let started: number;
  reapDeadNodes(options.runDir);
  const index = claimNetwork();
  const hostIp = `10.213.${index}.1`;
  const nodeIp = `10.213.${index}.2`;
  const podCidr = `10.214.${index}.0/24`;
  const veth = `${VETH_PREFIX}${index}`;
  const cgroupRoot = `${CGROUP_PREFIX}${process.pid}-${index}`;
  const dir = join(options.runDir, `node-${process.pid}-${index}`);
  const logDir = join(dir, 'logs');
  const pki = join(dir, 'pki');
  for (const d of [dir, logDir, pki, join(dir, 'cni', 'net.d'), join(dir, 'tmp'), join(dir, 'kernel-tunables')]) {
    mkdirSync(d, { recursive: true });
  }
  const socket = join(dir, 'containerd.sock');
  const apiPort = Number(new URL(options.controlPlane.server).port);
  const caFile = options.controlPlane.caFile;
  const ca = { cert: caFile, key: join(caFile, '..', 'ca.key') };

  const forwarders: TcpForwarder[] = [];
  const children: ChildProcess[] = [];
  let init: { flock: ChildProcess; pid: number } | undefined;
  let runningInit = 0;
  let runningUnshare: number;
  let namespaces: NodeHostHandles['namespaces'];
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(options.controlPlane.kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const discovery = kc.makeApiClient(k8s.DiscoveryV1Api);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const stopStarted = Date.now();
    const mark = (what: string) => log(`local node: stop: ${what} (${Date.now() - stopStarted} ms)`);
    // The API objects first, while the API server surely runs: the node, its pods go with it (pod GC).
    await Promise.allSettled([
      core.deleteNode({ name: LOCAL_NODE_NAME, gracePeriodSeconds: 0 }),
      discovery.deleteNamespacedEndpointSlice({ name: 'kubernetes', namespace: 'default' }),
      rbac.deleteClusterRoleBinding({ name: COREDNS_RBAC }),
      rbac.deleteClusterRole({ name: COREDNS_RBAC }),
    ]);
    mark('API objects deleted');
    if (init !== undefined) {
      // SIGKILL to the namespace's init: the kernel kills every process of the node with it.
      try {
        process.kill(init.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await waitForExit(init.flock, 30_000).catch(() => undefined);
      mark('namespaces gone');
    }
    await Promise.allSettled(children.map((c) => waitForExit(c, 10_000)));
    await Promise.allSettled(forwarders.map((f) => f.close()));
    // The veth pair goes with the network namespace (and the host's route with it); wait for that.
    for (let i = 0; i < 100 && run('ip', ['-o', 'link', 'show']).includes(`: ${veth}@`); i++) await sleep(100);
    mark('link gone');
    removeCgroupRoot(cgroupRoot);
    mark('cgroups removed');
    rmSync(join(NETWORK_CLAIMS, String(index)), { recursive: true, force: true });
    try {
      if (readdirSync(NETWORK_CLAIMS).length === 0) rmSync(NETWORK_CLAIMS, { recursive: true, force: true });
    } catch {
      // another node's claim is there, or the directory is gone
    }
    rmSync(join(options.runDir, `node-${String(process.pid)}.server-pid`), { force: true });
    if (process.env.CHAPERONE_KEEP_RUN_DIR === undefined) rmSync(dir, { recursive: true, force: true });
  };

  try {
    // 1. The namespaces, held by a shell that exits when our pipe closes. flock: one node per control plane.
    const flock = spawn(
      'flock',
      [
        join(options.runDir, 'node.lock'),
        'unshare',
        '--pid',
        '--fork',
        '--kill-child',
        '--mount',
        '--mount-proc',
        '--net',
        '--propagation',
        'private',
        '--',
        '/bin/sh',
        '-c',
        INIT_SCRIPT,
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    const holderLog = createWriteStream(join(logDir, 'namespaces.log'));
    flock.stderr.pipe(holderLog);
    await new Promise<void>((resolve, reject) => {
      const lines = createInterface({ input: flock.stdout });
      lines.once('line', () => resolve());
      flock.once('exit', (code) =>
        reject(new Error(`unshare exited (${String(code)}): ${tail(join(logDir, 'namespaces.log'))}`)),
      );
    });
    started = Date.now();
    deadline = started + (options.timeoutMs ?? 180_000);
    const { unshare: unsharePid, init: initPid } = nsInitPid(flock.pid ?? 0);
    runningUnshare = unsharePid;
    init = { flock, pid: initPid };
    runningInit = initPid;
    const nsLink = (kind: string) => readlinkSync(`/proc/${String(initPid)}/ns/${kind}`);
    namespaces = { pid: nsLink('pid'), mnt: nsLink('mnt'), net: nsLink('net') };
    recordServer(options.runDir, `node-${String(process.pid)}`, initPid);
    writeFileSync(join(dir, 'init.pid'), String(initPid));
    createCgroupRoot(cgroupRoot);
    const ns = (...args: string[]) => run('nsenter', ['--target', String(initPid), '--mount', '--net', '--', ...args]);

    // 2. The link: host end here, node end moved into the namespace.
    run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(initPid)]);
    run('ip', ['addr', 'add', `${hostIp}/30`, 'dev', veth]);
    run('ip', ['link', 'set', veth, 'up']);
    ns('ip', 'link', 'set', 'lo', 'up');
    ns('ip', 'addr', 'add', `${nodeIp}/30`, 'dev', 'eth0');
    ns('ip', 'link', 'set', 'eth0', 'up');
    ns('ip', 'route', 'add', 'default', 'via', hostIp);
    ns('sysctl', '-q', '-w', 'net.ipv4.ip_forward=1');
    // The API server dials webhooks at pod addresses (--enable-aggregator-routing).
    run('ip', ['route', 'add', podCidr, 'via', nodeIp, 'dev', veth]);

    // 3. The node's private filesystem view.
    for (const [path, upper] of [
      ['/var/lib', 'var-lib'],
      ['/var/log', 'var-log'],
    ] as const) {
      mkdirSync(join(dir, 'overlay', upper, 'upper'), { recursive: true });
      mkdirSync(join(dir, 'overlay', upper, 'work'), { recursive: true });
      ns(
        'mount',
        '-t',
        'overlay',
        'overlay',
        '-o',
        `lowerdir=${path},upperdir=${join(dir, 'overlay', upper, 'upper')},workdir=${join(dir, 'overlay', upper, 'work')}`,
        path,
      );
    }
    ns('mount', '-t', 'tmpfs', '-o', 'mode=755', 'tmpfs', '/run');
    for (const [tunable, value] of Object.entries(KUBELET_KERNEL_TUNABLES)) {
      const file = join(dir, 'kernel-tunables', tunable.replaceAll('/', '.'));
      writeFileSync(file, `${value}\n`);
      ns('mount', '--bind', '-o', 'ro', file, `/proc/sys/${tunable}`);
    }

    // 4. Certificates and configuration.
    const apiForwarder = await forwardTcp(hostIp, apiPort, apiPort).catch(() => forwardTcp(hostIp, 0, apiPort));
    forwarders.push(apiForwarder);
    const server = `https://${hostIp}:${String(apiForwarder.port)}`;
    for (const [name, subject] of [
      ['kubelet', `/CN=system:node:${LOCAL_NODE_NAME}/O=system:nodes`],
      ['kube-proxy', '/CN=system:kube-proxy'],
      ['kube-scheduler', '/CN=system:kube-scheduler'],
      ['coredns', `/CN=${COREDNS_USER}`],
    ] as const) {
      clientCertificate(pki, name, subject, ca);
      writeFileSync(join(dir, `${name}.kubeconfig`), kubeconfig(server, caFile, pki, name));
    }
    writeConfigs({ dir, socket, nodeIp, podCidr, cgroupRoot, caFile });
    // A Node object left by a killed run would report its old kubelet's Ready until marked stale.
    await core.deleteNode({ name: LOCAL_NODE_NAME, gracePeriodSeconds: 0 }).catch(() => undefined);
    await applyNodeObjects(kc, { hostIp, apiPort: apiForwarder.port });

    // 5. The programs, inside the namespaces.
    const start = (
      name: NodeComponent,
      binary: string,
      args: string[],
      env: NodeJS.ProcessEnv = {},
      namespaces = ['--mount', '--net', '--pid'],
    ) => {
      const out = createWriteStream(join(logDir, `${name}.log`));
      const child = spawn('nsenter', ['--target', String(initPid), ...namespaces, '--wd=/', '--', binary, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, ...env },
      });
      child.stdout.pipe(out);
      child.stderr.pipe(out);
      children.push(child);
      return child;
    };
    const containerd = start('containerd', 'containerd', ['--config', join(dir, 'containerd.toml')], {
      TMPDIR: join(dir, 'tmp'),
    });
    await until(
      'containerd serving',
      deadline,
      async () => {
        if (containerd.exitCode !== null) throw new Error(`containerd exited with ${String(containerd.exitCode)}`);
        await execFileAsync('ctr', ['--address', socket, 'version']);
        return true;
      },
      () => tail(join(logDir, 'containerd.log')),
    );
    const imports = importArchives(socket, options.images ?? builtImageArchives());
    start('kubelet', toolPath('kubelet'), [
      '--config',
      join(dir, 'kubelet.yaml'),
      '--kubeconfig',
      join(dir, 'kubelet.kubeconfig'),
      '--root-dir',
      join(dir, 'kubelet'),
      '--cert-dir',
      join(dir, 'kubelet', 'pki'),
      '--hostname-override',
      LOCAL_NODE_NAME,
      '--node-ip',
      nodeIp,
      '--v=1',
    ]);
    start('kube-proxy', toolPath('kube-proxy'), ['--config', join(dir, 'kube-proxy.yaml'), '--v=1']);
    start('coredns', toolPath('coredns'), ['-conf', join(dir, 'Corefile')]);
    // The scheduler is control plane: it runs beside the API server (host network, 127.0.0.1), only in
    // the node's PID namespace so that it ends with the node.
    const schedulerKubeconfig = join(dir, 'kube-scheduler.kubeconfig');
    writeFileSync(schedulerKubeconfig, kubeconfig(options.controlPlane.server, caFile, pki, 'kube-scheduler'));
    const schedulerPort = await freePort();
    start(
      'kube-scheduler',
      toolPath('kube-scheduler'),
      [
        '--kubeconfig',
        schedulerKubeconfig,
        '--authentication-kubeconfig',
        schedulerKubeconfig,
        '--authorization-kubeconfig',
        schedulerKubeconfig,
        // The launcher's API server has no front-proxy (requestheader) CA to look up.
        '--authentication-skip-lookup',
        '--leader-elect=false',
        '--bind-address',
        '127.0.0.1',
        '--secure-port',
        String(schedulerPort),
      ],
      {},
      ['--pid'],
    );
    await imports;
    log(`local node: containerd up, images imported (${Date.now() - started} ms)`);

    // 6. Ready: the kubelet registered and reports Ready, the node-lifecycle controller lifted the
    // not-ready taint, kube-proxy programmed the kubernetes Service, CoreDNS and the scheduler serve.
    await until(
      'node Ready without the not-ready taint',
      deadline,
      async () => {
        const node = await core.readNode({ name: LOCAL_NODE_NAME });
        const ready = node.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
        const notReadyTaint = (node.spec?.taints ?? []).some((t) => t.key === 'node.kubernetes.io/not-ready');
        return ready && !notReadyTaint ? true : undefined;
      },
      () => tail(join(logDir, 'kubelet.log')),
    );
    await until(
      'kube-proxy programming Services',
      deadline,
      async () => {
        const healthy = (await httpProbe(`http://${nodeIp}:10256/healthz`)) === 200;
        const rules = ns('iptables-save', '-t', 'nat');
        return healthy && rules.includes('default/kubernetes:https') ? true : undefined;
      },
      () => tail(join(logDir, 'kube-proxy.log')),
    );
    await until(
      'CoreDNS ready',
      deadline,
      async () => ((await httpProbe(`http://${nodeIp}:8181/ready`)) === 200 ? true : undefined),
      () => tail(join(logDir, 'coredns.log')),
    );
    await until(
      'kube-scheduler ready',
      deadline,
      async () => ((await probe(`https://127.0.0.1:${String(schedulerPort)}/readyz`)) === 200 ? true : undefined),
      () => tail(join(logDir, 'kube-scheduler.log')),
    );
    log(`local node: ${LOCAL_NODE_NAME} Ready at ${nodeIp} (${Date.now() - started} ms)`);
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }

  return {
    name: LOCAL_NODE_NAME,
    nodeIp,
    hostIp,
    podCidr,
    dir,
    containerdSocket: socket,
    host: { initPid: runningInit, unsharePid: runningUnshare, namespaces, cgroupRoot, veth },
    async exposeHostPort(port) {
      const forwarder = await forwardTcp(hostIp, port, port).catch(() => forwardTcp(hostIp, 0, port));
      forwarders.push(forwarder);
      return { host: hostIp, port: forwarder.port };
    },
    importImages: (archives) => importArchives(socket, archives),
    logs: (component) => readFileSync(join(logDir, `${component}.log`), 'utf8'),
    async exec(command, args) {
      const { stdout } = await execFileAsync(
        'nsenter',
        ['--target', String(runningInit), '--mount', '--net', '--pid', '--wd=/', '--', command, ...args],
        { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
      );
      return stdout;
    },
    stop,
  };
}

/** The host pid of the namespace's init: the child of unshare, the child of flock. */
function nsInitPid(flockPid: number): { unshare: number; init: number } {
  const childrenOf = (pid: number): number[] => {
    try {
      return readFileSync(`/proc/${String(pid)}/task/${String(pid)}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter((p) => p !== '')
        .map(Number);
    } catch {
      return [];
    }
  };
  const unshare = childrenOf(flockPid)[0];
  const init = unshare === undefined ? undefined : childrenOf(unshare)[0];
  if (unshare === undefined || init === undefined) throw new Error('could not find the node namespace init process');
  return { unshare, init };
}

const COREDNS_USER = 'chaperone:local-node:coredns';
const COREDNS_RBAC = 'chaperone:local-node:coredns';

/** The `kubernetes` Service's endpoint (the forwarder) and CoreDNS's read access. */
async function applyNodeObjects(kc: k8s.KubeConfig, where: { hostIp: string; apiPort: number }): Promise<void> {
  const discovery = kc.makeApiClient(k8s.DiscoveryV1Api);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  const slice: k8s.V1EndpointSlice = {
    metadata: {
      name: 'kubernetes',
      namespace: 'default',
      labels: {
        'kubernetes.io/service-name': 'kubernetes',
        'endpointslice.kubernetes.io/managed-by': 'chaperone-local-node',
      },
    },
    addressType: 'IPv4',
    endpoints: [{ addresses: [where.hostIp], conditions: { ready: true } }],
    ports: [{ name: 'https', port: where.apiPort, protocol: 'TCP' }],
  };
  await discovery.deleteNamespacedEndpointSlice({ name: 'kubernetes', namespace: 'default' }).catch(() => undefined);
  await discovery.createNamespacedEndpointSlice({ namespace: 'default', body: slice });
  await rbac.deleteClusterRole({ name: COREDNS_RBAC }).catch(() => undefined);
  await rbac.deleteClusterRoleBinding({ name: COREDNS_RBAC }).catch(() => undefined);
  await rbac.createClusterRole({
    body: {
      metadata: { name: COREDNS_RBAC },
      rules: [
        { apiGroups: [''], resources: ['endpoints', 'services', 'pods', 'namespaces'], verbs: ['list', 'watch'] },
        { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
      ],
    },
  });
  await rbac.createClusterRoleBinding({
    body: {
      metadata: { name: COREDNS_RBAC },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: COREDNS_RBAC },
      subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: COREDNS_USER }],
    },
  });
}

async function importArchives(socket: string, archives: readonly string[]): Promise<void> {
  // One at a time: containerd unpacks each into its snapshotter; in parallel they only contend for disk.
  for (const archive of archives) {
    await execFileAsync('ctr', ['--address', socket, '--namespace', 'k8s.io', 'images', 'import', archive], {
      maxBuffer: 16 * 1024 * 1024,
    });
  }
}

function writeConfigs(c: {
  dir: string;
  socket: string;
  nodeIp: string;
  podCidr: string;
  cgroupRoot: string;
  caFile: string;
}): void {
  const { dir } = c;
  writeFileSync(
    join(dir, 'containerd.toml'),
    `version = 2
root = "${join(dir, 'containerd', 'root')}"
state = "${join(dir, 'containerd', 'state')}"
# The opt plugin would create /opt/containerd; the others are snapshotters this node does not use.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "${c.socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/chaperone-pause:1"
  # No CAP_SYS_RESOURCE here: containers keep the oom_score_adj they inherit instead of a lower one.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${join(dir, 'cni', 'net.d')}"
`,
  );
  writeFileSync(
    join(dir, 'cni', 'net.d', '10-chaperone.conflist'),
    JSON.stringify(
      {
        cniVersion: '1.0.0',
        name: 'chaperone',
        plugins: [
          {
            type: 'bridge',
            bridge: 'cni0',
            isGateway: true,
            ipMasq: true,
            hairpinMode: true,
            ipam: {
              type: 'host-local',
              ranges: [[{ subnet: c.podCidr }]],
              routes: [{ dst: '0.0.0.0/0' }],
              dataDir: join(dir, 'cni', 'ipam'),
            },
          },
          { type: 'portmap', capabilities: { portMappings: true } },
        ],
      },
      null,
      2,
    ),
  );
  writeFileSync(
    join(dir, 'kubelet.yaml'),
    `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine mixes cgroup v1 controllers with a v2 hierarchy; the kubelet refuses v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /${c.cgroupRoot}
# No CAP_SYS_RESOURCE: the kubelet cannot lower its own oom_score_adj.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://${c.socket}
podLogsDir: ${join(dir, 'pod-logs')}
address: ${c.nodeIp}
healthzBindAddress: ${c.nodeIp}
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${c.caFile}}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [${c.nodeIp}]
resolvConf: /etc/resolv.conf
registerWithTaints:
- {key: ${LOCAL_NODE_TAINT.key}, effect: ${LOCAL_NODE_TAINT.effect}}
failSwapOn: false
# Pods resync (and mounted Secrets, such as a rotated credential, refresh) every 10 s instead of 1 min.
syncFrequency: 10s
makeIPTablesUtilChains: false
serializeImagePulls: false
# Tests share the host's disk with everything else: never evict for disk pressure, never collect images.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
rotateCertificates: false
serverTLSBootstrap: false
`,
  );
  writeFileSync(
    join(dir, 'kube-proxy.yaml'),
    `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: ${join(dir, 'kube-proxy.kubeconfig')}}
hostnameOverride: ${LOCAL_NODE_NAME}
clusterCIDR: ${c.podCidr}
bindAddress: ${c.nodeIp}
healthzBindAddress: ${c.nodeIp}:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [primary]
# Connection-tracking limits are host-wide: leave them as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
oomScoreAdj: 0
`,
  );
  writeFileSync(
    join(dir, 'Corefile'),
    `.:53 {
    errors
    health ${c.nodeIp}:8080
    ready ${c.nodeIp}:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${join(dir, 'coredns.kubeconfig')}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
`,
  );
}
