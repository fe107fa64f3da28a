// kubectl-chaperone's command table and dispatch: which words name which command, what --help prints,
// and the exit codes of usage errors. Commands parse their own flags and return their exit code.
//   exit 0: done; 1: the command ran and found a problem (or could not reach what it needs); 2: usage.
// An unknown command is a usage error even with --help, so a script never mistakes the main help for
// the help (or the success) of a command it misspelled.
import type { CommandIo } from './audit/cluster.ts';
import { versionLine } from './build-info.ts';
import { APPROVALS_USAGE, run as runApprovals } from './commands/approvals.ts';
import { AUDIT_VERIFY_USAGE, run as runAuditVerify } from './commands/audit-verify.ts';
import { EVIDENCE_USAGE, run as runEvidence } from './commands/evidence.ts';
import { POLICY_COMPILE_USAGE, run as runPolicyCompile } from './commands/policy-compile.ts';
import { POLICY_TEST_USAGE, run as runPolicyTest } from './commands/policy-test.ts';
import { SESSIONS_USAGE, run as runSessions } from './commands/sessions.ts';
import { TOKEN_USAGE, run as runToken } from './commands/token.ts';
import { VERIFY_USAGE, run as runVerify } from './commands/verify.ts';

export interface Command {
  /** The words that name it after `kubectl chaperone`, e.g. "evidence export". */
  readonly name: string;
  /** Arguments shown after the name in the command list. */
  readonly synopsis: string;
  readonly summary: string;
  /** What `--help` prints; it names the command. */
  readonly usage: string;
  readonly run: (args: string[], io: CommandIo) => Promise<number>;
}

const VERSION_USAGE = `Usage:
  kubectl chaperone version

Prints the version of kubectl-chaperone, the Node.js runtime it carries, and its platform.
`;

export const COMMANDS: readonly Command[] = [
  {
    name: 'sessions',
    synopsis: '[show SESSION] [--identity S] [--actor S] [--since T] [-n NS|-A] [-o json|yaml]',
    summary: 'List Session trails (one row per session), or show one',
    usage: SESSIONS_USAGE,
    run: runSessions,
  },
  {
    name: 'show',
    synopsis: 'SESSION [-n NS] [-o json|yaml]',
    summary: 'One session as a timeline: identity, delegation chain, every record',
    usage: `kubectl chaperone show SESSION is kubectl chaperone sessions show SESSION.\n\n${SESSIONS_USAGE}`,
    run: (args, io) => runSessions(['show', ...args], io),
  },
  {
    name: 'verify',
    synopsis:
      'SESSION | --all [--trusted-keys JWKS] [--authority-keys JWKS] [--baseline FILE] [--allow-uncertified] [-n NS|-A]',
    summary: 'Verify hash chains, signatures, certificates and checkpoints; exit 1 on any problem',
    usage: VERIFY_USAGE,
    run: runVerify,
  },
  {
    name: 'evidence export',
    synopsis: '-o FILE [--from T] [--to T] [-n NS|-A] [--allow-uncertified]',
    summary: 'Write records, signed heads, keys, the report and a NIST control map to one file',
    usage: EVIDENCE_USAGE,
    run: (args, io) => runEvidence(['export', ...args], io),
  },
  {
    name: 'evidence verify',
    synopsis: 'FILE [--trusted-keys JWKS] [--authority-keys JWKS] [--allow-uncertified]',
    summary: 'Verify an evidence file offline',
    usage: EVIDENCE_USAGE,
    run: (args, io) => runEvidence(['verify', ...args], io),
  },
  {
    name: 'evidence partitions',
    synopsis: '--evidence-store URL [--ahead DAYS] [--retain DURATION] [--detach] [--dry-run]',
    summary: "Create the evidence store's daily partitions ahead; drop or detach days past retention",
    usage: EVIDENCE_USAGE,
    run: (args, io) => runEvidence(['partitions', ...args], io),
  },
  {
    name: 'audit verify',
    synopsis: 'FILE... [-o json|yaml]',
    summary: 'Verify JSON-lines audit files a sidecar wrote (audit.path): hashes, links, seq continuity',
    usage: AUDIT_VERIFY_USAGE,
    run: (args, io) => runAuditVerify(['verify', ...args], io),
  },
  {
    name: 'approvals',
    synopsis: '[--all] [-n NS|-A] [-o json|yaml]',
    summary: 'List held commands waiting for approval: age, requester chain, approvals so far, statement',
    usage: APPROVALS_USAGE,
    run: (args, io) => runApprovals('approvals', args, io),
  },
  {
    name: 'approve',
    synopsis: 'NAME [--for DURATION [--scope SCOPE]] [--comment TEXT] [-n NS]',
    summary: 'Approve a held command as yourself (the API server authenticates you; admission checks it)',
    usage: APPROVALS_USAGE,
    run: (args, io) => runApprovals('approve', args, io),
  },
  {
    name: 'deny',
    synopsis: 'NAME [--comment TEXT] [-n NS]',
    summary: 'Deny a held command; one deny by an approver ends the request',
    usage: APPROVALS_USAGE,
    run: (args, io) => runApprovals('deny', args, io),
  },
  {
    name: 'revoke',
    synopsis: 'NAME [--comment TEXT] [-n NS]',
    summary: "End an approved request's time-bound grant at once",
    usage: APPROVALS_USAGE,
    run: (args, io) => runApprovals('revoke', args, io),
  },
  {
    name: 'policy test',
    synopsis: '-f POLICY.yaml -i CASES.yaml [-o table|json|yaml] [--opa PATH]',
    summary: 'Compile AccessPolicies as the operator does and check test cases against them',
    usage: POLICY_TEST_USAGE,
    run: runPolicyTest,
  },
  {
    name: 'policy compile',
    synopsis: '-f POLICY.yaml -o DIR [--opa PATH]',
    summary: "Compile AccessPolicies into bundle directories for a standalone sidecar's policies.bundleDir",
    usage: POLICY_COMPILE_USAGE,
    run: runPolicyCompile,
  },
  {
    name: 'token exchange',
    synopsis: '--url ISSUER --subject-token-file FILE [--actor-token-file FILE] [--resource R]... [--scope S]',
    summary: 'Mint a narrower child token through the token exchange (RFC 8693) and print it, for PGPASSWORD',
    usage: TOKEN_USAGE,
    run: (args, io) => runToken(['exchange', ...args], io),
  },
  {
    name: 'token log',
    synopsis: '[--exchange-namespace NS] [--verify] [-o json|yaml]',
    summary: 'List the exchange records; --verify checks their chains and signed heads',
    usage: TOKEN_USAGE,
    run: (args, io) => runToken(['log', ...args], io),
  },
  {
    name: 'token trace',
    synopsis: 'SESSION|EXCHANGE_ID [-n NS] [--exchange-namespace NS]',
    summary: "Follow a session's token back through every exchange to the token the chain started from",
    usage: TOKEN_USAGE,
    run: (args, io) => runToken(['trace', ...args], io),
  },
  {
    name: 'version',
    synopsis: '',
    summary: 'Print the version',
    usage: VERSION_USAGE,
    run: (_args, io) => {
      io.stdout.write(versionLine());
      return Promise.resolve(0);
    },
  },
];

export function mainUsage(commands: readonly Command[] = COMMANDS): string {
  const lines = commands.map((c) => `  ${c.name} ${c.synopsis}`.trimEnd() + `\n      ${c.summary}.`);
  return `Usage: kubectl chaperone COMMAND [flags]

Commands:
${lines.join('\n')}

Flags:
  -h, --help      help for kubectl chaperone, or for the COMMAND before it
      --version   print the version

Every command prints its own flags with --help. Exit codes: 0 done, 1 problems found, 2 usage error.
`;
}

function isHelpFlag(arg: string): boolean {
  return arg === '--help' || arg === '-h';
}

/** Words before the first flag (and before `--`): the candidate command name. */
function leadingWords(args: readonly string[]): string[] {
  const words: string[] = [];
  for (const arg of args) {
    if (arg.startsWith('-')) break;
    words.push(arg);
  }
  return words;
}

/** The command named by the longest prefix of words, with how many words it took. */
function lookup(commands: readonly Command[], words: readonly string[]): [Command, number] | undefined {
  let best: [Command, number] | undefined;
  for (const command of commands) {
    const name = command.name.split(' ');
    if (name.length > words.length || name.some((w, i) => w !== words[i])) continue;
    if (best === undefined || name.length > best[1]) best = [command, name.length];
  }
  return best;
}

/** Commands whose name starts with the given words (a group such as "evidence"). */
function group(commands: readonly Command[], words: readonly string[]): Command[] {
  return commands.filter((c) => {
    const name = c.name.split(' ');
    return name.length > words.length && words.every((w, i) => w === name[i]);
  });
}

function unknown(io: CommandIo, words: readonly string[], commands: readonly Command[]): number {
  const parent = words.slice(0, -1);
  const siblings = parent.length === 0 ? [] : group(commands, parent);
  const hint =
    siblings.length > 0
      ? `Commands of "${parent.join(' ')}": ${siblings.map((c) => c.name.split(' ').slice(parent.length).join(' ')).join(', ')}.`
      : `Commands: ${[...new Set(commands.map((c) => c.name.split(' ')[0]))].join(', ')}.`;
  io.stderr.write(
    `error: unknown command "${words.join(' ')}" for "kubectl chaperone"\n${hint}\n` +
      `Run 'kubectl chaperone --help' for usage.\n`,
  );
  return 2;
}

/** Runs kubectl-chaperone with the arguments after its own name; resolves to the exit code. */
export async function main(args: readonly string[], io: CommandIo, commands = COMMANDS): Promise<number> {
  const first = args[0];
  if (first === undefined) {
    io.stderr.write(`error: no command given\n\n${mainUsage(commands)}`);
    return 2;
  }
  if (isHelpFlag(first)) {
    io.stdout.write(mainUsage(commands));
    return 0;
  }
  if (first === '--version') {
    io.stdout.write(versionLine());
    return 0;
  }
  if (first === 'help') return help(args.slice(1), io, commands);
  if (first.startsWith('-')) {
    io.stderr.write(`error: unknown flag ${first}; a COMMAND comes first\n\n${mainUsage(commands)}`);
    return 2;
  }
  const words = leadingWords(args);
  const found = lookup(commands, words);
  if (found === undefined) return unknownOrGroup(io, words, args, commands);
  const [command, taken] = found;
  const rest = args.slice(taken);
  const end = rest.indexOf('--');
  if ((end === -1 ? rest : rest.slice(0, end)).some(isHelpFlag)) {
    io.stdout.write(command.usage);
    return 0;
  }
  return command.run(rest, io);
}

/** A group's name alone lists its commands (exit 0 with --help, 2 without); anything else is unknown. */
function unknownOrGroup(io: CommandIo, words: string[], args: readonly string[], commands: readonly Command[]): number {
  for (let n = words.length; n > 0; n--) {
    const members = group(commands, words.slice(0, n));
    if (members.length === 0) continue;
    if (n < words.length) return unknown(io, words.slice(0, n + 1), commands);
    const listing = `Usage: kubectl chaperone ${words.join(' ')} COMMAND\n\nCommands:\n${members
      .map((c) => `  ${c.name} ${c.synopsis}`.trimEnd() + `\n      ${c.summary}.`)
      .join('\n')}\n`;
    if (args.some(isHelpFlag)) {
      io.stdout.write(listing);
      return 0;
    }
    io.stderr.write(`error: "${words.join(' ')}" needs a command\n\n${listing}`);
    return 2;
  }
  return unknown(io, words.slice(0, 1), commands);
}

/** `help [COMMAND...]`: the same text as COMMAND --help. */
function help(words: readonly string[], io: CommandIo, commands: readonly Command[]): Promise<number> {
  if (words.length === 0) {
    io.stdout.write(mainUsage(commands));
    return Promise.resolve(0);
  }
  return main([...words, '--help'], io, commands);
}
