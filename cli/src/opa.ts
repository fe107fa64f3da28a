// Where `policy test` finds the opa binary that compiles policies, in this order:
//   --opa PATH, then $CHAPERONE_OPA (either one, when given, must be executable: no silent fallback),
//   then an `opa` beside kubectl-chaperone (the release archives and the krew plugin carry one there),
//   then `opa` on PATH, and only when running from a checkout's sources, the repository's .tools/bin/opa.
// The release executable never looks into a repository.
import { execFile } from 'node:child_process';
import { accessSync, constants, realpathSync, statSync } from 'node:fs';
import { delimiter, dirname, isAbsolute, join } from 'node:path';
import { isSea } from 'node:sea';
import { BUILD } from './build-info.ts';

export interface OpaLocation {
  readonly path: string;
  /** How it was found, for messages: "--opa", "CHAPERONE_OPA", "beside kubectl-chaperone", "PATH", "repository". */
  readonly from: string;
}

export interface OpaSearch {
  /** The --opa flag. */
  readonly flag?: string | undefined;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** The directory kubectl-chaperone itself is in (after symlinks), undefined when unknown. */
  readonly executableDir?: string | undefined;
  /** The checkout's .tools/bin/opa; only set when running from sources. */
  readonly repositoryOpa?: string | undefined;
}

/** Raised for an --opa or CHAPERONE_OPA that does not name an executable file, and when none is found. */
export class OpaNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OpaNotFoundError';
  }
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function wantedVersion(): string {
  return BUILD === undefined ? 'the version in tools.env' : `v${BUILD.opaVersion}`;
}

/** Finds opa as described at the top of this file; throws OpaNotFoundError with what was tried. */
export function findOpa(search: OpaSearch): OpaLocation {
  const explicit: [string | undefined, string][] = [
    [search.flag, '--opa'],
    [search.env.CHAPERONE_OPA, 'CHAPERONE_OPA'],
  ];
  for (const [path, from] of explicit) {
    if (path === undefined || path === '') continue;
    if (!isExecutableFile(path)) throw new OpaNotFoundError(`${from} names ${path}, which is not an executable file`);
    return { path, from };
  }
  const tried: string[] = [];
  if (search.executableDir !== undefined) {
    const beside = join(search.executableDir, 'opa');
    if (isExecutableFile(beside)) return { path: beside, from: 'beside kubectl-chaperone' };
    tried.push(`not beside kubectl-chaperone (${search.executableDir})`);
  }
  // Empty and relative PATH entries are skipped: they would resolve against the working directory.
  for (const dir of (search.env.PATH ?? '').split(delimiter)) {
    if (dir === '' || !isAbsolute(dir)) continue;
    const candidate = join(dir, 'opa');
    if (isExecutableFile(candidate)) return { path: candidate, from: 'PATH' };
  }
  tried.push('not on PATH');
  if (search.repositoryOpa !== undefined) {
    if (isExecutableFile(search.repositoryOpa)) return { path: search.repositoryOpa, from: 'repository' };
    tried.push(`not in the repository (${search.repositoryOpa}; run make tools)`);
  }
  throw new OpaNotFoundError(
    `policy test compiles policies with the opa binary (Open Policy Agent ${wantedVersion()}, as the operator does), ` +
      `and none was found: ${tried.join(', ')}. Put opa beside kubectl-chaperone or on PATH, ` +
      `or name it with --opa PATH or CHAPERONE_OPA.`,
  );
}

/** The directory of the running kubectl-chaperone: the executable itself, or the script node runs. */
export function executableDir(): string | undefined {
  const self = isSea() ? process.execPath : process.argv[1];
  if (self === undefined) return undefined;
  try {
    return dirname(realpathSync(self));
  } catch {
    return undefined;
  }
}

/** The checkout's .tools/bin/opa when running from sources; undefined in a build. */
export function repositoryOpa(): string | undefined {
  if (BUILD !== undefined) return undefined;
  return join(import.meta.dirname, '..', '..', '.tools', 'bin', 'opa');
}

/** `opa version`'s Version line ("1.22.3"), or undefined when it cannot be read. */
export function opaVersion(path: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(path, ['version'], { encoding: 'utf8', timeout: 30_000 }, (error, stdout) => {
      resolve(error === null ? /^Version:\s*v?(\S+)/m.exec(stdout)?.[1] : undefined);
    });
  });
}

/** A warning when the opa found is not the version release builds were made with ("" when it is, or unknown). */
export async function opaVersionWarning(location: OpaLocation): Promise<string> {
  if (BUILD === undefined) return '';
  const found = await opaVersion(location.path);
  if (found === BUILD.opaVersion) return '';
  return (
    `warning: ${location.path} (${location.from}) is opa ${found ?? 'of an unknown version'}; the operator compiles ` +
    `with v${BUILD.opaVersion}, so results may differ from the cluster's\n`
  );
}
