// The upstream's addresses, resolved once per few seconds instead of once per connection. Every client
// connection opens its own upstream connection, and `dns.lookup` (getaddrinfo on libuv's thread pool, then
// Happy Eyeballs over the answers) was ~4 % of the sidecar's CPU in a connection storm (bench/README.md).
// Only successful answers are kept, for ADDRESS_TTL_MS: a moved database (a Service's new endpoints, a
// failover record) reaches new connections within that time, as with a short DNS TTL. IP literals never
// reach a lookup (net.connect skips it), and TLS verify-full still checks the certificate against the name.
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions, type LookupOptions } from 'node:dns';
import type { LookupFunction } from 'node:net';

/** How long a resolved address list is reused (ms). */
export const ADDRESS_TTL_MS = 5_000;

interface Entry {
  readonly addresses: readonly LookupAddress[];
  readonly until: number;
}

/** A `lookup` for net.connect that reuses answers for ADDRESS_TTL_MS; `now` and `resolve` for tests. */
export function cachedLookup(
  now: () => number = Date.now,
  resolve: (host: string, options: LookupAllOptions, cb: (err: Error | null, a: LookupAddress[]) => void) => void = (
    host,
    options,
    cb,
  ) => {
    dnsLookup(host, options, cb);
  },
): LookupFunction {
  const cache = new Map<string, Entry>();
  return (hostname: string, options: LookupOptions, callback) => {
    const family =
      options.family === 'IPv4'
        ? 4
        : options.family === 'IPv6'
          ? 6
          : typeof options.family === 'number'
            ? options.family
            : 0;
    const key = `${String(family)}/${String(options.hints ?? 0)}/${hostname}`;
    const answer = (addresses: readonly LookupAddress[]): void => {
      if (options.all === true) {
        (callback as unknown as (err: null, addresses: LookupAddress[]) => void)(null, [...addresses]);
        return;
      }
      const first = addresses[0] as LookupAddress;
      callback(null, first.address, first.family);
    };
    const hit = cache.get(key);
    if (hit !== undefined && hit.until > now()) {
      // Asynchronously, as dns.lookup answers: net.connect expects the callback after it returns.
      process.nextTick(answer, hit.addresses);
      return;
    }
    resolve(
      hostname,
      { family, all: true, ...(options.hints === undefined ? {} : { hints: options.hints }) },
      (err, addresses) => {
        if (err !== null || addresses.length === 0) {
          cache.delete(key);
          callback(err ?? Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
          return;
        }
        cache.set(key, { addresses, until: now() + ADDRESS_TTL_MS });
        answer(addresses);
      },
    );
  };
}
