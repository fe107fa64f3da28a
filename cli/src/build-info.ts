// What the running kubectl-chaperone is: a release build (the bundler writes CHAPERONE_BUILD into the
// bundle, see cli/scripts/bundle.ts) or the TypeScript sources of a checkout.

/** Written by the bundler's `define`; not declared anywhere when the sources run directly. */
declare const CHAPERONE_BUILD: BuildInfo | undefined;

export interface BuildInfo {
  /** The release version (semver), or 0.0.0-dev+<commit> for builds between releases. */
  readonly version: string;
  /** git commit the bundle was built from ("" when unknown). */
  readonly commit: string;
  /** The opa version the operator compiles with (tools.env OPA_VERSION, without the v). */
  readonly opaVersion: string;
}

/** undefined when running from the repository's sources. */
export const BUILD: BuildInfo | undefined = typeof CHAPERONE_BUILD === 'undefined' ? undefined : CHAPERONE_BUILD;

export function versionLine(): string {
  const version = BUILD === undefined ? 'dev (running from source)' : BUILD.version;
  const commit = BUILD === undefined || BUILD.commit === '' ? '' : `, commit ${BUILD.commit.slice(0, 12)}`;
  return `kubectl-chaperone ${version} (node ${process.version}, ${process.platform}/${process.arch}${commit})\n`;
}
