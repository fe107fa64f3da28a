// kubectl chaperone evidence export|verify: the audit trail of a time window as one self-contained JSON
// file, and its offline verification (no cluster needed).
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { CLUSTER_OPTIONS, describeError, type CommandIo } from '../audit/cluster.ts';
import { readTrail } from '../audit/read-trail.ts';
import { buildEvidence, evidenceDigest, serializeEvidence, verifyEvidence } from '../audit/evidence.ts';
import {
  AUTHORITY_OPTIONS,
  AUTHORITY_USAGE,
  UNCERTIFIED_OPTIONS,
  UNCERTIFIED_USAGE,
  refuseUncertified,
} from '../audit/authority.ts';
import { EVIDENCE_STORE_OPTIONS, EVIDENCE_STORE_USAGE } from '../audit/evidence-records.ts';
import { maintainEvidencePartitions } from '../audit/evidence-partitions.ts';
import { parseGoDuration } from '@chaperone/api';
import { renderReport } from '../audit/render-report.ts';
import { parseTimeFlag } from '../audit/session-view.ts';
import { loadTrustedKeys } from '../audit/trusted-keys.ts';

export const EVIDENCE_USAGE = `Usage:
  kubectl chaperone evidence export -o FILE [--from TIME] [--to TIME] [-n NS | -A] [--trusted-keys FILE]
      Writes every session overlapping [from, to] (all parts), the signed heads, the public keys, the
      verification report and the NIST SP 800-53 map to FILE (canonical JSON; its sha256 is printed).
      TIME is RFC 3339 or a duration before now (e.g. 720h). Exit 1 if the trail does not verify (the file
      is still written, with the problems in its report), as verify would: a signer key without the
      operator's certificate is an error unless --allow-uncertified. The operator's audit authority keys
      and its newest checkpoint are included when the cluster has them.
  kubectl chaperone evidence verify FILE [--trusted-keys FILE] [--authority-keys FILE] [--allow-uncertified]
      [-o json|yaml]
      Recomputes every hash, link, signature, certificate and checkpoint from the file alone (with the
      authority keys the file carries unless --authority-keys pins them). An uncertified signer key fails
      it unless --allow-uncertified, whatever the export accepted; the embedded report is compared with
      one recomputed the way the export was made. Exit 0 verified, 1 not.
  kubectl chaperone evidence partitions --evidence-store URL [--ahead DAYS] [--retain DURATION] [--detach]
      [--dry-run]
      Maintains the evidence store's daily partitions: creates those from yesterday to DAYS ahead (default
      7) and, with --retain (a Go duration, e.g. 2160h), drops the days whose end is older than that, or
      with --detach detaches them (kept as plain tables, for archiving). URL logs in as a member of the
      records table's owner (the installer's role; password from PGPASSWORD or ~/.pgpass). Run it daily
      (a CronJob). Exit 0 done, 1 failed.

Authority flags (export):
${AUTHORITY_USAGE}
Uncertified signer keys (export and verify):
${UNCERTIFIED_USAGE}
Evidence store (export):
${EVIDENCE_STORE_USAGE}`;

export async function run(args: string[], io: CommandIo, now: Date = new Date()): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'export') return exportEvidence(rest, io, now);
  if (sub === 'verify') return verifyFile(rest, io);
  if (sub === 'partitions') return partitions(rest, io, now);
  if (sub === '--help' || sub === '-h' || sub === 'help') {
    io.stdout.write(EVIDENCE_USAGE);
    return 0;
  }
  io.stderr.write(`error: evidence needs export, verify or partitions\n\n${EVIDENCE_USAGE}`);
  return 2;
}

async function exportEvidence(args: string[], io: CommandIo, now: Date): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        ...CLUSTER_OPTIONS,
        output: { type: 'string', short: 'o' },
        from: { type: 'string' },
        to: { type: 'string' },
        'trusted-keys': { type: 'string' },
        ...AUTHORITY_OPTIONS,
        ...UNCERTIFIED_OPTIONS,
        ...EVIDENCE_STORE_OPTIONS,
      },
    }));
  } catch (err) {
    io.stderr.write(`error: ${(err as Error).message}\n\n${EVIDENCE_USAGE}`);
    return 2;
  }
  if (values.output === undefined) {
    io.stderr.write(`error: evidence export needs -o FILE\n`);
    return 2;
  }
  const requireCertified = refuseUncertified(values, io);
  if (requireCertified === 2) return 2;
  try {
    const from = values.from === undefined ? undefined : parseTimeFlag(values.from, now);
    const to = values.to === undefined ? undefined : parseTimeFlag(values.to, now);
    const trustedKeys =
      values['trusted-keys'] === undefined ? undefined : await loadTrustedKeys(values['trusted-keys']);
    const { cluster, sessions, retention, authority } = await readTrail(values);
    const context = cluster.kc.getContextObject(cluster.kc.getCurrentContext());
    const bundle = await buildEvidence(sessions, {
      from,
      to,
      namespaces: cluster.namespace === undefined ? 'all' : [cluster.namespace],
      source: {
        server: cluster.kc.getCurrentCluster()?.server,
        context: context?.name,
        user: context?.user,
      },
      retention,
      trustedKeys,
      authorityKeys: authority.keys,
      checkpoints: authority.checkpoints,
      requireCertified,
      now,
    });
    const text = serializeEvidence(bundle);
    await writeFile(values.output, text, { mode: 0o600 });
    const { summary } = bundle.report;
    io.stdout.write(
      `wrote ${values.output}: ${summary.sessions} session(s), ${summary.objects} object(s), ${summary.records} record(s), ` +
        `${bundle.keys.length} key(s); ${bundle.report.ok ? 'verified' : `NOT verified (${summary.errors} error(s))`}\n` +
        `${evidenceDigest(text)}  ${values.output}\n`,
    );
    return bundle.report.ok ? 0 : 1;
  } catch (err) {
    io.stderr.write(`error: ${describeError(err)}\n`);
    return 1;
  }
}

async function partitions(args: string[], io: CommandIo, now: Date): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        ...EVIDENCE_STORE_OPTIONS,
        ahead: { type: 'string', default: '7' },
        retain: { type: 'string' },
        detach: { type: 'boolean', default: false },
        'dry-run': { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    io.stderr.write(`error: ${(err as Error).message}\n\n${EVIDENCE_USAGE}`);
    return 2;
  }
  const url = values['evidence-store'];
  const ahead = Number(values.ahead);
  if (url === undefined || !Number.isInteger(ahead) || ahead < 0 || ahead > 366) {
    io.stderr.write(`error: evidence partitions needs --evidence-store URL and --ahead 0..366\n`);
    return 2;
  }
  let retainDays: number | undefined;
  try {
    retainDays = values.retain === undefined ? undefined : parseGoDuration(values.retain) / 86_400_000;
  } catch (err) {
    io.stderr.write(`error: --retain: ${(err as Error).message}\n`);
    return 2;
  }
  if (retainDays !== undefined && retainDays < 1) {
    io.stderr.write(`error: --retain must be at least 24h (a day is dropped whole)\n`);
    return 2;
  }
  try {
    const result = await maintainEvidencePartitions(
      url,
      { aheadDays: ahead, retainDays, detach: values.detach, dryRun: values['dry-run'], now },
      (line) => io.stdout.write(`${line}\n`),
    );
    io.stdout.write(
      `${String(result.created.length)} created, ${String(result.expired.length)} ${values.detach ? 'detached' : 'dropped'}, ` +
        `${String(result.kept)} kept; ${String(result.defaultRows)} row(s) in the default partition\n`,
    );
    if (result.defaultRows > 0) {
      io.stderr.write(
        `warning: ${String(result.defaultRows)} record(s) in chaperone.audit_records_default: their days had no partition; retention cannot drop them by day\n`,
      );
    }
    return 0;
  } catch (err) {
    io.stderr.write(`error: ${describeError(err)}\n`);
    return 1;
  }
}

async function verifyFile(args: string[], io: CommandIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        output: { type: 'string', short: 'o' },
        'trusted-keys': { type: 'string' },
        'authority-keys': { type: 'string' },
        ...UNCERTIFIED_OPTIONS,
      },
    });
  } catch (err) {
    io.stderr.write(`error: ${(err as Error).message}\n\n${EVIDENCE_USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const requireCertified = refuseUncertified(values, io);
  if (requireCertified === 2) return 2;
  const file = positionals[0];
  if (file === undefined || positionals.length > 1) {
    io.stderr.write(`error: evidence verify needs exactly one FILE\n`);
    return 2;
  }
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    io.stderr.write(`error: ${(err as Error).message}\n`);
    return 1;
  }
  try {
    const trustedKeys =
      values['trusted-keys'] === undefined ? undefined : await loadTrustedKeys(values['trusted-keys']);
    const authorityKeys =
      values['authority-keys'] === undefined ? undefined : await loadTrustedKeys(values['authority-keys']);
    const check = await verifyEvidence(text, { trustedKeys, authorityKeys, requireCertified });
    if (values.output === 'json' || values.output === 'yaml') {
      const doc = {
        ok: check.ok,
        digest: evidenceDigest(text),
        inconsistencies: check.inconsistencies,
        report: check.report,
      };
      io.stdout.write(values.output === 'json' ? `${JSON.stringify(doc, null, 2)}\n` : stringify(doc));
    } else {
      io.stdout.write(`${file}: ${evidenceDigest(text)}\n`);
      io.stdout.write(renderReport(check.report, values['authority-keys'] === undefined ? 'cluster' : 'pinned'));
      for (const i of check.inconsistencies) io.stdout.write(`INCONSISTENT: ${i}\n`);
      if (check.inconsistencies.length > 0) io.stdout.write('NOT VERIFIED: the evidence file contradicts itself.\n');
    }
    return check.ok ? 0 : 1;
  } catch (err) {
    io.stderr.write(`error: ${file}: ${(err as Error).message}\n`);
    return 1;
  }
}
