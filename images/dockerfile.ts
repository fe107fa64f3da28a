// Reads the final stages of images/Dockerfile — the image definitions a user with a registry builds —
// into the layers and configuration `make images` packs without Docker, so the two cannot drift apart.
// Only the instructions a final stage may use are understood (FROM scratch or another final stage,
// COPY --from=build /rootfs/LAYER/ /, USER, WORKDIR, ENV, LABEL, EXPOSE, ENTRYPOINT, CMD, in exec form);
// anything else in a final stage is an error rather than something silently left out.

/** The OCI image configuration fields an image stage sets (image-spec config.json `config`). */
export interface ImageConfig {
  readonly User?: string;
  readonly WorkingDir?: string;
  readonly Env: string[];
  readonly Entrypoint?: string[];
  readonly Cmd?: string[];
  readonly Labels: Record<string, string>;
  readonly ExposedPorts: Record<string, Record<string, never>>;
}

export interface ImageStage {
  readonly name: string;
  /** Layer names (images/rootfs.ts), base first. */
  readonly layers: string[];
  readonly config: ImageConfig;
}

interface RawStage {
  readonly name: string;
  readonly from: string;
  readonly lines: { instruction: string; args: string; line: number }[];
}

/** Joins continuation lines, drops comments and blank lines, splits into stages. */
function stages(text: string): RawStage[] {
  const logical: { text: string; line: number }[] = [];
  let pending = '';
  let start = 0;
  text.split('\n').forEach((raw, index) => {
    const trimmed = raw.trim();
    if (pending === '' && (trimmed === '' || trimmed.startsWith('#'))) return;
    if (pending === '') start = index + 1;
    if (trimmed.endsWith('\\')) {
      pending += `${trimmed.slice(0, -1)} `;
      return;
    }
    logical.push({ text: pending + trimmed, line: start });
    pending = '';
  });
  const result: { name: string; from: string; lines: RawStage['lines'] }[] = [];
  for (const { text: l, line } of logical) {
    const match = /^(\S+)\s*(.*)$/.exec(l);
    if (match === null) continue;
    const instruction = (match[1] ?? '').toUpperCase();
    const args = match[2] ?? '';
    if (instruction === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      if (from === null) throw new Error(`Dockerfile line ${line}: cannot read FROM ${args}`);
      result.push({ from: from[1] ?? '', name: from[2] ?? `stage-${result.length}`, lines: [] });
    } else if (result.length > 0) {
      result[result.length - 1]?.lines.push({ instruction, args, line });
    }
  }
  return result;
}

function execForm(args: string, line: number): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(args);
  } catch {
    throw new Error(`Dockerfile line ${line}: use the exec (JSON array) form`);
  }
  if (!Array.isArray(parsed) || !parsed.every((p) => typeof p === 'string')) {
    throw new Error(`Dockerfile line ${line}: expected a JSON array of strings`);
  }
  return parsed;
}

/** `KEY=VALUE ...` pairs of ENV and LABEL; values may be double-quoted. */
function pairs(args: string, line: number): [string, string][] {
  const out: [string, string][] = [];
  const re = /([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)/gy;
  let rest = args.trim();
  while (rest !== '') {
    re.lastIndex = 0;
    const m = re.exec(rest);
    if (m === null) throw new Error(`Dockerfile line ${line}: expected KEY=VALUE pairs, got ${rest}`);
    const raw = m[2] ?? '';
    out.push([m[1] ?? '', raw.startsWith('"') ? (JSON.parse(raw) as string) : raw]);
    rest = rest.slice(m[0].length).trimStart();
  }
  return out;
}

/**
 * The image stage `target` of the Dockerfile text: its layers (from its own COPY lines and those of
 * the stages it builds FROM) and its configuration (inherited, as Docker does).
 */
export function imageStage(dockerfile: string, target: string): ImageStage {
  const all = stages(dockerfile);
  const byName = new Map(all.map((s) => [s.name, s]));
  const chain: RawStage[] = [];
  for (let stage = byName.get(target); stage !== undefined; stage = byName.get(stage.from)) {
    chain.unshift(stage);
    if (stage.from === 'scratch') break;
  }
  if (chain.length === 0) throw new Error(`images/Dockerfile has no stage ${target}`);
  if (chain[0]?.from !== 'scratch') throw new Error(`stage ${target} must be built FROM scratch (or a stage that is)`);
  const layers: string[] = [];
  let user: string | undefined;
  let workingDir: string | undefined;
  let entrypoint: string[] | undefined;
  let cmd: string[] | undefined;
  const env = new Map<string, string>();
  const labels: Record<string, string> = {};
  const exposed: Record<string, Record<string, never>> = {};
  for (const stage of chain) {
    for (const { instruction, args, line } of stage.lines) {
      switch (instruction) {
        case 'COPY': {
          const copy = /^--from=build\s+\/rootfs\/([a-z0-9-]+)\/\s+\/$/.exec(args);
          if (copy === null) {
            throw new Error(`Dockerfile line ${line}: a final stage copies only --from=build /rootfs/LAYER/ /`);
          }
          layers.push(copy[1] ?? '');
          break;
        }
        case 'USER':
          user = args.trim();
          break;
        case 'WORKDIR':
          workingDir = args.trim();
          break;
        case 'ENV':
          for (const [k, v] of pairs(args, line)) env.set(k, v);
          break;
        case 'LABEL':
          for (const [k, v] of pairs(args, line)) labels[k] = v;
          break;
        case 'EXPOSE':
          for (const port of args.trim().split(/\s+/)) exposed[port.includes('/') ? port : `${port}/tcp`] = {};
          break;
        case 'ENTRYPOINT':
          entrypoint = execForm(args, line);
          // Docker resets an inherited CMD when ENTRYPOINT is set.
          cmd = undefined;
          break;
        case 'CMD':
          cmd = execForm(args, line);
          break;
        default:
          throw new Error(
            `Dockerfile line ${line}: ${instruction} is not allowed in a final stage (images/dockerfile.ts)`,
          );
      }
    }
  }
  // BuildKit gives images FROM scratch its default PATH, first.
  const path = env.has('PATH') ? [] : ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  return {
    name: target,
    layers,
    config: {
      ...(user === undefined ? {} : { User: user }),
      ...(workingDir === undefined ? {} : { WorkingDir: workingDir }),
      Env: [...path, ...[...env].map(([k, v]) => `${k}=${v}`)],
      ...(entrypoint === undefined ? {} : { Entrypoint: entrypoint }),
      ...(cmd === undefined ? {} : { Cmd: cmd }),
      Labels: labels,
      ExposedPorts: exposed,
    },
  };
}
