-- bemi: context-aware audit trail. Complain if the script is sourced in psql.
\echo Use "CREATE EXTENSION bemi" to load this file. \quit

-- Names in this script resolve only in pg_catalog (and pg_temp, last): a role that may create in
-- the extension's schema (often public) must never get its look-alike function or operator
-- bound into bemi's objects. So every object of the extension's schema is created and referred
-- to as @extschema@.name, and bemi's own as bemi.name. SET LOCAL, not SET: CREATE EXTENSION
-- undoes it when the script ends. (docs/security.md, "Names")
SET LOCAL search_path = pg_catalog, pg_temp;

-- Tables live in the fixed schema "bemi"; user-facing functions in the extension's schema
-- (normally public), so `SELECT bemi_set_context(...)` works without qualification.
CREATE SCHEMA bemi;
REVOKE ALL ON SCHEMA bemi FROM PUBLIC;

-- One row per captured change. Column names follow Bemi's `changes` table.
-- Names and keys compare bytewise (COLLATE "C"): index maintenance on the ingest path is cheaper.
-- Partitioned by committed_at so that retention drops whole partitions (ext/retention.sql).
-- Until retention is set up, every change is in the default partition.
-- The indexes are the partitions' own, defined on the default partition and copied to each
-- partition the worker makes (LIKE ... INCLUDING INDEXES): an index on the parent would be
-- created again by pg_restore for the restored partitions, and fail.
CREATE TABLE bemi.changes (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    primary_key    text COLLATE "C",
    "before"       jsonb NOT NULL DEFAULT '{}',
    "after"        jsonb NOT NULL DEFAULT '{}',
    context        jsonb NOT NULL DEFAULT '{}',
    database       text COLLATE "C" NOT NULL,
    schema         text COLLATE "C" NOT NULL,
    "table"        text COLLATE "C" NOT NULL,
    operation      text COLLATE "C" NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'DDL', 'SNAPSHOT')),
    committed_at   timestamptz NOT NULL,
    transaction_id bigint NOT NULL,
    position       pg_lsn NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The recorded table's OID (the partitioned table's, for a partition recorded under its
    -- root): history follows the table, not whichever table holds its name now. Meaningful for
    -- changes committed after bemi.tracking.oids_since only (before that: another database,
    -- restored from a dump).
    table_oid      oid,
    -- The server the change was captured on, for a trail that receives changes from other
    -- servers (a destination, bemi_set_destination): its system identifier (pg_control_system()),
    -- with `database` naming the database there. NULL: captured by this server's own worker.
    source_system_id text COLLATE "C",
    -- The hash chain (ext/chain.sql, include/bemi/chain.hpp): SHA-256 over the previous change's
    -- hash, this change's id, created_at and content; previous_id names that previous change
    -- (NULL for the first of a chain). NULL in changes recorded before 0.5.0.
    hash           bytea,
    previous_id    bigint
) PARTITION BY RANGE (committed_at);
CREATE TABLE bemi.changes_default PARTITION OF bemi.changes (PRIMARY KEY (id)) DEFAULT;
CREATE INDEX changes_default_row_history ON bemi.changes_default ("table", primary_key, schema, id);
CREATE INDEX changes_default_committed_at ON bemi.changes_default USING brin (committed_at);
CREATE INDEX changes_default_transaction ON bemi.changes_default (transaction_id, position);
REVOKE ALL ON bemi.changes FROM PUBLIC;
-- pg_dump skips extension tables unless told: the trail must survive a dump and restore.
SELECT pg_catalog.pg_extension_config_dump('bemi.changes', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.changes_default', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.changes_id_seq', '');

-- Reading the trail is a privilege: grant the role bemi_reader (shared by every database). A
-- bemi_reader that exists already must be one a superuser controls: a role with CREATEROLE could
-- have made it in advance, or granted it, to read every trail installed after (docs/security.md).
DO $$
DECLARE
    suspect text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'bemi_reader') THEN
        CREATE ROLE bemi_reader NOLOGIN;
        RETURN;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.format('%I', m.rolname), ', ' ORDER BY m.rolname) INTO suspect
      FROM pg_catalog.pg_auth_members a
      JOIN pg_catalog.pg_roles m ON m.oid OPERATOR(pg_catalog.=) a.member
      JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantor
     WHERE a.roleid OPERATOR(pg_catalog.=) 'bemi_reader'::pg_catalog.regrole
       AND NOT m.rolsuper AND (a.admin_option OR NOT g.rolsuper);
    IF suspect IS NOT NULL OR (SELECT rolcanlogin OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'bemi_reader') THEN
        RAISE EXCEPTION 'role bemi_reader exists and is not under a superuser''s control'
            USING ERRCODE = 'insufficient_privilege',
            DETAIL = pg_catalog.format('bemi_reader reads every database''s trail. It must be NOLOGIN, and only superusers may grant it or administer it; %s.',
                                       coalesce('these roles got it or its admin option from a non-superuser: ' || suspect, 'it can log in or is a superuser')),
            HINT = 'Check who made bemi_reader; as a superuser, REVOKE those memberships (or DROP ROLE bemi_reader) and try again.';
    END IF;
END $$;
GRANT USAGE ON SCHEMA bemi TO bemi_reader;
GRANT SELECT ON bemi.changes TO bemi_reader;

-- The contexts of the trail, each once per transaction: a transaction's changes usually share
-- one context, and indexing it with every change cost the writer more than any other index
-- (bench/results-capture.md). A row for each (transaction_id, committed_at, context) of
-- bemi.changes whose context is not {} (duplicates allowed); bemi.changes keeps each change's own
-- context, read as before. Lookups by context (bemi_context_history, bemi_revert_context) find
-- the transactions here and their changes by bemi.changes' transaction index, then check each
-- change's own context. Written with the changes, in their transaction: by the worker's batch
-- insert (src/worker/multi_insert.cpp), else by the trigger below, which sees every INSERT
-- statement into bemi.changes. Rows of transactions retention took are deleted after them
-- (ext/retention.sql); a row whose changes are gone only costs its space.
CREATE TABLE bemi.contexts (
    transaction_id bigint NOT NULL,
    committed_at   timestamptz NOT NULL,
    context        jsonb NOT NULL
);
CREATE INDEX contexts_context ON bemi.contexts USING gin (context pg_catalog.jsonb_path_ops);
CREATE INDEX contexts_committed_at ON bemi.contexts USING brin (committed_at);
REVOKE ALL ON bemi.contexts FROM PUBLIC;
GRANT SELECT ON bemi.contexts TO bemi_reader;
SELECT pg_catalog.pg_extension_config_dump('bemi.contexts', '');

-- The contexts of the rows an INSERT statement put into bemi.changes (a destination's rows by
-- INSERT, the worker's when bemi.changes has triggers of its own, a superuser's repair): the
-- worker's batch insert, which fires no trigger, writes them itself and lets this trigger be.
-- Runs as the inserting role (bemi_ingest is granted INSERT on bemi.contexts).
CREATE FUNCTION bemi._note_contexts() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO bemi.contexts (transaction_id, committed_at, context)
    SELECT DISTINCT a.transaction_id, a.committed_at, a.context FROM added a
     WHERE a.context OPERATOR(pg_catalog.<>) '{}'::pg_catalog.jsonb;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION bemi._note_contexts() FROM PUBLIC;
CREATE TRIGGER changes_contexts AFTER INSERT ON bemi.changes REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION bemi._note_contexts();

-- Fills bemi.contexts again from bemi.changes: after restoring a trail dumped before 0.5.0 (whose
-- dump has no bemi.contexts), or if its rows were deleted. Superuser only. Rows the worker adds
-- meanwhile are kept (a context noted twice only costs its space).
CREATE FUNCTION @extschema@.bemi_rebuild_contexts() RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM bemi.contexts;
    INSERT INTO bemi.contexts (transaction_id, committed_at, context)
    SELECT DISTINCT c.transaction_id, c.committed_at, c.context FROM bemi.changes c
     WHERE c.context OPERATOR(pg_catalog.<>) '{}'::pg_catalog.jsonb;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION @extschema@.bemi_rebuild_contexts() IS
    'Fill bemi.contexts again from bemi.changes (after restoring a dump made before 0.5.0); returns the rows written';
REVOKE ALL ON FUNCTION @extschema@.bemi_rebuild_contexts() FROM PUBLIC;

-- The worker's progress, written in the same transaction as the rows it covers.
-- All transactions whose commit record ends before txn_end_lsn are written; of the transaction
-- ending at txn_end_lsn, the first txn_records changes are written (all of them if txn_complete).
CREATE TABLE bemi.progress (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txn_end_lsn  pg_lsn NOT NULL DEFAULT '0/0',
    txn_records  bigint NOT NULL DEFAULT 0,
    txn_complete boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bemi.progress DEFAULT VALUES;
REVOKE ALL ON bemi.progress FROM PUBLIC;

-- Changes bemi could not record: its slot was invalidated or went missing (the worker writes the
-- row), or a table owner took a table out of capture or rewrote its values (SET UNLOGGED,
-- ALTER COLUMN ... TYPE: the backend writes the row in the ALTER's own transaction, with the
-- table, the role and the statement; see src/context/ddl_guard.cpp). Never silent.
CREATE TABLE bemi.gaps (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT now(),
    from_lsn    pg_lsn,
    to_lsn      pg_lsn NOT NULL,
    reason      text NOT NULL,
    relation    text COLLATE "C",
    table_oid   oid,
    role        text COLLATE "C",
    statement   text,
    -- A gap of a source that writes its trail here (a destination): its system identifier and
    -- database, as in bemi.changes. NULL: a gap of this database's own capture.
    source_system_id text COLLATE "C",
    source_database  text COLLATE "C"
);
REVOKE ALL ON bemi.gaps FROM PUBLIC;
GRANT SELECT ON bemi.gaps TO bemi_reader;
SELECT pg_catalog.pg_extension_config_dump('bemi.gaps', '');

-- Where this database's worker writes the trail (bemi_set_destination, ext/destination.sql):
-- NULL, bemi.changes here; else a libpq connection string of another PostgreSQL that has bemi,
-- never with a password in it (passwords come from a password or service file).
CREATE TABLE bemi.destination (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    conninfo   text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bemi.destination DEFAULT VALUES;
REVOKE ALL ON bemi.destination FROM PUBLIC;

-- On a destination: each source's progress, written by the source's worker in the same
-- transaction as the changes it covers (the meaning of bemi.progress, per source). The source
-- confirms its slot only up to what is committed here: exactly once across the two servers.
CREATE TABLE bemi.source_progress (
    source_system_id text COLLATE "C" NOT NULL,
    database         text COLLATE "C" NOT NULL,
    txn_end_lsn      pg_lsn NOT NULL,
    txn_records      bigint NOT NULL,
    txn_complete     boolean NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The last of the source's own bemi.gaps rows (its id there) copied into bemi.gaps here.
    gaps_forwarded   bigint NOT NULL DEFAULT 0,
    -- The role that made the row (the source's login role): only it may read or move the row
    -- (row level security, set up with bemi_ingest in the destination's section).
    ingest_role      name NOT NULL DEFAULT CURRENT_USER,
    PRIMARY KEY (source_system_id, database)
);
REVOKE ALL ON bemi.source_progress FROM PUBLIC;
GRANT SELECT ON bemi.source_progress TO bemi_reader;
SELECT pg_catalog.pg_extension_config_dump('bemi.source_progress', '');

------------------------------------------------------------------------------------------------
-- Context
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.bemi_set_context(context jsonb, is_local boolean DEFAULT true) RETURNS void
    AS 'MODULE_PATHNAME', 'bemi_set_context' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.bemi_set_context(jsonb, boolean) IS
    'Attach a JSON object to the changes that follow: this transaction (default) or the session; NULL clears';

CREATE FUNCTION @extschema@.bemi_context() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'bemi_context' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.bemi_context() IS 'The context that the next change of this session would carry';

------------------------------------------------------------------------------------------------
-- Status and waiting
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.bemi_wait(lsn pg_lsn DEFAULT pg_current_wal_insert_lsn(), timeout interval DEFAULT '60 seconds')
    RETURNS boolean AS 'MODULE_PATHNAME', 'bemi_wait' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.bemi_wait(pg_lsn, interval) IS
    'Returns true once every change committed before lsn is visible in bemi.changes; errors on timeout';

-- The tables whose changes bemi records: permanent tables outside the system schemas and bemi.
CREATE FUNCTION bemi._user_tables(OUT rel oid, OUT name text, OUT is_partition boolean) RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relispartition
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'bemi')
       AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
$$;

CREATE FUNCTION bemi._worker_state(
    OUT worker_pid integer, OUT worker_state text, OUT slot_name text, OUT applied_lsn pg_lsn,
    OUT changes_written bigint, OUT last_commit_at timestamptz, OUT last_error text,
    OUT last_error_at timestamptz, OUT failures integer, OUT skipped_table_rules bigint,
    OUT skipped_column_rules bigint, OUT skipped_writer_rules bigint)
    AS 'MODULE_PATHNAME', 'bemi_worker_state' LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Did the worker's last attempt to write to its destination (bemi.destination) succeed? NULL
-- before its first attempt.
CREATE FUNCTION bemi._destination_reachable() RETURNS boolean
    AS 'MODULE_PATHNAME', 'bemi_destination_reachable' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.bemi_status(
    OUT database text, OUT worker_pid integer, OUT worker_state text, OUT slot_name text,
    OUT slot_active boolean, OUT confirmed_lsn pg_lsn, OUT current_lsn pg_lsn,
    OUT lag_bytes numeric, OUT lag_seconds double precision, OUT retained_wal_bytes numeric,
    OUT wal_status text, OUT changes_written bigint, OUT skipped_table_rules bigint,
    OUT skipped_column_rules bigint, OUT skipped_writer_rules bigint, OUT last_error text, OUT last_error_at timestamptz,
    OUT incomplete_image_tables text[], OUT tables_without_primary_key text[],
    OUT settings_problems text[], OUT gaps bigint, OUT destination text,
    OUT destination_reachable boolean, OUT destination_lag_bytes numeric)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT current_database()::text, w.worker_pid, w.worker_state, w.slot_name,
           s.active, s.confirmed_flush_lsn, pg_current_wal_lsn(),
           pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(s.confirmed_flush_lsn, pg_current_wal_lsn())),
           CASE WHEN w.last_commit_at IS NULL OR s.confirmed_flush_lsn >= pg_current_wal_lsn() THEN 0
                ELSE extract(epoch FROM clock_timestamp() - w.last_commit_at)::double precision END,
           pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(s.restart_lsn, pg_current_wal_lsn())),
           s.wal_status, w.changes_written, w.skipped_table_rules, w.skipped_column_rules,
           w.skipped_writer_rules, w.last_error, w.last_error_at,
           ARRAY(SELECT t.name FROM bemi._user_tables() t JOIN pg_class c ON c.oid = t.rel
                  WHERE c.relreplident <> 'f' ORDER BY 1),
           ARRAY(SELECT t.name FROM bemi._user_tables() t
                  WHERE NOT t.is_partition
                    AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = t.rel AND i.indisprimary)
                  ORDER BY 1),
           ARRAY(SELECT p FROM unnest(ARRAY[
               CASE WHEN current_setting('wal_level') <> 'logical'
                    THEN 'wal_level must be logical (now ' || current_setting('wal_level') || ')' END,
               CASE WHEN NOT ('bemi' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',')))
                    THEN 'shared_preload_libraries must include bemi' END,
               CASE WHEN current_setting('output_plugin_libraries', true) IS NOT NULL
                     AND NOT ('bemi' = ANY (string_to_array(replace(current_setting('output_plugin_libraries', true), ' ', ''), ',')))
                    THEN 'output_plugin_libraries must include bemi' END]) AS p WHERE p IS NOT NULL),
           (SELECT count(*) FROM bemi.gaps),
           d.conninfo,
           CASE WHEN d.conninfo IS NOT NULL THEN bemi._destination_reachable() END,
           CASE WHEN d.conninfo IS NOT NULL
                THEN pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(s.confirmed_flush_lsn, pg_current_wal_lsn())) END
      FROM bemi._worker_state() w
      CROSS JOIN bemi.destination d
      LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot_name
$$;
COMMENT ON FUNCTION @extschema@.bemi_status() IS 'The worker, its slot, lag, retained WAL, last error, configuration problems and destination';
REVOKE ALL ON FUNCTION @extschema@.bemi_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_status() TO bemi_reader;
GRANT EXECUTE ON FUNCTION bemi._worker_state() TO bemi_reader;
GRANT EXECUTE ON FUNCTION bemi._destination_reachable() TO bemi_reader;

------------------------------------------------------------------------------------------------
-- Replica identity: complete before-images by default (bemi.replica_identity_full = off to opt out)
------------------------------------------------------------------------------------------------
-- Runs as the role that created the table (its owner, who may not use schema bemi): it names
-- nothing of bemi's, only catalogs. An ordinary role's CREATE TABLE must never fail here.
CREATE FUNCTION bemi._on_create_table() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel regclass;
BEGIN
    IF NOT coalesce(current_setting('bemi.replica_identity_full', true), 'on')::boolean THEN
        RETURN;
    END IF;
    FOR rel IN SELECT c.oid FROM pg_event_trigger_ddl_commands() d JOIN pg_class c ON c.oid = d.objid
                WHERE d.object_type = 'table' AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
                  AND c.relreplident = 'd'
                  AND c.relnamespace NOT IN (SELECT n.oid FROM pg_namespace n
                                              WHERE n.nspname IN ('bemi', 'pg_catalog', 'information_schema')) LOOP
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
    END LOOP;
END $$;

CREATE EVENT TRIGGER bemi_replica_identity ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION bemi._on_create_table();

DO $$
DECLARE
    rel regclass;
BEGIN
    IF coalesce(current_setting('bemi.replica_identity_full', true), 'on')::boolean THEN
        FOR rel IN SELECT t.rel FROM bemi._user_tables() t JOIN pg_class c ON c.oid = t.rel
                    WHERE c.relreplident = 'd' LOOP
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
        END LOOP;
    END IF;
END $$;


