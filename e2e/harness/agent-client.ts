// An agent's node-postgres session through a test sidecar: its token is the password (docs/identity.md), the
// user and database it names are only recorded (`source`), never trusted. The one place for the setup the
// PostgreSQL and approval tests wrote out each time.
import type { TestContext } from 'node:test';
import pg from 'pg';
import type { JWTPayload } from 'jose';
import type { SidecarProcess } from './sidecar-process.ts';

export interface AgentClientOptions {
  /** Lifetime of the token the test issuer signs, in seconds (its default: 600). */
  readonly expiresIn?: number;
  /** node-postgres settings beside (or instead of) host, port, user `agent`, database `agent` and the token. */
  readonly client?: Partial<pg.ClientConfig>;
  /** Ends the client (ignoring errors) when this test ends. */
  readonly endAfter?: TestContext;
  /** Ignores the client's `error` events: a FATAL the test provokes, the database dropped under it. */
  readonly ignoreErrors?: boolean;
}

/**
 * A node-postgres client connected through `sidecar` as `agent`: the claims the sidecar's test issuer signs a
 * token for, or `{ token }` (one signed before, an exchanged token). Rejects as `connect()` does.
 */
export async function connectAgent(
  sidecar: Pick<SidecarProcess, 'host' | 'port' | 'issuer'>,
  agent: (JWTPayload & { sub: string }) | { readonly token: string },
  options: AgentClientOptions = {},
): Promise<pg.Client> {
  const password =
    'token' in agent && typeof agent.token === 'string'
      ? agent.token
      : await sidecar.issuer.sign(
          agent as JWTPayload & { sub: string },
          options.expiresIn === undefined ? {} : { expiresIn: options.expiresIn },
        );
  const client = new pg.Client({
    host: sidecar.host,
    port: sidecar.port,
    user: 'agent',
    database: 'agent',
    password,
    ...options.client,
  });
  if (options.ignoreErrors === true) client.on('error', () => undefined);
  await client.connect();
  options.endAfter?.after(() => client.end().catch(() => undefined));
  return client;
}
