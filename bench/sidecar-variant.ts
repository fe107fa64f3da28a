// The sidecar as the bin runs it, with one thing swapped out for a cost breakdown (bench/run.ts --profile):
// CHAPERONE_BENCH_SINK=null keeps the session recorder (hash chain) but drops the records instead of
// formatting and writing them. Same command line and `ready` line as sidecar/src/bin/chaperone-sidecar.ts.
import { parseArgs } from 'node:util';
import type { AuditRecord } from '@chaperone/api';
import { startSidecar } from '@chaperone/sidecar';
import type { AuditSink, RecordOrigin } from '@chaperone/sidecar/audit';
import { loadConfig } from '@chaperone/sidecar/config';

/** Counts records and drops them. */
class NullSink implements AuditSink {
  readonly deferrable = true;
  count = 0;
  write(_session: RecordOrigin, _record: AuditRecord): void {
    this.count += 1;
  }
  whenDurable(): undefined {
    return undefined;
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

const { values } = parseArgs({ options: { config: { type: 'string', short: 'c' } }, strict: true });
if (values.config === undefined) throw new Error('--config FILE is required');
const config = loadConfig(values.config);
const sink = process.env.CHAPERONE_BENCH_SINK === 'null' ? new NullSink() : undefined;
const sidecar = await startSidecar(config, sink === undefined ? {} : { sink });
process.stderr.write(
  `${JSON.stringify({ msg: 'ready', listeners: sidecar.listeners, metrics: sidecar.metricsAddress })}\n`,
);
let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  void sidecar.close().then(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
