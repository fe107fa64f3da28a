// Which function calls make a statement side-effecting. A read-only policy allows `select` with
// sideEffects=false, so anything that can change data, sessions, other sessions or the server, or that
// reads outside the relations the statement names, must be flagged here (README.md, "Functions").
import { PG_CATALOG_FUNCTIONS, PG_CATALOG_VOLATILE_FUNCTIONS } from './pg-catalog.ts';

/**
 * Functions that are side-effecting in any schema, with the reason. Matched on the bare name, so an
 * extension installed in another schema (dblink in public, adminpack in pg_catalog) is still caught.
 */
export const SIDE_EFFECTING_FUNCTIONS: ReadonlyMap<string, string> = new Map([
  // Sequences
  ['nextval', 'advances a sequence'],
  ['setval', 'sets a sequence'],
  // Other sessions and the server
  ['pg_terminate_backend', 'terminates another session'],
  ['pg_cancel_backend', 'cancels another session'],
  ['pg_reload_conf', 'reloads the server configuration'],
  ['pg_rotate_logfile', 'rotates the server log'],
  ['pg_rotate_logfile_old', 'rotates the server log'],
  ['pg_create_restore_point', 'writes WAL'],
  ['pg_switch_wal', 'switches WAL segment'],
  ['pg_start_backup', 'starts a backup'],
  ['pg_stop_backup', 'stops a backup'],
  ['pg_backup_start', 'starts a backup'],
  ['pg_backup_stop', 'stops a backup'],
  ['pg_promote', 'promotes a standby'],
  ['pg_wal_replay_pause', 'pauses recovery'],
  ['pg_wal_replay_resume', 'resumes recovery'],
  ['pg_log_backend_memory_contexts', 'writes to the server log'],
  ['pg_stat_reset', 'resets statistics'],
  ['pg_stat_reset_shared', 'resets statistics'],
  ['pg_stat_reset_single_table_counters', 'resets statistics'],
  ['pg_stat_reset_single_function_counters', 'resets statistics'],
  ['pg_stat_reset_slru', 'resets statistics'],
  ['pg_stat_reset_replication_slot', 'resets statistics'],
  ['pg_stat_reset_subscription_stats', 'resets statistics'],
  ['pg_import_system_collations', 'creates collations'],
  // Session state that changes what later statements may do
  ['set_config', 'changes a setting (role, read-only, search_path, ...)'],
  ['pg_advisory_lock', 'takes an advisory lock'],
  ['pg_advisory_lock_shared', 'takes an advisory lock'],
  ['pg_advisory_xact_lock', 'takes an advisory lock'],
  ['pg_advisory_xact_lock_shared', 'takes an advisory lock'],
  ['pg_try_advisory_lock', 'takes an advisory lock'],
  ['pg_try_advisory_lock_shared', 'takes an advisory lock'],
  ['pg_try_advisory_xact_lock', 'takes an advisory lock'],
  ['pg_try_advisory_xact_lock_shared', 'takes an advisory lock'],
  ['pg_advisory_unlock', 'releases an advisory lock'],
  ['pg_advisory_unlock_shared', 'releases an advisory lock'],
  ['pg_advisory_unlock_all', 'releases advisory locks'],
  ['pg_export_snapshot', 'exports a snapshot'],
  // Transaction ids: assigning one is a persistent effect (and a wraparound lever)
  ['txid_current', 'assigns a transaction id'],
  ['pg_current_xact_id', 'assigns a transaction id'],
  // Asynchronous notification and logical decoding
  ['pg_notify', 'sends a notification'],
  ['pg_logical_emit_message', 'writes WAL'],
  // Replication slots and origins (pg_replication_* is matched by prefix in isSideEffectingFunctionName)
  ['pg_create_physical_replication_slot', 'creates a replication slot'],
  ['pg_create_logical_replication_slot', 'creates a replication slot'],
  ['pg_drop_replication_slot', 'drops a replication slot'],
  ['pg_copy_physical_replication_slot', 'creates a replication slot'],
  ['pg_copy_logical_replication_slot', 'creates a replication slot'],
  ['pg_logical_slot_get_changes', 'consumes a replication slot'],
  ['pg_logical_slot_get_binary_changes', 'consumes a replication slot'],
  ['pg_logical_slot_peek_changes', 'reads a replication slot'],
  ['pg_logical_slot_peek_binary_changes', 'reads a replication slot'],
  // Large objects: server files and data outside any relation
  ['lo_import', 'reads a server file into a large object'],
  ['lo_export', 'writes a server file'],
  ['lo_unlink', 'deletes a large object'],
  ['lo_create', 'creates a large object'],
  ['lo_creat', 'creates a large object'],
  ['lo_from_bytea', 'creates a large object'],
  ['lo_put', 'writes a large object'],
  ['lo_truncate', 'writes a large object'],
  ['lo_truncate64', 'writes a large object'],
  ['lowrite', 'writes a large object'],
  ['lo_open', 'opens a large object'],
  ['lo_get', 'reads data outside any relation'],
  ['loread', 'reads data outside any relation'],
  // Server files (privileged reads are flagged: they read outside the relations a policy can see)
  ['pg_read_file', 'reads a server file'],
  ['pg_read_file_old', 'reads a server file'],
  ['pg_read_binary_file', 'reads a server file'],
  ['pg_stat_file', 'inspects a server file'],
  ['pg_ls_dir', 'lists a server directory'],
  ['pg_file_write', 'writes a server file (adminpack)'],
  ['pg_file_unlink', 'deletes a server file (adminpack)'],
  ['pg_file_rename', 'renames a server file (adminpack)'],
  ['pg_file_sync', 'syncs a server file (adminpack)'],
  ['pg_logdir_ls', 'lists the log directory (adminpack)'],
  // Functions that run SQL given as text, or read whole relations named by a value
  ['query_to_xml', 'executes SQL text'],
  ['query_to_xmlschema', 'executes SQL text'],
  ['query_to_xml_and_xmlschema', 'executes SQL text'],
  ['cursor_to_xml', 'reads an open cursor'],
  ['cursor_to_xmlschema', 'reads an open cursor'],
  ['table_to_xml', 'reads a whole table'],
  ['table_to_xmlschema', 'reads a table definition'],
  ['table_to_xml_and_xmlschema', 'reads a whole table'],
  ['schema_to_xml', 'reads every table of a schema'],
  ['schema_to_xmlschema', 'reads every table definition of a schema'],
  ['schema_to_xml_and_xmlschema', 'reads every table of a schema'],
  ['database_to_xml', 'reads every table of the database'],
  ['database_to_xmlschema', 'reads every table definition of the database'],
  ['database_to_xml_and_xmlschema', 'reads every table of the database'],
  ['ts_stat', 'executes SQL text'],
  ['ts_rewrite', 'executes SQL text (two-argument form)'],
  // dblink (dblink* is matched by prefix): runs SQL elsewhere, possibly back on this server
  ['dblink', 'executes SQL on a remote server'],
  ['dblink_exec', 'executes SQL on a remote server'],
]);

/** Name prefixes that are side-effecting in any schema. */
const SIDE_EFFECTING_PREFIXES = ['dblink', 'pg_replication_origin', 'pg_replication_slot', 'pg_ls_', 'lo_'];

/**
 * Volatile pg_catalog functions that nevertheless change nothing and read only what the statement's
 * relations or ordinary privileges allow. Any other volatile pg_catalog function is flagged.
 */
export const HARMLESS_VOLATILE_FUNCTIONS: ReadonlySet<string> = new Set([
  'random',
  'random_normal',
  'gen_random_uuid',
  'clock_timestamp',
  'timeofday',
  'pg_sleep',
  'pg_sleep_for',
  'pg_sleep_until',
  'currval',
  'lastval',
  'current_query',
  'pg_is_in_recovery',
  'pg_jit_available',
  'pg_relation_size',
  'pg_table_size',
  'pg_indexes_size',
  'pg_total_relation_size',
  'pg_database_size',
  'pg_tablespace_size',
  'pg_partition_tree',
  'pg_partition_ancestors',
  'pg_blocking_pids',
  'pg_safe_snapshot_blocking_pids',
  'pg_lock_status',
  'pg_notification_queue_usage',
  'pg_current_wal_lsn',
  'pg_current_wal_insert_lsn',
  'pg_current_wal_flush_lsn',
  'pg_last_wal_receive_lsn',
  'pg_last_wal_replay_lsn',
  'pg_last_xact_replay_timestamp',
  'pg_is_wal_replay_paused',
  'pg_get_wal_replay_pause_state',
  'pg_xact_status',
  'txid_status',
  'pg_xact_commit_timestamp',
  'pg_xact_commit_timestamp_origin',
  'pg_last_committed_xact',
  'pg_collation_actual_version',
  'pg_database_collation_actual_version',
  'pg_sequence_last_value',
  'pg_stat_clear_snapshot',
  'pg_stat_have_stats',
  'pg_stat_get_xact_blocks_fetched',
  'pg_stat_get_xact_blocks_hit',
  'pg_stat_get_xact_function_calls',
  'pg_stat_get_xact_function_self_time',
  'pg_stat_get_xact_function_total_time',
  'pg_stat_get_xact_numscans',
  'pg_stat_get_xact_tuples_deleted',
  'pg_stat_get_xact_tuples_fetched',
  'pg_stat_get_xact_tuples_hot_updated',
  'pg_stat_get_xact_tuples_inserted',
  'pg_stat_get_xact_tuples_returned',
  'pg_stat_get_xact_tuples_updated',
]);

/**
 * pg_catalog functions whose first argument names a relation (regclass). A string literal there is
 * reported as a relation, so `nextval('accounts_seq')` references public.accounts_seq.
 */
export const RELATION_ARGUMENT_FUNCTIONS: ReadonlySet<string> = new Set([
  'nextval',
  'currval',
  'setval',
  'pg_sequence_last_value',
  'table_to_xml',
  'table_to_xmlschema',
  'table_to_xml_and_xmlschema',
  'pg_relation_size',
  'pg_table_size',
  'pg_indexes_size',
  'pg_total_relation_size',
]);

/** True when the bare function name is on the deny-list, whatever its schema. */
export function isSideEffectingFunctionName(name: string): boolean {
  return SIDE_EFFECTING_FUNCTIONS.has(name) || SIDE_EFFECTING_PREFIXES.some((p) => name.startsWith(p));
}

/**
 * Whether calling schema.name may have side effects. Deny-listed names always do; pg_catalog functions
 * do when volatile and not known harmless, or when unknown to this build (newer server versions);
 * functions in any other schema do unless `safeFunctions` lists them as `schema.name`, because a
 * user-defined function can run any SQL with its owner's rights.
 */
export function functionHasSideEffects(schema: string, name: string, safeFunctions: ReadonlySet<string>): boolean {
  if (isSideEffectingFunctionName(name)) return true;
  if (schema === 'pg_catalog') {
    if (!PG_CATALOG_FUNCTIONS.has(name)) return true;
    return PG_CATALOG_VOLATILE_FUNCTIONS.has(name) && !HARMLESS_VOLATILE_FUNCTIONS.has(name);
  }
  return !safeFunctions.has(`${schema}.${name}`);
}
