// kubectl chaperone token: the client side of Chaperone's token exchange (docs/identity.md).
//   token exchange ...   mint a narrower child token (RFC 8693) and print it, for PGPASSWORD or a kubeconfig
//   token log ...        the exchange records (who exchanged what for whom), optionally verified
//   token trace TARGET   follow a Session (or an exchange id) back through every exchange to its root token
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { parseArgs } from 'node:util';
import { compactVerify, importJWK, type JWK } from 'jose';
import * as k8s from '@kubernetes/client-node';
import { stringify } from 'yaml';
import {
  EXCHANGE_LOG_HEAD_TYPE,
  GROUP,
  TOKEN_EXCHANGE_GRANT_TYPE,
  TOKEN_TYPES,
  VERSION,
  resourceUri,
  verifyExchangeChain,
  type ExchangeRecord,
  type Session,
  type TokenExchangeLog,
} from '@chaperone/api';
import {
  CLUSTER_OPTIONS,
  connect,
  describeError,
  listSessions,
  unreachable,
  type CommandIo,
} from '../audit/cluster.ts';
import { formatTable } from '../table.ts';

export const TOKEN_USAGE = `Usage:
  kubectl chaperone token exchange --url ISSUER --subject-token-file FILE [flags]
      Exchange a token for a narrower child token (RFC 8693) and print it. Tokens are read from files,
      never from the command line (which other users of the machine can see).
        --url ISSUER              the exchange's issuer, https://<operator service>/identity/v1
                                  (default: $CHAPERONE_TOKEN_EXCHANGE_URL)
        --cacert FILE             CA bundle of the exchange's certificate (default: the system roots)
        --subject-token-file FILE the token to derive from (yours), e.g. the pod's projected token
        --actor-token-file FILE   the token of the party that will act (the child), for delegation
        --resource R              a resource the child may use: a URI, or NAMESPACE/NAME of a
                                  ProtectedResource (repeatable; default: the parent's)
        --scope "S1 S2"           scopes of the child (default: the parent's)
        --audience A              audience of the child (repeatable; default: chaperone)
        --lifetime SECONDS        lifetime asked for; refused if it outlives the parent or the maximum
        --may-act SUBJECT         only this party may act next on the child (with --may-act-issuer ISS, its issuer)
        -o, --output FORMAT       token (default: the token alone), json (the whole response)
  kubectl chaperone token log [--exchange-namespace NS] [--verify] [-o json|yaml]
      The exchange records, oldest first: time, id, subject, actor, depth, rule, expiry. --verify checks
      every stream's hash chain and signed head against the published keys; exit 1 on a problem.
  kubectl chaperone token trace SESSION|EXCHANGE_ID [-n NS] [--exchange-namespace NS]
      From a Session's verified identity (or an exchange id) back through every exchange to the token
      the chain started from; exit 1 when a link is missing or a record does not match its hash.

Flags:
  --exchange-namespace NS   where the exchange keeps its records (default: chaperone-system)
  -n, --namespace NS        namespace of the Session (trace)
  --kubeconfig FILE, --context NAME
`;

const PUBLIC_KEYS_CONFIGMAP = 'chaperone-token-exchange-jwks';

function post(
  url: string,
  ca: string | undefined,
  form: URLSearchParams,
): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        ...(ca === undefined ? {} : { ca }),
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          try {
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> });
          } catch {
            resolve({
              status: res.statusCode ?? 0,
              body: { error: 'invalid_response', error_description: text.slice(0, 300) },
            });
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer from the token exchange in 30 s')));
    req.on('error', reject);
    req.end(form.toString());
  });
}

function readToken(file: string): string {
  const token = readFileSync(file === '-' ? 0 : file, 'utf8').trim();
  if (token === '') throw new Error(`${file} is empty`);
  return token;
}

async function exchange(args: string[], io: CommandIo, env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      url: { type: 'string' },
      cacert: { type: 'string' },
      'subject-token-file': { type: 'string' },
      'subject-token-type': { type: 'string' },
      'actor-token-file': { type: 'string' },
      resource: { type: 'string', multiple: true },
      scope: { type: 'string' },
      audience: { type: 'string', multiple: true },
      lifetime: { type: 'string' },
      'may-act': { type: 'string' },
      'may-act-issuer': { type: 'string' },
      output: { type: 'string', short: 'o' },
    },
  });
  const url = values.url ?? env.CHAPERONE_TOKEN_EXCHANGE_URL;
  if (url === undefined || !url.startsWith('https://')) {
    io.stderr.write('error: --url (or $CHAPERONE_TOKEN_EXCHANGE_URL) must be the https issuer URL of the exchange\n');
    return 2;
  }
  const subjectFile = values['subject-token-file'];
  if (subjectFile === undefined) {
    io.stderr.write('error: --subject-token-file is required\n');
    return 2;
  }
  const output = values.output ?? 'token';
  if (output !== 'token' && output !== 'json') {
    io.stderr.write('error: --output must be token or json\n');
    return 2;
  }
  // The exchange refuses a may_act without its issuer: a subject is unique only within its issuer.
  if ((values['may-act-issuer'] === undefined) !== (values['may-act'] === undefined)) {
    io.stderr.write('error: --may-act and --may-act-issuer go together\n');
    return 2;
  }
  const form = new URLSearchParams({
    grant_type: TOKEN_EXCHANGE_GRANT_TYPE,
    subject_token: readToken(subjectFile),
    subject_token_type: values['subject-token-type'] ?? TOKEN_TYPES.jwt,
    requested_token_type: TOKEN_TYPES.jwt,
  });
  const actorFile = values['actor-token-file'];
  if (actorFile !== undefined) {
    form.set('actor_token', readToken(actorFile));
    form.set('actor_token_type', TOKEN_TYPES.jwt);
  }
  for (const r of values.resource ?? []) {
    // NAMESPACE/NAME names a ProtectedResource; anything with a scheme is a URI already.
    const short = /^([a-z0-9-]+)\/([a-z0-9.-]+)$/.exec(r);
    form.append('resource', short === null ? r : resourceUri(short[1] ?? '', short[2] ?? ''));
  }
  for (const a of values.audience ?? []) form.append('audience', a);
  if (values.scope !== undefined) form.set('scope', values.scope);
  if (values.lifetime !== undefined) form.set('requested_lifetime', values.lifetime);
  if (values['may-act'] !== undefined) {
    form.set(
      'may_act',
      JSON.stringify({
        sub: values['may-act'],
        iss: values['may-act-issuer'],
      }),
    );
  }
  const ca = values.cacert === undefined ? undefined : readFileSync(values.cacert, 'utf8');
  const reply = await post(`${url.replace(/\/$/, '')}/token`, ca, form);
  if (reply.status !== 200) {
    const b = reply.body as { error?: string; error_description?: string; chaperone_reason?: string };
    io.stderr.write(
      `error: the token exchange refused (HTTP ${String(reply.status)}): ${b.error ?? 'unknown'}: ${b.error_description ?? ''}${b.chaperone_reason === undefined ? '' : ` [${b.chaperone_reason}]`}\n`,
    );
    return 1;
  }
  io.stdout.write(
    output === 'json' ? `${JSON.stringify(reply.body, null, 2)}\n` : `${String(reply.body.access_token)}\n`,
  );
  return 0;
}

async function readLogs(custom: k8s.CustomObjectsApi, namespace: string): Promise<TokenExchangeLog[]> {
  const list = (await custom.listNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: 'tokenexchangelogs',
  })) as { items?: TokenExchangeLog[] };
  return (list.items ?? []).sort((a, b) =>
    a.spec.stream === b.spec.stream ? a.spec.part - b.spec.part : a.spec.startTime < b.spec.startTime ? -1 : 1,
  );
}

/** Problems of every stream: chain, part links, heads signed by a published key over the last record. */
async function verifyLogs(
  logs: readonly TokenExchangeLog[],
  core: k8s.CoreV1Api,
  namespace: string,
): Promise<string[]> {
  const problems: string[] = [];
  let keys: (JWK & { kid?: string })[] = [];
  try {
    const cm = await core.readNamespacedConfigMap({ namespace, name: PUBLIC_KEYS_CONFIGMAP });
    keys = (JSON.parse(cm.data?.['jwks.json'] ?? '{"keys":[]}') as { keys: typeof keys }).keys;
  } catch (err) {
    problems.push(`published keys (ConfigMap ${PUBLIC_KEYS_CONFIGMAP}) unreadable: ${describeError(err)}`);
  }
  const streams = new Map<string, TokenExchangeLog[]>();
  for (const l of logs) streams.set(l.spec.stream, [...(streams.get(l.spec.stream) ?? []), l]);
  for (const [stream, parts] of streams) {
    parts.forEach((p, i) => {
      if (p.spec.part !== i) problems.push(`stream ${stream}: part ${String(i)} is missing`);
      if (i > 0 && p.spec.previousPart !== parts[i - 1]?.metadata.name) {
        problems.push(
          `stream ${stream}: ${p.metadata.name ?? ''} does not continue ${parts[i - 1]?.metadata.name ?? ''}`,
        );
      }
    });
    const records = parts.flatMap((p) => p.spec.records);
    for (const c of verifyExchangeChain(records))
      problems.push(`stream ${stream} seq ${String(c.seq)}: ${c.problem}: ${c.detail}`);
    if (records[0] !== undefined && records[0].seq !== 1)
      problems.push(`stream ${stream}: records before seq ${String(records[0].seq)} are missing`);
    for (const p of parts) {
      const head = p.spec.head;
      const last = p.spec.records.at(-1);
      if (head === undefined || last === undefined) continue;
      const key = keys.find((k) => k.kid === head.keyId);
      if (key === undefined) {
        problems.push(`${p.metadata.name ?? ''}: head signed by unpublished key ${head.keyId}`);
        continue;
      }
      try {
        const { payload } = await compactVerify(head.signature, await importJWK(key, 'ES256'));
        const signed = JSON.parse(new TextDecoder().decode(payload)) as {
          typ?: string;
          hash?: string;
          seq?: number;
          object?: string;
        };
        if (signed.typ !== EXCHANGE_LOG_HEAD_TYPE || signed.object !== `${namespace}/${p.metadata.name ?? ''}`) {
          problems.push(`${p.metadata.name ?? ''}: the signed head names another object`);
        } else if (signed.hash !== last.hash || signed.seq !== last.seq || head.hash !== last.hash) {
          problems.push(
            `${p.metadata.name ?? ''}: the signed head does not match the last record (records changed after signing)`,
          );
        }
      } catch (err) {
        problems.push(`${p.metadata.name ?? ''}: head signature invalid: ${(err as Error).message}`);
      }
    }
  }
  return problems;
}

function age(from: string, now: Date): string {
  const s = Math.max(0, Math.floor((now.getTime() - Date.parse(from)) / 1000));
  return s < 120 ? `${String(s)}s` : s < 7200 ? `${String(Math.floor(s / 60))}m` : `${String(Math.floor(s / 3600))}h`;
}

function recordRow(r: ExchangeRecord, now: Date): string[] {
  return [
    r.time,
    r.id,
    r.subject.subject,
    r.actor === undefined
      ? '(narrowed)'
      : `${r.actor.subject}${r.actor.kind === undefined ? '' : ` (${r.actor.kind})`}`,
    String(r.chain.length),
    r.rule,
    (r.resources ?? ['*']).join(','),
    (r.scopes ?? ['*']).join(' '),
    Date.parse(r.expiresAt) <= now.getTime()
      ? 'expired'
      : `in ${age(now.toISOString(), new Date(Date.parse(r.expiresAt)))}`,
  ];
}

async function log(args: string[], io: CommandIo, now: Date): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      ...CLUSTER_OPTIONS,
      'exchange-namespace': { type: 'string' },
      verify: { type: 'boolean' },
      output: { type: 'string', short: 'o' },
    },
  });
  const cluster = connect(values);
  const namespace = values['exchange-namespace'] ?? 'chaperone-system';
  const logs = await readLogs(cluster.custom, namespace).catch((err: unknown) => {
    throw unreachable(cluster, err);
  });
  const records = logs.flatMap((l) => l.spec.records.map((r) => ({ stream: l.spec.stream, record: r })));
  if (values.output === 'json' || values.output === 'yaml') {
    const list = records.map((r) => r.record);
    io.stdout.write(values.output === 'json' ? `${JSON.stringify(list, null, 2)}\n` : stringify(list));
  } else if (records.length === 0) {
    io.stderr.write(`No exchange records in ${namespace} namespace.\n`);
  } else {
    io.stdout.write(
      formatTable(
        ['TIME', 'ID', 'SUBJECT', 'ACTOR', 'DEPTH', 'RULE', 'RESOURCES', 'SCOPES', 'EXPIRES'],
        records
          .sort((a, b) => (a.record.time < b.record.time ? -1 : a.record.time > b.record.time ? 1 : 0))
          .map((r) => recordRow(r.record, now)),
      ),
    );
  }
  if (values.verify !== true) return 0;
  const problems = await verifyLogs(logs, cluster.kc.makeApiClient(k8s.CoreV1Api), namespace);
  const streams = new Set(logs.map((l) => l.spec.stream)).size;
  if (problems.length === 0) {
    io.stdout.write(
      `verified: ${String(records.length)} records in ${String(streams)} streams; chains intact, heads signed by published keys\n`,
    );
    return 0;
  }
  for (const p of problems) io.stdout.write(`PROBLEM  ${p}\n`);
  return 1;
}

async function trace(args: string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...CLUSTER_OPTIONS, 'exchange-namespace': { type: 'string' } },
  });
  const target = positionals[0];
  if (target === undefined || positionals.length > 1) {
    io.stderr.write('error: token trace needs one SESSION (object name or session id) or EXCHANGE_ID\n');
    return 2;
  }
  const cluster = connect(values);
  const records = new Map(
    (
      await readLogs(cluster.custom, values['exchange-namespace'] ?? 'chaperone-system').catch((err: unknown) => {
        throw unreachable(cluster, err);
      })
    )
      .flatMap((l) => l.spec.records)
      .map((r) => [r.id, r]),
  );
  let id = target;
  let expected: string | undefined;
  const session = (await listSessions(cluster)).find(
    (s: Session) => s.metadata.name === target || s.spec.sessionId === target,
  );
  if (session !== undefined) {
    const identity = session.spec.identity;
    // Top of the chain first: the subject, then each actor in the order they joined, the current one last.
    const chain = [identity.subject, ...(identity.chain ?? []).map((a) => a.subject).reverse()];
    io.stdout.write(`Session ${session.metadata.name ?? ''}: ${chain.join(' -> ')} (acting: ${chain.at(-1) ?? ''})\n`);
    if (identity.exchange === undefined) {
      io.stdout.write('  its token was not issued by the exchange: the chain starts here\n');
      return 0;
    }
    id = identity.exchange.id;
    expected = identity.exchange.record;
  }
  let problems = 0;
  for (let depth = 0; depth < 32; depth++) {
    const r = records.get(id);
    if (r === undefined) {
      io.stdout.write(`  MISSING  exchange record ${id}: deleted, or in another namespace\n`);
      return 1;
    }
    const ok = expected === undefined || expected === r.hash;
    if (!ok) problems++;
    io.stdout.write(
      `  ${ok ? 'exchange' : 'MISMATCH'} ${r.id} at ${r.time} by ${r.replica} under ${r.rule}\n` +
        `           ${r.subject.subject}${r.actor === undefined ? ' narrowed its token' : ` delegated to ${r.actor.subject}${r.actor.kind === undefined ? '' : ` (${r.actor.kind})`}`}; chain depth ${String(r.chain.length)}\n` +
        `           resources ${(r.resources ?? ['*']).join(',')}; scopes ${(r.scopes ?? ['*']).join(' ')}; expires ${r.expiresAt}\n` +
        (ok ? '' : `           the record's hash ${r.hash} is not the ${expected ?? ''} its child names\n`),
    );
    if (r.parent.exchangeId === undefined) {
      io.stdout.write(`  root     subject token ${r.parent.tokenHash} from ${r.subject.issuer}\n`);
      return problems === 0 ? 0 : 1;
    }
    id = r.parent.exchangeId;
    expected = r.parent.exchangeRecord;
  }
  io.stdout.write('  the trace is longer than 32 exchanges\n');
  return 1;
}

export async function run(
  args: string[],
  io: CommandIo,
  env: NodeJS.ProcessEnv = process.env,
  now = new Date(),
): Promise<number> {
  const [sub, ...rest] = args;
  try {
    if (sub === 'exchange') return await exchange(rest, io, env);
    if (sub === 'log') return await log(rest, io, now);
    if (sub === 'trace') return await trace(rest, io);
    if (sub === '--help' || sub === '-h') {
      io.stdout.write(TOKEN_USAGE);
      return 0;
    }
    io.stderr.write(`error: unknown token command ${sub ?? ''}\n\n${TOKEN_USAGE}`);
    return 2;
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || (err as Error).name === 'TypeError') {
      io.stderr.write(`error: ${(err as Error).message}\n\n${TOKEN_USAGE}`);
      return 2;
    }
    io.stderr.write(`error: ${describeError(err)}\n`);
    return 1;
  }
}
