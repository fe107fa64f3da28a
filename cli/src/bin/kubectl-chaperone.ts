#!/usr/bin/env node
// kubectl-chaperone: the kubectl plugin (`kubectl chaperone ...` once it is on PATH). The commands and
// their dispatch are in ../main.ts; this file only connects them to the process. No top-level await:
// the release bundle is CommonJS (what Node's single-executable applications run).
import { main } from '../main.ts';

main(process.argv.slice(2), process).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
