// One sidecar with one HTTP-engine listener in front of a plain-HTTP upstream on loopback, the way the HTTP
// engine's corpora start it: the injected credential from a file, audit FailClosed, stopped after the test.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { AccessPolicySpec } from '@chaperone/api';
import { testDir } from '../harness/env.ts';
import { spawnSidecar, type SidecarProcess } from '../harness/sidecar-process.ts';

/** Every request to the listener `api` allowed (rule `all`): for tests of who gets in, not of what policy says. */
export const HTTP_ALLOW_ALL: AccessPolicySpec = {
  resources: { names: ['api'] },
  rules: [{ name: 'all', decision: 'allow', match: {} }],
  defaultDecision: 'deny',
};

export async function spawnHttpEngineSidecar(
  t: TestContext,
  options: {
    upstreamPort: number;
    policies: Record<string, AccessPolicySpec>;
    credential: string;
    /** Trusted issuers besides the harness's (the config's identity.issuers form). */
    extraIssuers?: Record<string, unknown>[];
    /** The sidecar's directory when the test runs another sidecar in its own (default: the test's). */
    dir?: string;
    /** The namespace of its policies (where delegation rules are read). */
    policyNamespace?: string;
    /** The listener's ProtectedResource identity (what records and delegation rules name). */
    resource?: { namespace: string; labels: Record<string, string> };
  },
): Promise<SidecarProcess> {
  const dir = options.dir ?? testDir(t);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'credential'), options.credential);
  const sidecar = await spawnSidecar({
    dir,
    policies: options.policies,
    listeners: [
      {
        name: 'api',
        type: 'http',
        listen: '127.0.0.1:0',
        upstream: {
          url: `http://127.0.0.1:${String(options.upstreamPort)}`,
          tls: { mode: 'disable' },
          credential: { valueFile: join(dir, 'credential') },
        },
        ...(options.resource === undefined ? {} : { resource: options.resource }),
        auditFailureMode: 'FailClosed',
      },
    ],
    ...(options.policyNamespace === undefined ? {} : { policyNamespace: options.policyNamespace }),
    ...(options.extraIssuers === undefined ? {} : { extraIssuers: options.extraIssuers }),
  });
  t.after(() => sidecar.stop());
  return sidecar;
}
