// The `*` patterns of TrustedIssuer kinds and DelegationPolicy matchers: `*` matches any run of characters
// (including none, `:` and `/`), everything else matches itself, case-sensitively, over the whole value.

const cache = new Map<string, RegExp>();

export function matchesPattern(pattern: string, value: string): boolean {
  if (!pattern.includes('*')) return pattern === value;
  let re = cache.get(pattern);
  if (re === undefined) {
    const body = pattern
      .split('*')
      .map((part) => part.replace(/[\\^$.|?+()[\]{}]/g, '\\$&'))
      .join('.*');
    re = new RegExp(`^${body}$`, 's');
    if (cache.size > 4096) cache.clear();
    cache.set(pattern, re);
  }
  return re.test(value);
}
