#!/usr/bin/env node
// kubectl-chaperone: the kubectl plugin (`kubectl chaperone ...` once it is on PATH).
import { parseArgs } from 'node:util';
import { OUTPUT_FORMATS, PolicyTestInputError, runPolicyTest, type OutputFormat } from '../commands/policy-test.ts';
import { run as runSessions } from '../commands/sessions.ts';
import { run as runVerify } from '../commands/verify.ts';
import { run as runEvidence } from '../commands/evidence.ts';
import { run as runAuditVerify } from '../commands/audit-verify.ts';
import { runPolicyCompile } from '../commands/policy-compile.ts';

// The auditor's commands parse their own flags; `policy test` is parsed below.
const auditCommands: Record<string, typeof runVerify> = {
  sessions: runSessions,
  // `show SESSION` is `sessions show SESSION`.
  show: (args, io) => runSessions(['show', ...args], io),
  verify: runVerify,
  evidence: runEvidence,
  audit: runAuditVerify,
};
const auditCommand = auditCommands[process.argv[2] ?? ''];
if (auditCommand !== undefined) process.exit(await auditCommand(process.argv.slice(3), process));

const HELP = `Usage: kubectl chaperone COMMAND

Commands:
  sessions [--identity P] [--actor P] [--resource P] [--since T] [--until T] [--decision D] [-n NS|-A] [-o json|yaml]
      List Session trails (kubectl-style table).
  show SESSION [-n NS] [-o json|yaml]   (also \`sessions show SESSION\`)
      One session as a timeline: identity, delegation chain, every record.
  verify SESSION | --all [--trusted-keys JWKS] [--authority-keys JWKS] [--baseline EVIDENCE] [-n NS|-A] [-o json|yaml]
      Verify hash chains, links between parts and sessions, head signatures, key certificates and the
      operator's checkpoints; exit 0 clean, 1 problems.
  evidence export [--from T] [--to T] -o FILE | evidence verify FILE
      Export records, signatures, keys, the verification report and a NIST control map; verify offline.
  audit verify FILE... [-o json|yaml]
      Verify JSON-lines audit files a sidecar wrote (audit.path): hashes, links, seq continuity.
  (each of these prints its own flags with --help)

  policy test -f POLICY.yaml -i CASES.yaml [-o table|json|yaml]
      Compile AccessPolicies locally with opa, as the operator does, and evaluate each case with the
      sidecar's policy engine. Prints CASE, EXPECTED, GOT, RULE, RESULT; exits 1 if any case fails or a
      policy does not compile, 2 on usage errors.

      -f, --filename FILE   AccessPolicy YAML (repeatable; multi-document files allowed)
      -i, --inputs FILE     test cases (see examples/policy-tests/)
      -o, --output FORMAT   table (default), json or yaml
          --opa PATH        opa binary (default: $CHAPERONE_OPA, else the repository's .tools/bin/opa)

  policy compile -f POLICY.yaml -o DIR [--opa PATH]
      Compile AccessPolicies with opa, as the operator does, into bundle directories DIR/NAME
      (policy.wasm, manifest.json) for a standalone sidecar's policies.bundleDir. Exits 1 if a policy
      does not compile (nothing is written then), 2 on usage errors.

  -h, --help   show this help`;

function usage(message: string): never {
  console.error(`kubectl-chaperone: ${message}\n\n${HELP}`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    options: {
      filename: { type: 'string', short: 'f', multiple: true },
      inputs: { type: 'string', short: 'i' },
      output: { type: 'string', short: 'o' },
      opa: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
} catch (err) {
  usage(err instanceof Error ? err.message : String(err));
}
const { values, positionals } = parsed;

if (values.help === true || positionals.length === 0) {
  console.log(HELP);
  process.exit(values.help === true ? 0 : 2);
}
if (positionals.join(' ') === 'policy compile') {
  if (values.filename === undefined || values.filename.length === 0) usage('policy compile needs -f POLICY.yaml');
  if (values.output === undefined) usage('policy compile needs -o DIR');
  try {
    const outcome = await runPolicyCompile({
      policyFiles: values.filename,
      outputDir: values.output,
      ...(values.opa === undefined ? {} : { opaPath: values.opa }),
    });
    process.stdout.write(outcome.stdout);
    process.stderr.write(outcome.stderr);
    process.exit(outcome.exitCode);
  } catch (err) {
    if (err instanceof PolicyTestInputError) {
      console.error(`error: ${err.message}`);
      process.exit(1);
    }
    throw err;
  }
}
if (positionals.join(' ') !== 'policy test') usage(`unknown command: ${positionals.join(' ')}`);
const output = values.output ?? 'table';
if (!(OUTPUT_FORMATS as readonly string[]).includes(output)) usage(`--output must be table, json or yaml`);
if (values.filename === undefined || values.filename.length === 0) usage('policy test needs -f POLICY.yaml');
if (values.inputs === undefined) usage('policy test needs -i CASES.yaml');

try {
  const outcome = await runPolicyTest({
    policyFiles: values.filename,
    inputsFile: values.inputs,
    output: output as OutputFormat,
    ...(values.opa === undefined ? {} : { opaPath: values.opa }),
  });
  process.stdout.write(outcome.stdout);
  process.stderr.write(outcome.stderr);
  process.exitCode = outcome.exitCode;
} catch (err) {
  if (err instanceof PolicyTestInputError) {
    console.error(`error: ${err.message}`);
    process.exit(1);
  }
  throw err;
}
