#!/usr/bin/env node
// chaperone-sidecar --config FILE: the enforcement point between agents and protected resources.
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../config.ts';
import { startSidecar } from '../sidecar.ts';

const HELP = `Usage: chaperone-sidecar --config FILE

Runs the Chaperone sidecar proxy: agents connect to its listeners with their identity token as the
password; it verifies the token, decides every statement with the compiled AccessPolicy bundles,
forwards allowed statements with its own credential and writes an audit record for each.

Options:
  -c, --config FILE   YAML configuration (see docs/sidecar-config.md)
      --check         validate the configuration and exit
  -h, --help          show this help

Signals: SIGTERM and SIGINT close the listeners and flush the audit sink.`;

const { values } = parseArgs({
  options: {
    config: { type: 'string', short: 'c' },
    check: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
  strict: true,
});

if (values.help === true) {
  console.log(HELP);
  process.exit(0);
}
if (values.config === undefined) {
  console.error('chaperone-sidecar: --config FILE is required\n');
  console.error(HELP);
  process.exit(2);
}

try {
  const config = loadConfig(values.config);
  if (values.check === true) {
    console.log('configuration is valid');
    process.exit(0);
  }
  const sidecar = await startSidecar(config);
  // One JSON line on stdout-independent stderr log is written by the listeners; this line is for launchers.
  process.stderr.write(
    `${JSON.stringify({ msg: 'ready', listeners: sidecar.listeners, metrics: sidecar.metricsAddress })}\n`,
  );
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    // A stop the sidecar asked for itself (its audit worker thread failed) set a non-zero exitCode.
    void sidecar.close().then(() => process.exit(process.exitCode ?? 0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} catch (err) {
  console.error(`chaperone-sidecar: ${err instanceof ConfigError ? err.message : String(err)}`);
  process.exit(1);
}
