// Where the harness finds the tools `make tools` built, and PostgreSQL's server binaries.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export const REPO_ROOT = join(import.meta.dirname, '..', '..');

/** Path of a tool in .tools/bin; fails with the command that provides it. */
export function toolPath(name: string): string {
  const path = join(process.env.CHAPERONE_TOOLS_BIN ?? join(REPO_ROOT, '.tools', 'bin'), name);
  if (!existsSync(path)) throw new Error(`${name} not found at ${path}; run \`make tools\``);
  return path;
}

/** Directory of the newest installed PostgreSQL server binaries (Debian layout). */
export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)) : [];
  versions.sort((a, b) => Number(b) - Number(a));
  for (const v of versions) {
    const dir = join(root, v, 'bin');
    if (existsSync(join(dir, 'postgres')) && existsSync(join(dir, 'initdb'))) return dir;
  }
  throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql; run `make packages`');
}
