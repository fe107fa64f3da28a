// A/B of the connection storm (pgbench -n -S -C -c 8 -j 2) between this checkout's sidecar and another
// checkout's (its root directory as the first argument), interleaved rounds on one PostgreSQL, sidecars
// run from source with the image's node flags; prints connections/s and the sidecar's CPU per connection
// (/proc) per round, with the load average. `node bench/storm-ab.ts /work/main [rounds] [seconds]`.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { startPostgres } from '../e2e/harness/postgres.ts';
import { createRunDirectory } from '../e2e/harness/processes.ts';
import { ALLOW_ALL, spawnSidecar, type SidecarProcess } from '../e2e/harness/sidecar-process.ts';
import { postgresBinDir, REPO_ROOT } from '../e2e/harness/tools.ts';
import { SIDECAR_NODE_FLAGS } from '../sidecar/src/bin/node-flags.ts';

const [baselineRoot, roundsArg, secondsArg] = process.argv.slice(2);
if (baselineRoot === undefined) throw new Error('usage: node bench/storm-ab.ts BASELINE_ROOT [rounds] [seconds]');
const rounds = Number(roundsArg ?? 3);
const seconds = Number(secondsArg ?? 5);
const dir = createRunDirectory();
const pg = await startPostgres(dir, { settings: { max_connections: '400' } });

function cpuMicros(pid: number): number {
  const fields =
    readFileSync(`/proc/${String(pid)}/stat`, 'utf8')
      .split(') ')[1]
      ?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

async function start(name: string, root: string): Promise<SidecarProcess> {
  return spawnSidecar({
    bin: join(root, 'sidecar', 'src', 'bin', 'chaperone-sidecar.ts'),
    nodeArgs: SIDECAR_NODE_FLAGS,
    dir: join(dir, name),
    upstream: {
      host: 'localhost',
      port: pg.port,
      database: pg.database,
      user: pg.user,
      password: pg.password,
      caFile: pg.caFile,
    },
    policies: { 'allow-all': ALLOW_ALL },
    logLevel: 'warn',
  });
}

const sides: [string, SidecarProcess][] = [
  ['this', await start('this', REPO_ROOT)],
  ['baseline', await start('baseline', baselineRoot)],
];
try {
  const first = sides[0]?.[1] as SidecarProcess;
  const initEnv = first.libpqEnv(
    await first.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: 3600 }),
  );
  execFileSync(join(postgresBinDir(), 'pgbench'), ['-i', '-s', '1', '-q'], { env: initEnv, stdio: 'ignore' });
  for (const [name, s] of sides) {
    const env = s.libpqEnv(await s.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: 3600 }));
    execFileSync(join(postgresBinDir(), 'pgbench'), ['-n', '-S', '-C', '-c', '8', '-j', '2', '-T', '2'], { env });
    console.log(`${name}: warmed up`);
  }
  for (let r = 0; r < rounds; r++) {
    for (const [name, s] of r % 2 === 0 ? sides : [...sides].reverse()) {
      const env = s.libpqEnv(await s.issuer.sign({ sub: 'system:serviceaccount:bench:pgbench' }, { expiresIn: 3600 }));
      const pid = s.process.pid as number;
      const before = cpuMicros(pid);
      const out = execFileSync(
        join(postgresBinDir(), 'pgbench'),
        ['-n', '-S', '-C', '-c', '8', '-j', '2', '-T', String(seconds)],
        { env, encoding: 'utf8' },
      );
      const cpu = cpuMicros(pid) - before;
      const n = Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1]);
      console.log(
        `round ${String(r + 1)} ${name.padEnd(8)} ${(n / seconds).toFixed(1)} connections/s, sidecar CPU ${(cpu / n).toFixed(0)} µs/connection (load ${(loadavg()[0] ?? 0).toFixed(2)})`,
      );
    }
  }
} finally {
  for (const [, s] of sides) await s.stop();
  await pg.stop();
}
