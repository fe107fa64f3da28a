// CPU seconds of named process groups over a window, read from /proc (utime + stime of each process, in
// clock ticks), for the bench's "where do the cores go" breakdowns. Processes that start during the window
// count whole; a process that ends during it counts up to its last sample, so the sampler polls (default
// every 200 ms) and keeps each process's latest reading. PostgreSQL's children are classed by their process
// title (`postgres: USER DATABASE …` for a backend, `postgres: walwriter` for an auxiliary process).
import { readdirSync, readFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100;

interface ProcStat {
  readonly ppid: number;
  /** utime + stime, ticks (not the children's). */
  readonly ticks: number;
}

function procStat(pid: number, path = `/proc/${String(pid)}/stat`): ProcStat | undefined {
  try {
    const text = readFileSync(path, 'utf8');
    const fields = text.slice(text.lastIndexOf(') ') + 2).split(' ');
    // After the command name: state(0) ppid(1) … utime(11) stime(12)
    return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) };
  } catch {
    return undefined;
  }
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${String(pid)}/cmdline`, 'utf8')
      .replaceAll('\0', ' ')
      .trim();
  } catch {
    return '';
  }
}

/** Which group a process belongs to, or undefined to ignore it. */
export type ProcessClassifier = (pid: number, ppid: number, cmdline: string) => string | undefined;

export interface CpuWindow {
  readonly seconds: number;
  /** CPU seconds by group. */
  readonly cpu: Readonly<Record<string, number>>;
}

export class ProcessCpuSampler {
  private readonly start = new Map<string, number>();
  private readonly latest = new Map<string, { group: string; ticks: number }>();
  private timer: NodeJS.Timeout | undefined;
  private startedAt = 0;

  private readonly classify: ProcessClassifier;
  private readonly intervalMs: number;
  /** Processes whose threads are also counted by thread name, as `GROUP/THREAD` (e.g. `sidecar/libuv-worker`). */
  private readonly byThread: ReadonlySet<number>;

  constructor(classify: ProcessClassifier, intervalMs = 200, byThread: readonly number[] = []) {
    this.classify = classify;
    this.intervalMs = intervalMs;
    this.byThread = new Set(byThread);
  }

  private note(key: string, group: string, ticks: number, initial: boolean): void {
    if (initial) this.start.set(key, ticks);
    this.latest.set(key, { group, ticks });
  }

  private sample(initial: boolean): void {
    for (const name of readdirSync('/proc')) {
      const pid = Number(name);
      if (!Number.isInteger(pid)) continue;
      const stat = procStat(pid);
      if (stat === undefined) continue;
      const known = this.latest.get(name);
      const group = known?.group ?? this.classify(pid, stat.ppid, cmdline(pid));
      if (group === undefined) continue;
      this.note(name, group, stat.ticks, initial);
      if (!this.byThread.has(pid)) continue;
      for (const tid of readdirSync(`/proc/${name}/task`)) {
        const thread = procStat(Number(tid), `/proc/${name}/task/${tid}/stat`);
        if (thread === undefined) continue;
        let comm: string;
        try {
          comm = readFileSync(`/proc/${name}/task/${tid}/comm`, 'utf8').trim();
        } catch {
          continue;
        }
        this.note(`${name}/${tid}`, `${group}/${comm}`, thread.ticks, initial);
      }
    }
  }

  begin(): void {
    this.start.clear();
    this.latest.clear();
    this.startedAt = performance.now();
    this.sample(true);
    this.timer = setInterval(() => this.sample(false), this.intervalMs);
  }

  end(): CpuWindow {
    this.sample(false);
    clearInterval(this.timer);
    const cpu: Record<string, number> = {};
    for (const [pid, { group, ticks }] of this.latest) {
      cpu[group] = (cpu[group] ?? 0) + (ticks - (this.start.get(pid) ?? 0)) / TICKS_PER_SECOND;
    }
    return { seconds: (performance.now() - this.startedAt) / 1000, cpu };
  }
}

/** Seconds the machine's CPUs were idle (idle + iowait) so far, from /proc/stat, summed over CPUs. */
export function machineIdleSeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  return ((f[3] ?? 0) + (f[4] ?? 0)) / TICKS_PER_SECOND;
}
