// Go durations (`90s`, `1h30m`, `720h`), as used by duration fields of the custom resources (schema.ts).

const UNIT_MS: Readonly<Record<string, number>> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/** Milliseconds in a Go duration string; throws on anything the CRD pattern would reject. */
export function parseGoDuration(text: string): number {
  const part = /([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let end = 0;
  for (let m = part.exec(text); m !== null; m = part.exec(text)) {
    total += Number(m[1]) * (UNIT_MS[m[2] ?? ''] ?? Number.NaN);
    end = part.lastIndex;
  }
  if (text.length === 0 || end !== text.length || !Number.isFinite(total)) {
    throw new Error(`not a Go duration: ${JSON.stringify(text)}`);
  }
  return total;
}
