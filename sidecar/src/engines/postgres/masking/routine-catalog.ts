// The names of functions, operators and casts defined outside pg_catalog, read from the upstream's catalogue
// with the relations (relation-catalog.ts). PostgreSQL resolves a call by its argument types across the
// search_path, so `now(1)` runs `public.now(int)` when one exists: a call of such a name is not the
// built-in, and the lineage walk treats it as opaque (analysis/column-lineage.ts RoutineNames).
import type { RoutineNames } from '../analysis/column-lineage.ts';

/** The name a lookup reports missing when the routine names are not cached (no relation is called this). */
export const ROUTINE_NAMES_KEY = '\u0000routines';

/**
 * One row per name: kind `f` (a function, aggregate or procedure), `o` (an operator), `c` (a cast's target
 * type whose cast function lies outside pg_catalog), `i` (such a cast applied implicitly or in assignment).
 */
export const ROUTINE_CATALOG_SQL = `SELECT DISTINCT 'f', p.proname FROM pg_catalog.pg_proc p
   WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace
 UNION SELECT DISTINCT 'o', o.oprname FROM pg_catalog.pg_operator o
   WHERE o.oprnamespace <> 'pg_catalog'::pg_catalog.regnamespace
 UNION SELECT DISTINCT CASE WHEN c.castcontext = 'e' THEN 'c' ELSE 'i' END, t.typname
   FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
   JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
   WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace`;

/** The routine names from the rows of ROUTINE_CATALOG_SQL. */
export function routineNamesFromRows(rows: readonly (readonly (Buffer | null)[])[]): RoutineNames {
  const functions = new Set<string>();
  const operators = new Set<string>();
  const castTargets = new Set<string>();
  let implicitCasts = false;
  for (const r of rows) {
    const kind = r[0]?.toString('utf8');
    const name = r[1]?.toString('utf8') ?? '';
    if (kind === 'f') functions.add(name);
    else if (kind === 'o') operators.add(name);
    else if (kind === 'c') castTargets.add(name);
    else if (kind === 'i') {
      castTargets.add(name);
      implicitCasts = true;
    }
  }
  return { functions, operators, castTargets, implicitCasts };
}
