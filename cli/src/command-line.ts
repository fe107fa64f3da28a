// A command's flags and positionals read once, the same way for every command: a flag parseArgs refuses
// prints the error and the usage and exits 2; -h/--help prints the usage and exits 0.
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';
import type { CommandIo } from './audit/cluster.ts';

const HELP = { help: { type: 'boolean', short: 'h' } } as const;

type CommandLine<T extends ParseArgsOptionsConfig> = ReturnType<
  typeof parseArgs<{ args: string[]; allowPositionals: true; options: T & typeof HELP }>
>;

/** The parsed command line, or the exit code when there is nothing more to do (a refused flag, --help). */
export function parseCommandLine<T extends ParseArgsOptionsConfig>(
  args: string[],
  options: T,
  usage: string,
  io: CommandIo,
): CommandLine<T> | number {
  let parsed: CommandLine<T>;
  try {
    parsed = parseArgs({ args, allowPositionals: true, options: { ...options, ...HELP } });
  } catch (err) {
    io.stderr.write(`error: ${(err as Error).message}\n\n${usage}`);
    return 2;
  }
  if ((parsed.values as { help?: boolean }).help === true) {
    io.stdout.write(usage);
    return 0;
  }
  return parsed;
}
