// Dispatch and usage errors of kubectl-chaperone, in process; the same rules through the real process are
// checked on the release executable in e2e/cli-release/standalone.test.ts.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { COMMANDS, main, type Command } from './main.ts';

interface Captured {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

async function capture(args: string[], commands?: readonly Command[]): Promise<Captured> {
  let stdout = '';
  let stderr = '';
  const io = {
    stdout: { write: (t: string) => (stdout += t) },
    stderr: { write: (t: string) => (stderr += t) },
  };
  const code = await main(args, io, commands);
  return { code, stdout, stderr };
}

/** A table whose commands record what they were called with. */
function recordingTable(calls: string[][]): Command[] {
  return ['alpha', 'group one', 'group two'].map((name) => ({
    name,
    synopsis: '',
    summary: name,
    usage: `Usage: kubectl chaperone ${name}\n`,
    run: (args: string[]) => {
      calls.push([name, ...args]);
      return Promise.resolve(7);
    },
  }));
}

describe('kubectl-chaperone dispatch', () => {
  it('every command names itself in its --help, exits 0 and runs nothing', async () => {
    for (const command of COMMANDS) {
      const result = await capture([...command.name.split(' '), '--help']);
      assert.equal(result.code, 0, command.name);
      assert.equal(result.stderr, '', command.name);
      assert.ok(result.stdout.includes(`kubectl chaperone ${command.name}`), `${command.name} --help names it`);
      const short = await capture([...command.name.split(' '), '-h']);
      assert.equal(short.stdout, result.stdout, `${command.name} -h`);
    }
  });

  it('an unknown command exits 2 with a message, with or without --help', async () => {
    for (const args of [['frobnicate'], ['frobnicate', '--help'], ['frobnicate', '-h', 'x'], ['help', 'frobnicate']]) {
      const result = await capture(args);
      assert.equal(result.code, 2, args.join(' '));
      assert.equal(result.stdout, '', args.join(' '));
      assert.match(result.stderr, /^error: unknown command "frobnicate" for "kubectl chaperone"\n/);
    }
    const sub = await capture(['evidence', 'import', '--help']);
    assert.equal(sub.code, 2);
    assert.match(
      sub.stderr,
      /unknown command "evidence import".*\nCommands of "evidence": export, verify, partitions\./,
    );
  });

  it('the main help goes to stdout with exit 0; no command or a leading unknown flag is a usage error', async () => {
    const help = await capture(['--help']);
    assert.equal(help.code, 0);
    for (const command of COMMANDS) assert.ok(help.stdout.includes(`  ${command.name}`), command.name);
    assert.deepEqual(await capture(['help']), help);
    const none = await capture([]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /^error: no command given\n/);
    const flag = await capture(['--frobnicate']);
    assert.equal(flag.code, 2);
    assert.match(flag.stderr, /^error: unknown flag --frobnicate/);
  });

  it('a group alone lists its commands: exit 0 with --help, 2 without', async () => {
    const listed = await capture(['evidence', '--help']);
    assert.equal(listed.code, 0);
    assert.match(listed.stdout, /^Usage: kubectl chaperone evidence COMMAND\n/);
    assert.match(listed.stdout, /evidence export/);
    assert.match(listed.stdout, /evidence verify/);
    const bare = await capture(['policy']);
    assert.equal(bare.code, 2);
    assert.match(bare.stderr, /^error: "policy" needs a command\n[\s\S]*policy test/);
  });

  it('passes the arguments after the command name and returns its exit code', async () => {
    const calls: string[][] = [];
    const table = recordingTable(calls);
    assert.equal((await capture(['alpha', 'x', '-n', 'ns'], table)).code, 7);
    assert.equal((await capture(['group', 'two', '--flag', 'one'], table)).code, 7);
    // After `--`, --help is an argument like any other.
    assert.equal((await capture(['group', 'one', '--', '--help'], table)).code, 7);
    assert.deepEqual(calls, [
      ['alpha', 'x', '-n', 'ns'],
      ['group two', '--flag', 'one'],
      ['group one', '--', '--help'],
    ]);
  });

  it('version names the runtime and the platform', async () => {
    const result = await capture(['version']);
    assert.equal(result.code, 0);
    assert.match(result.stdout, new RegExp(`^kubectl-chaperone .+ \\(node ${process.version}, ${process.platform}/`));
    assert.deepEqual(await capture(['--version']), result);
  });
});
