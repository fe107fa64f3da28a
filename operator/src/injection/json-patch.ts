// RFC 6902 JSON Patch operations as the AdmissionReview response carries them, and RFC 6901 pointers.
export type JsonPatchOperation =
  | { readonly op: 'add'; readonly path: string; readonly value: unknown }
  | { readonly op: 'replace'; readonly path: string; readonly value: unknown }
  | { readonly op: 'remove'; readonly path: string };

/** Escapes one reference token (`~` → `~0`, `/` → `~1`), for annotation keys such as chaperone.dev/inject. */
export function pointerToken(token: string | number): string {
  return String(token).replaceAll('~', '~0').replaceAll('/', '~1');
}

export function pointer(...tokens: (string | number)[]): string {
  return tokens.map((t) => `/${pointerToken(t)}`).join('');
}

/**
 * Applies add/replace/remove operations to a copy of `doc` (what the API server does with the injector's
 * patch). For tests and tools that need the injected pod without an API server.
 */
export function applyJsonPatch<T>(doc: T, patch: readonly JsonPatchOperation[]): T {
  const root = structuredClone(doc) as unknown as Record<string, unknown>;
  for (const op of patch) {
    const tokens = op.path
      .split('/')
      .slice(1)
      .map((t) => t.replaceAll('~1', '/').replaceAll('~0', '~'));
    const last = tokens.pop() ?? '';
    let parent: unknown = root;
    for (const t of tokens) parent = (parent as Record<string, unknown>)[t];
    if (Array.isArray(parent)) {
      const index = last === '-' ? parent.length : Number(last);
      if (op.op === 'add') parent.splice(index, 0, op.value);
      else if (op.op === 'replace') parent[index] = op.value;
      else parent.splice(index, 1);
    } else {
      const obj = parent as Record<string, unknown>;
      if (op.op === 'remove') Reflect.deleteProperty(obj, last);
      else obj[last] = op.value;
    }
  }
  return root as unknown as T;
}
