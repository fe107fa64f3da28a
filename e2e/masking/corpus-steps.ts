// Running a masking corpus: each step a simple Query over a raw socket through the real sidecar, judged on
// the bytes the agent receives (leakIn: every masked value in every encoding, plus the step's own `absent`
// texts) and on what the step was expected to do. Shared by the output-shape and angles corpora.
import { parseBackend, simpleQueryRound, type RawClient } from '../postgres/raw-client.ts';
import { leakIn } from './bypass-corpus.ts';

/**
 * `masked`: runs, its result masked; `denied`: 42501 from the sidecar; `error`: the server's error, its text
 * and position withheld; `runs`: a preparing step that must succeed.
 */
export type Expectation = 'masked' | 'denied' | 'error' | 'runs';

export interface Step {
  readonly class: string;
  readonly sql: string;
  readonly expect: Expectation;
  /** Texts that must not appear in the bytes either (a value computed from a masked one, a short part). */
  readonly absent?: readonly string[];
}

export const steps = (cls: string, expect: Expectation, ...sqls: string[]): Step[] =>
  sqls.map((sql) => ({ class: cls, sql, expect }));

/** Steps whose bytes must not hold `absent` either. */
export const stepsWithout = (cls: string, expect: Expectation, absent: string[], ...sqls: string[]): Step[] =>
  sqls.map((sql) => ({ class: cls, sql, expect, absent }));

/** The field codes and values of an ErrorResponse or NoticeResponse body. */
export function messageFields(body: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let at = 0;
  while (at < body.length && body[at] !== 0) {
    const end = body.indexOf(0, at + 1);
    out.set(String.fromCharCode(body[at] ?? 0), body.subarray(at + 1, end).toString('utf8'));
    at = end + 1;
  }
  return out;
}

/** Runs `corpus` in order on one connection; returns what went wrong, one line per failure. */
export async function runCorpus(client: RawClient, corpus: readonly Step[]): Promise<string[]> {
  const failures: string[] = [];
  for (const step of corpus) {
    const round = await simpleQueryRound(client, step.sql);
    const where = `[${step.class}] ${step.sql}`;
    const leak = leakIn(round.bytes);
    if (leak !== undefined) failures.push(`${where}: LEAKED ${leak}`);
    const text = round.bytes.toString('latin1');
    for (const part of step.absent ?? []) if (text.includes(part)) failures.push(`${where}: LEAKED ${part}`);
    const errors = parseBackend(round.bytes)
      .messages.filter((m) => m.type === 'E')
      .map((m) => messageFields(m.body));
    const described = errors.map((e) => `${e.get('C') ?? ''} ${e.get('M') ?? ''}`).join('; ');
    for (const e of errors) {
      if (/withheld/.test(e.get('M') ?? '') && e.has('P'))
        failures.push(`${where}: a withheld error points at character ${e.get('P') ?? ''}`);
    }
    if ((step.expect === 'masked' || step.expect === 'runs') && errors.length > 0)
      failures.push(`${where}: expected it to run, got ${described}`);
    if (step.expect === 'denied' && !errors.some((e) => e.get('C') === '42501' && /^chaperone:/.test(e.get('M') ?? '')))
      failures.push(`${where}: expected a denial, got ${described || 'none'}`);
    if (step.expect === 'error' && !errors.some((e) => /withheld/.test(e.get('M') ?? '')))
      failures.push(`${where}: expected an error with its text withheld, got ${described || 'none'}`);
    if (round.status !== 'I') await simpleQueryRound(client, 'rollback');
  }
  return failures;
}
