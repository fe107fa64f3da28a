// Compiles an AccessPolicy into a WebAssembly bundle with the real `opa` binary: render the Rego module,
// `opa check --strict`, `opa build -t wasm -e chaperone/policy/result`, then take /policy.wasm out of the
// bundle. Errors in the user's raw Rego keep the user's own line and column, because that module is
// compiled as its own file, byte for byte as written.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { POLICY_ENTRYPOINT } from '@chaperone/api';
import { PolicyRenderError, renderRego } from './render-rego.ts';
import type { PolicySource } from './render-rego.ts';
import { bundleDigest, type BundleManifest } from '@chaperone/api';

export interface CompileOptions {
  /** Path of the opa binary. Default: $CHAPERONE_OPA, else <repo>/.tools/bin/opa. */
  readonly opaPath?: string;
  /** Parent of the temporary directory. Default: os.tmpdir(). */
  readonly workDir?: string;
  /** Time limit per opa invocation in milliseconds. Default 60000. */
  readonly timeoutMillis?: number;
}

export interface CompileProblem {
  readonly message: string;
  readonly line?: number;
  readonly column?: number;
  readonly code?: string;
}

export interface CompiledPolicy {
  readonly ok: true;
  readonly wasm: Buffer;
  /** sha256:<hex> over the manifest and the wasm bytes (bundleDigest). */
  readonly digest: string;
  readonly manifest: BundleManifest;
  /** The rendered module (without the user's raw Rego). */
  readonly rego: string;
  /** Wall time spent in the opa processes, in milliseconds. */
  readonly opaMillis: number;
}

export interface CompileFailure {
  readonly ok: false;
  readonly errors: readonly CompileProblem[];
}

export type CompileResult = CompiledPolicy | CompileFailure;

const RENDERED_FILE = 'policy.rego';
const CUSTOM_FILE = 'custom.rego';
const DEFAULT_OPA = fileURLToPath(new URL('../../../.tools/bin/opa', import.meta.url));

/** Builtins the opa-wasm SDK implements in JavaScript; every other builtin a module needs must be native to the Wasm runtime. */
const SDK_BUILTINS: ReadonlySet<string> = new Set([
  'sprintf',
  'regex.split',
  'json.is_valid',
  'yaml.is_valid',
  'yaml.marshal',
  'yaml.unmarshal',
]);

export function defaultOpaPath(): string {
  return process.env.CHAPERONE_OPA ?? DEFAULT_OPA;
}

/** The manifest as canonical JSON (keys sorted), the bytes the digest covers. */
export { bundleDigest, canonicalManifest } from '@chaperone/api';

interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function run(file: string, args: readonly string[], cwd: string, timeout: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { cwd, timeout, maxBuffer: 16 << 20, encoding: 'utf8' }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== 'number') {
        reject(new Error(`running ${file}: ${error.message}`));
        return;
      }
      resolve({ code: error === null ? 0 : Number(error.code), stdout, stderr });
    });
  });
}

interface OpaError {
  readonly message?: unknown;
  readonly code?: unknown;
  readonly location?: { readonly file?: unknown; readonly row?: unknown; readonly col?: unknown };
}

/** Turns opa's --format json error output into problems; locations in the rendered module are marked internal. */
function opaProblems(result: RunResult, customSource: string | undefined): CompileProblem[] {
  const text = [result.stdout, result.stderr].find((t) => t.trimStart().startsWith('{'));
  let parsed: unknown;
  try {
    parsed = text === undefined ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const errors = (parsed as { errors?: unknown } | undefined)?.errors;
  if (!Array.isArray(errors)) {
    return [
      { message: (result.stderr || result.stdout).trim() || `opa exited with code ${result.code}`, code: 'opa_error' },
    ];
  }
  return errors.map((raw: unknown): CompileProblem => {
    const e = raw as OpaError;
    const message = typeof e.message === 'string' ? e.message : 'unknown error';
    const code = typeof e.code === 'string' ? e.code : 'opa_error';
    const file = typeof e.location?.file === 'string' ? e.location.file : '';
    const row = typeof e.location?.row === 'number' ? e.location.row : undefined;
    const col = typeof e.location?.col === 'number' ? e.location.col : undefined;
    if (customSource !== undefined && file.endsWith(CUSTOM_FILE)) {
      return {
        message,
        code,
        ...(row === undefined ? {} : { line: row }),
        ...(col === undefined ? {} : { column: col }),
      };
    }
    // A problem in the generated module is a compiler bug or a clash with the raw module, not a user line.
    return { message: `generated module ${RENDERED_FILE}${row === undefined ? '' : `:${row}`}: ${message}`, code };
  });
}

/** Reads one regular file out of a POSIX (ustar / pax) tar archive. */
export function readTarEntry(tar: Uint8Array, wanted: string): Buffer | undefined {
  const buf = Buffer.from(tar.buffer, tar.byteOffset, tar.byteLength);
  const strip = (s: string) => s.replace(/^\.?\//, '');
  let offset = 0;
  let paxPath: string | undefined;
  while (offset + 512 <= buf.length) {
    const header = buf.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    const field = (start: number, length: number) =>
      header.toString('utf8', start, start + length).replace(/\0.*$/s, '');
    const size = parseInt(field(124, 12).trim() || '0', 8);
    const type = field(156, 1);
    const prefix = field(345, 155);
    const name = paxPath ?? (prefix === '' ? field(0, 100) : `${prefix}/${field(0, 100)}`);
    const body = buf.subarray(offset + 512, offset + 512 + size);
    paxPath = undefined;
    if (type === 'x') {
      const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(body.toString('utf8'));
      paxPath = m?.[1];
    } else if ((type === '0' || type === '') && strip(name) === strip(wanted)) {
      return Buffer.from(body);
    }
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  return undefined;
}

// The project compiles against lib es2024 without DOM types, so the little WebAssembly API used here is declared.
interface WasmMemory {
  readonly buffer: ArrayBuffer;
}
interface WasmApi {
  Memory: new (descriptor: { initial: number }) => WasmMemory;
  instantiate(
    bytes: Uint8Array,
    imports: Record<string, Record<string, unknown>>,
  ): Promise<{ instance: { exports: Record<string, unknown> } }>;
}
const wasmApi = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** Names of the builtins a compiled module imports from its host (the ones not native to OPA's Wasm runtime). */
export async function hostBuiltins(wasm: Uint8Array): Promise<string[]> {
  const memory = new wasmApi.Memory({ initial: 5 });
  const fail = () => {
    throw new Error('unexpected call while inspecting a policy module');
  };
  const env = {
    memory,
    opa_abort: fail,
    opa_println: fail,
    opa_builtin0: fail,
    opa_builtin1: fail,
    opa_builtin2: fail,
    opa_builtin3: fail,
    opa_builtin4: fail,
  };
  const { instance } = await wasmApi.instantiate(wasm, { env });
  const exports = instance.exports;
  const builtins = exports.builtins as () => number;
  const dump = exports.opa_json_dump as (addr: number) => number;
  const addr = dump(builtins());
  const bytes = new Uint8Array(memory.buffer);
  let end = addr;
  while (bytes[end] !== 0) end++;
  const parsed = JSON.parse(new TextDecoder().decode(bytes.subarray(addr, end))) as Record<string, number>;
  return Object.keys(parsed).sort();
}

function locate(source: string, needle: string): { line: number; column: number } | undefined {
  const idx = source.indexOf(needle + '(');
  if (idx === -1) return undefined;
  const before = source.slice(0, idx).split('\n');
  return { line: before.length, column: (before.at(-1)?.length ?? 0) + 1 };
}

/** Renders, checks and builds one AccessPolicy. Never throws for a bad policy; throws only when opa cannot run. */
export async function compilePolicy(source: PolicySource, options: CompileOptions = {}): Promise<CompileResult> {
  let rendered;
  try {
    rendered = renderRego(source);
  } catch (e) {
    if (e instanceof PolicyRenderError) {
      return { ok: false, errors: e.problems.map((p) => ({ ...p })) };
    }
    throw e;
  }
  const opa = options.opaPath ?? defaultOpaPath();
  const timeout = options.timeoutMillis ?? 60_000;
  const dir = await mkdtemp(join(options.workDir ?? tmpdir(), 'chaperone-policy-'));
  try {
    const files = [RENDERED_FILE];
    await writeFile(join(dir, RENDERED_FILE), rendered.rego);
    if (rendered.customRego !== undefined) {
      await writeFile(join(dir, CUSTOM_FILE), rendered.customRego);
      files.push(CUSTOM_FILE);
    }
    // Relative file names keep temporary paths out of the bundle, so equal specs give equal bytes.
    const started = process.hrtime.bigint();
    const check = await run(opa, ['check', '--strict', '--format', 'json', ...files], dir, timeout);
    if (check.code !== 0) {
      return { ok: false, errors: opaProblems(check, rendered.customRego) };
    }
    const build = await run(
      opa,
      ['build', '--target', 'wasm', '--entrypoint', POLICY_ENTRYPOINT, '--output', 'bundle.tar.gz', ...files],
      dir,
      timeout,
    );
    const opaMillis = Number(process.hrtime.bigint() - started) / 1e6;
    if (build.code !== 0) {
      return { ok: false, errors: opaProblems(build, rendered.customRego) };
    }
    const wasm = readTarEntry(gunzipSync(await readFile(join(dir, 'bundle.tar.gz'))), '/policy.wasm');
    if (wasm === undefined) {
      return { ok: false, errors: [{ message: 'opa build produced no /policy.wasm', code: 'opa_error' }] };
    }
    const missing = (await hostBuiltins(wasm)).filter((b) => !SDK_BUILTINS.has(b));
    if (missing.length > 0) {
      return {
        ok: false,
        errors: missing.map((b) => ({
          message: `builtin ${b} is not available to policies evaluated in WebAssembly`,
          code: 'chaperone_unsupported_builtin',
          ...(locate(rendered.customRego ?? '', b) ?? {}),
        })),
      };
    }
    return {
      ok: true,
      wasm,
      digest: bundleDigest(wasm, rendered.manifest),
      manifest: rendered.manifest,
      rego: rendered.rego,
      opaMillis,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
