// Classifies a Kubernetes API request the way kube-apiserver does (k8s.io/apiserver, endpoints/request
// RequestInfoFactory): verb (get/list/watch/create/update/patch/delete/deletecollection, or proxy, or the
// lower-cased method for non-resource URLs), API group and version, resource, subresource, namespace, name.
// Pure. The apiserver decodes the path (Go's url.URL.Path) before it splits it, and reads the query with
// url.ParseQuery; so does this module, and where a Go server and this module could read a request
// differently (encoded slashes, dot segments, empty segments, semicolons in the query, unclear watch or
// fieldSelector values) the request is refused instead of guessed at.

/** What the apiserver's RequestInfo holds, plus the facts the sidecar records. */
export interface RequestInfo {
  readonly isResourceRequest: boolean;
  /** The decoded path, as the apiserver's RequestInfo.Path. */
  readonly path: string;
  readonly verb: string;
  readonly apiPrefix: string;
  readonly apiGroup: string;
  readonly apiVersion: string;
  readonly namespace: string;
  readonly resource: string;
  readonly subresource: string;
  readonly name: string;
  /** The path segments after the namespace (RequestInfo.Parts). */
  readonly parts: readonly string[];
  /**
   * `dryRun=All` was asked for on a write the apiserver runs as a dry run (it decides and validates but
   * stores nothing); false for reads, non-resource URLs and connect subresources, which have no dry run.
   */
  readonly dryRun: boolean;
}

/** Why a request cannot be classified safely; the engine answers 400 with it. */
export class UnclassifiableRequest extends Error {
  override name = 'UnclassifiableRequest';
}

const API_PREFIXES: ReadonlySet<string> = new Set(['api', 'apis']);
const GROUPLESS_PREFIXES: ReadonlySet<string> = new Set(['api']);
/** Legacy path prefixes that set the verb (/api/v1/watch/..., /api/v1/proxy/...). */
const SPECIAL_VERBS: ReadonlySet<string> = new Set(['proxy', 'watch']);
/** Verbs whose third path part is not a subresource (everything after the name is proxied). */
const NO_SUBRESOURCE_VERBS: ReadonlySet<string> = new Set(['proxy']);
/** Subresources of a namespace itself (/api/v1/namespaces/x/status) rather than resources inside it. */
const NAMESPACE_SUBRESOURCES: ReadonlySet<string> = new Set(['status', 'finalize']);

const METHOD_VERBS: Readonly<Record<string, string>> = {
  POST: 'create',
  GET: 'get',
  HEAD: 'get',
  PUT: 'update',
  PATCH: 'patch',
  DELETE: 'delete',
};

/** Subresources the API server serves as connections (rest.Connecter), which take no dry run. */
const CONNECT_SUBRESOURCES: ReadonlySet<string> = new Set(['exec', 'attach', 'portforward', 'proxy']);

/**
 * API groups kube-apiserver serves itself (its built-in storage runs `dryRun`). Any other group is a
 * CustomResourceDefinition's or an aggregated API server's (an APIService), which may ignore `dryRun` and
 * write for real; the engine cannot tell which from the request.
 */
const BUILT_IN_GROUPS: ReadonlySet<string> = new Set([
  '',
  'admissionregistration.k8s.io',
  'apiextensions.k8s.io',
  'apiregistration.k8s.io',
  'apps',
  'authentication.k8s.io',
  'authorization.k8s.io',
  'autoscaling',
  'batch',
  'certificates.k8s.io',
  'coordination.k8s.io',
  'discovery.k8s.io',
  'events.k8s.io',
  'flowcontrol.apiserver.k8s.io',
  'internal.apiserver.k8s.io',
  'networking.k8s.io',
  'node.k8s.io',
  'policy',
  'rbac.authorization.k8s.io',
  'resource.k8s.io',
  'scheduling.k8s.io',
  'storage.k8s.io',
  'storagemigration.k8s.io',
]);

/**
 * How a dry run is recorded: `(dry run)` where kube-apiserver runs it itself, and for other groups that it
 * was asked for but not verified (an aggregated API server may ignore `dryRun` and write). '' for no dry run.
 */
export function dryRunMark(info: RequestInfo): string {
  if (!info.dryRun) return '';
  if (BUILT_IN_GROUPS.has(info.apiGroup)) return ' (dry run)';
  return ` (dry run asked, not verified: group ${info.apiGroup} is served by a CustomResourceDefinition or an aggregated API server, which may ignore it)`;
}

/** Verbs that change state; what approval and request-body recording apply to. */
export const MUTATING_VERBS: ReadonlySet<string> = new Set(['create', 'update', 'patch', 'delete', 'deletecollection']);

/**
 * Percent-decodes a path as Go's url.PathUnescape does (no `+` → space); throws on a malformed escape, which
 * Go's server also refuses.
 */
function unescapePath(raw: string): string {
  if (!raw.includes('%')) return raw;
  if (/%(?![0-9A-Fa-f]{2})/.test(raw)) throw new UnclassifiableRequest(`malformed percent-escape in path`);
  try {
    return decodeURIComponent(raw);
  } catch {
    // Escapes that are not UTF-8: Go would keep the bytes; names with such bytes are invalid anyway.
    throw new UnclassifiableRequest('path escapes are not valid UTF-8');
  }
}

/** Go's url.QueryUnescape: `+` is a space, malformed escapes are errors. */
function unescapeQuery(raw: string): string {
  const spaced = raw.replace(/\+/g, ' ');
  return unescapePath(spaced);
}

/**
 * The query as Go's url.ParseQuery reads it, refusing what Go would drop or read differently: a pair with a
 * `;` (Go ≥ 1.17 skips it) or a malformed escape (Go skips the pair), so the sidecar never decides on a
 * parameter the apiserver does not see or the reverse.
 */
export function parseQuery(raw: string): Map<string, string[]> {
  const values = new Map<string, string[]>();
  for (const pair of raw.split('&')) {
    if (pair === '') continue;
    if (pair.includes(';')) throw new UnclassifiableRequest('semicolon in the query string');
    const eq = pair.indexOf('=');
    const key = unescapeQuery(eq === -1 ? pair : pair.slice(0, eq));
    const value = unescapeQuery(eq === -1 ? '' : pair.slice(eq + 1));
    const list = values.get(key);
    if (list === undefined) values.set(key, [value]);
    else list.push(value);
  }
  return values;
}

/**
 * The watch flag of a list request. The apiserver's decoder takes the first value and reads anything but a
 * false spelling as true, and falls back to "present and not false" when the other options do not decode;
 * only the unambiguous spellings are accepted here.
 */
function watchFlag(query: Map<string, string[]>): boolean {
  const values = query.get('watch');
  if (values === undefined) return false;
  if (values.length !== 1) throw new UnclassifiableRequest('watch is given more than once');
  const v = values[0] ?? '';
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new UnclassifiableRequest(`watch=${v} is not true, false, 1 or 0`);
}

/** IsValidPathSegmentName: the apiserver only takes a field-selector name that could be a path segment. */
function validPathSegmentName(name: string): boolean {
  return name !== '.' && name !== '..' && !name.includes('/') && !name.includes('%');
}

/**
 * The name a field selector pins a list or watch to (`metadata.name=x` or `metadata.name==x`), as
 * fields.Selector.RequiresExactMatch reads it; the apiserver authorizes such a list as a request for that
 * name. Terms are comma-separated; a backslash escapes `,`, `=`, `!` and itself.
 */
export function fieldSelectorName(selector: string): string | undefined {
  const terms: string[] = [];
  let current = '';
  for (let i = 0; i < selector.length; i++) {
    const c = selector[i] ?? '';
    if (c === '\\') {
      current += c + (selector[i + 1] ?? '');
      i++;
    } else if (c === ',') {
      terms.push(current);
      current = '';
    } else current += c;
  }
  terms.push(current);
  let found: string | undefined;
  for (const term of terms) {
    // The first unescaped operator splits the term.
    const m = /^((?:[^\\=!]|\\.)*?)\s*(==|=|!=)\s*(.*)$/s.exec(term);
    if (m === null) {
      if (term.trim() === '') continue;
      throw new UnclassifiableRequest(`field selector term ${JSON.stringify(term)} has no operator`);
    }
    const key = (m[1] ?? '').trim();
    if (key !== 'metadata.name' || m[2] === '!=') continue;
    const value = (m[3] ?? '').replace(/\\(.)/g, '$1');
    // Two exact names for one field would be read as the first by the apiserver; refuse rather than pick.
    if (found !== undefined && found !== value) throw new UnclassifiableRequest('two metadata.name terms');
    found = value;
  }
  return found;
}

/**
 * Classifies one request. `rawPath` is the request target's path exactly as sent (percent-escapes intact),
 * `rawQuery` the part after `?` without it. Throws UnclassifiableRequest on a request the apiserver could
 * read differently from this module.
 */
export function classifyRequest(method: string, rawPath: string, rawQuery: string): RequestInfo {
  if (!rawPath.startsWith('/')) throw new UnclassifiableRequest('the path is not absolute');
  // An escaped slash decodes to a separator the apiserver splits on; an escaped dot can form a dot segment.
  if (/%2f|%5c/i.test(rawPath)) throw new UnclassifiableRequest('encoded slash or backslash in the path');
  const path = unescapePath(rawPath);
  if (path.includes('\0')) throw new UnclassifiableRequest('NUL in the path');
  const trimmed = path.replace(/^\/+|\/+$/g, '');
  const segments = trimmed === '' ? [] : trimmed.split('/');
  for (const s of segments) {
    if (s === '') throw new UnclassifiableRequest('empty path segment');
    if (s === '.' || s === '..') throw new UnclassifiableRequest('dot segment in the path');
  }
  if (path.startsWith('//')) throw new UnclassifiableRequest('empty path segment');
  const query = parseQuery(rawQuery);
  const dryRunValues = query.get('dryRun') ?? [];
  const dryRun = dryRunValues.length > 0 && dryRunValues.every((v) => v === 'All');
  if (dryRunValues.length > 0 && !dryRun) throw new UnclassifiableRequest('dryRun must be All');

  const nonResource = (): RequestInfo => ({
    isResourceRequest: false,
    path,
    verb: method.toLowerCase(),
    apiPrefix: '',
    apiGroup: '',
    apiVersion: '',
    namespace: '',
    resource: '',
    subresource: '',
    name: '',
    parts: [],
    dryRun: false,
  });

  // Not an API path, or too short to name a group and version: discovery and other non-resource URLs.
  const prefix = segments[0] ?? '';
  if (!API_PREFIXES.has(prefix)) return nonResource();
  let current = segments.slice(1);
  let apiGroup = '';
  if (!GROUPLESS_PREFIXES.has(prefix)) {
    if (current.length < 3) return nonResource();
    apiGroup = current[0] ?? '';
    current = current.slice(1);
  } else if (current.length < 2) {
    return nonResource();
  }
  const apiVersion = current[0] ?? '';
  current = current.slice(1);

  let verb = METHOD_VERBS[method] ?? '';
  const first = current[0] ?? '';
  if (SPECIAL_VERBS.has(first)) {
    if (current.length < 2) throw new UnclassifiableRequest(`${first} needs a resource`);
    verb = first;
    current = current.slice(1);
  }
  let namespace = '';
  if (current[0] === 'namespaces') {
    if (current.length > 1) {
      namespace = current[1] ?? '';
      if (current.length > 2 && !NAMESPACE_SUBRESOURCES.has(current[2] ?? '')) current = current.slice(2);
    }
  }
  let resource = '';
  let name = '';
  let subresource = '';
  if (current.length >= 3 && !NO_SUBRESOURCE_VERBS.has(verb)) subresource = current[2] ?? '';
  if (current.length >= 2) name = current[1] ?? '';
  if (current.length >= 1) resource = current[0] ?? '';

  if (name === '' && verb === 'get') {
    verb = watchFlag(query) ? 'watch' : 'list';
    const selector = query.get('fieldSelector');
    if (selector !== undefined) {
      if (selector.length !== 1) throw new UnclassifiableRequest('fieldSelector is given more than once');
      const pinned = fieldSelectorName(selector[0] ?? '');
      if (pinned !== undefined && validPathSegmentName(pinned)) name = pinned;
    }
  } else if (verb === 'watch' && name === '') {
    // /api/v1/watch/pods?fieldSelector=metadata.name=x: the legacy form pins a name the same way.
    const selector = query.get('fieldSelector');
    if (selector !== undefined && selector.length === 1) {
      const pinned = fieldSelectorName(selector[0] ?? '');
      if (pinned !== undefined && validPathSegmentName(pinned)) name = pinned;
    }
  }
  if (verb === 'delete' && name === '') verb = 'deletecollection';
  if (verb === '') throw new UnclassifiableRequest(`method ${method} is not an API verb`);
  if (dryRun && apiGroup === '' && resource === 'serviceaccounts' && subresource === 'token') {
    // TokenREST has no dry run: the API server mints and returns the token and the record would say it did not.
    throw new UnclassifiableRequest('dryRun on a TokenRequest: the API server ignores it and mints the token');
  }
  return {
    isResourceRequest: true,
    path,
    verb,
    apiPrefix: prefix,
    apiGroup,
    apiVersion,
    namespace,
    resource,
    subresource,
    name,
    parts: current,
    // The API server refuses dryRun on connect subresources (exec, attach, portforward, proxy: 400) and
    // ignores it on reads.
    dryRun: dryRun && MUTATING_VERBS.has(verb) && !CONNECT_SUBRESOURCES.has(subresource) && verb !== 'proxy',
  };
}
