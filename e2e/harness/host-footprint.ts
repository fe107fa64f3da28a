// What a local node could leave on the host, read from the host itself: its mount table, iptables
// rules, network links and routes, the fixed paths the node's programs use, the kernel tunables the
// kubelet wants; and what belongs to one node: processes in its namespaces, its cgroups, its directory,
// its network claim, its veth. The node-cleanup test compares them before, during and after a node.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { HOST_PATHS_THE_NODE_SHADOWS, KUBELET_KERNEL_TUNABLES, type NodeHostHandles } from './node.ts';

export interface HostSnapshot {
  /** Mount points of the host's mount namespace (this process's), with their filesystem type. */
  readonly mounts: string[];
  /** Every iptables and ip6tables chain and rule of the host's network namespace (all tables). */
  readonly iptables: string[];
  readonly links: string[];
  readonly routes: string[];
  /** Which of the fixed paths the node's programs use exist on the host. */
  readonly paths: string[];
  readonly kernelTunables: Record<string, string>;
}

function lines(command: string, args: string[]): string[] {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .filter((l) => l !== '');
  } catch {
    return [];
  }
}

export function hostSnapshot(): HostSnapshot {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      // mountinfo: id parent major:minor root mountpoint options ... - fstype source superoptions
      const fields = l.split(' ');
      const dash = fields.indexOf('-');
      return `${fields[4] ?? ''} ${fields[dash + 1] ?? ''}`;
    })
    .sort();
  // Counters and the header/footer comments change by themselves; chains and rules do not.
  const rules = (command: string) =>
    lines(command, [])
      .filter((l) => !l.startsWith('#'))
      .map((l) => l.replace(/\[\d+:\d+\]$/, ''));
  return {
    mounts,
    iptables: [...rules('iptables-save'), ...rules('ip6tables-save')],
    links: lines('ip', ['-o', 'link', 'show'])
      .map((l) => l.split(':')[1]?.trim() ?? '')
      .sort(),
    routes: lines('ip', ['-o', 'route', 'show', 'table', 'all']).sort(),
    paths: HOST_PATHS_THE_NODE_SHADOWS.filter((p) => existsSync(p)),
    kernelTunables: Object.fromEntries(
      Object.keys(KUBELET_KERNEL_TUNABLES).map((t) => [t, readFileSync(`/proc/sys/${t}`, 'utf8').trim()]),
    ),
  };
}

export interface NodeTraces {
  /** Host pids (and commands) of processes in any of the node's namespaces. */
  readonly processes: string[];
  /** The node's cgroup directories, in any hierarchy. */
  readonly cgroups: string[];
  readonly veth: boolean;
  readonly directory: boolean;
}

function readOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return fallback;
  }
}

/**
 * What is left of one node (all empty/false once it is gone). A process is the node's when it is in one of
 * its namespaces and is its unshare or init, names the node's directory, or sits in its cgroups: the kernel
 * reuses the numbers of namespaces that are gone, so another node started since may have the same ones.
 */
export function nodeTraces(node: NodeHostHandles, dir: string): NodeTraces {
  const processes: string[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const inNamespace = (['pid', 'mnt', 'net'] as const).some((kind) => {
      try {
        return readlinkSync(`/proc/${entry}/ns/${kind}`) === node.namespaces[kind];
      } catch {
        return false;
      }
    });
    if (!inNamespace) continue;
    const command = readOr(`/proc/${entry}/cmdline`, '').replaceAll('\0', ' ').trim();
    const ours =
      Number(entry) === node.initPid ||
      Number(entry) === node.unsharePid ||
      command.includes(dir) ||
      readOr(`/proc/${entry}/cgroup`, '').includes(`/${node.cgroupRoot}/`);
    if (ours) processes.push(`${entry} ${command}`);
  }
  // cgroup v1 and hybrid: one hierarchy per directory; v2 alone: /sys/fs/cgroup itself.
  const cgroups = ['', ...readdirSync('/sys/fs/cgroup')]
    .map((hierarchy) => join('/sys/fs/cgroup', hierarchy, node.cgroupRoot))
    .filter((path) => existsSync(path));
  return {
    processes,
    cgroups,
    veth: lines('ip', ['-o', 'link', 'show', node.veth]).length > 0,
    directory: existsSync(dir),
  };
}
