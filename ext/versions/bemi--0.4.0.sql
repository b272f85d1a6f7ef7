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
    operation      text COLLATE "C" NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE')),
    committed_at   timestamptz NOT NULL,
    transaction_id bigint NOT NULL,
    position       pg_lsn NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The recorded table's OID (the partitioned table's, for a partition recorded under its
    -- root): history follows the table, not whichever table holds its name now. Meaningful for
    -- changes committed after bemi.tracking.oids_since only (before that: another database,
    -- restored from a dump).
    table_oid      oid
) PARTITION BY RANGE (committed_at);
CREATE TABLE bemi.changes_default PARTITION OF bemi.changes (PRIMARY KEY (id)) DEFAULT;
CREATE INDEX changes_default_row_history ON bemi.changes_default ("table", primary_key, schema, id);
CREATE INDEX changes_default_committed_at ON bemi.changes_default USING brin (committed_at);
CREATE INDEX changes_default_transaction ON bemi.changes_default (transaction_id, position);
CREATE INDEX changes_default_context ON bemi.changes_default USING gin (context pg_catalog.jsonb_path_ops);
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
    statement   text
);
REVOKE ALL ON bemi.gaps FROM PUBLIC;
GRANT SELECT ON bemi.gaps TO bemi_reader;
SELECT pg_catalog.pg_extension_config_dump('bemi.gaps', '');

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

CREATE FUNCTION @extschema@.bemi_status(
    OUT database text, OUT worker_pid integer, OUT worker_state text, OUT slot_name text,
    OUT slot_active boolean, OUT confirmed_lsn pg_lsn, OUT current_lsn pg_lsn,
    OUT lag_bytes numeric, OUT lag_seconds double precision, OUT retained_wal_bytes numeric,
    OUT wal_status text, OUT changes_written bigint, OUT skipped_table_rules bigint,
    OUT skipped_column_rules bigint, OUT skipped_writer_rules bigint, OUT last_error text, OUT last_error_at timestamptz,
    OUT incomplete_image_tables text[], OUT tables_without_primary_key text[],
    OUT settings_problems text[], OUT gaps bigint)
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
           (SELECT count(*) FROM bemi.gaps)
      FROM bemi._worker_state() w
      LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot_name
$$;
COMMENT ON FUNCTION @extschema@.bemi_status() IS 'The worker, its slot, lag, retained WAL, last error and configuration problems';
REVOKE ALL ON FUNCTION @extschema@.bemi_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_status() TO bemi_reader;
GRANT EXECUTE ON FUNCTION bemi._worker_state() TO bemi_reader;

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


------------------------------------------------------------------------------------------------
-- DDL that takes changes out of the trail (src/context/ddl_guard.cpp writes these rows from the
-- backend that runs the ALTER, in its transaction, as the extension's owner).
------------------------------------------------------------------------------------------------
COMMENT ON TABLE bemi.gaps IS
    'Changes bemi could not record: a lost capture slot, or DDL that took a table out of capture or rewrote its values';
COMMENT ON COLUMN bemi.gaps.relation IS
    'The table the gap concerns (schema-qualified, as named when the gap was recorded); NULL for a lost slot';
COMMENT ON COLUMN bemi.gaps.table_oid IS 'That table''s OID';
COMMENT ON COLUMN bemi.gaps.role IS 'The role that ran the statement (current_user)';
COMMENT ON COLUMN bemi.gaps.statement IS 'The statement, cut at 2000 bytes';
------------------------------------------------------------------------------------------------
-- Access to the trail: where tracking starts, who may read which changes, and the readers of
-- bemi.changes that every history, time-travel and revert function goes through
-- (docs/security.md, "Reading the trail"; the rule itself is C: src/fn/readable.cpp)
------------------------------------------------------------------------------------------------
-- Two layers keep a role from reading, through these functions, rows it could not SELECT
-- (docs/security.md, "Reading the trail"):
--   1. bemi._*_trail: SECURITY DEFINER readers of bemi.changes, one per access path. They sit in
--      schema bemi, which PUBLIC cannot use, so nobody can name them in a query of their own.
--      They return only the changes of the tables the reader (the role that called the public
--      function, passed to them as p_reader) may read, or of the one table it was allowed to
--      read, by OID: the filter runs inside them and their rows are complete before the
--      caller's own predicates, functions or casts see any of them.
--   2. Public functions with SQL-standard bodies (BEGIN ATOMIC), bound to the readers by OID
--      when the extension is created, so they reach layer 1 without USAGE on schema bemi; they
--      run as the caller, so bemi._caller() and bemi._readable_table() see the caller's own
--      role, even inside another role's SECURITY DEFINER function. search_path cannot redirect
--      them. PL/pgSQL functions (time travel, reverts) read the trail through them and run as
--      the caller, so their reads and writes of user tables need the caller's rights.

-- When tracking began in this database, and which tables held rows then. Not carried by
-- pg_dump: after a restore, tracking (and time travel) starts again at the restore, because
-- changes made between the dump and the restore are not in the trail. oids_since: changes
-- committed before it came with a restored dump, and their table_oid is another database's.
CREATE TABLE bemi.tracking (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    started_at      timestamptz NOT NULL,
    nonempty_tables text[] NOT NULL,
    oids_since      timestamptz NOT NULL DEFAULT clock_timestamp() -- never moved by retention
);
REVOKE ALL ON bemi.tracking FROM PUBLIC;
DO $$
DECLARE
    t record;
    nonempty text[] := '{}';
    has_rows boolean;
BEGIN
    FOR t IN SELECT * FROM bemi._user_tables() LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t.rel::regclass) INTO has_rows;
        IF has_rows THEN
            nonempty := nonempty || t.name;
        END IF;
    END LOOP;
    INSERT INTO bemi.tracking (started_at, nonempty_tables) VALUES (clock_timestamp(), nonempty);
END $$;

------------------------------------------------------------------------------------------------
-- Who may read which changes (src/fn/readable.cpp)
------------------------------------------------------------------------------------------------
-- The role running the query: what a public function passes to the readers as p_reader.
CREATE FUNCTION bemi._caller() RETURNS oid
    AS 'MODULE_PATHNAME', 'bemi_caller' LANGUAGE C STABLE PARALLEL SAFE;

-- May `reader` read a change of table `table_oid` (NULL: of schema.table by name, for changes
-- that came with a restored dump)? Superusers and bemi_reader members read everything; others
-- need USAGE on the schema and SELECT on the table, with no row-level security hiding rows.
CREATE FUNCTION bemi._may_read(reader oid, table_oid oid, p_schema text, p_table text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'bemi_may_read' LANGUAGE C STABLE PARALLEL SAFE;

-- The schema and name of a table whose history the caller asks for, after checking that it is a
-- table and that the caller may read it. Raises otherwise.
CREATE FUNCTION bemi._readable_table(tbl regclass, OUT schema_name text, OUT table_name text)
    AS 'MODULE_PATHNAME', 'bemi_readable_table' LANGUAGE C STABLE;

-- table_oid as bemi._may_read takes it: NULL for a change from before oids_since.
CREATE FUNCTION bemi._recorded_oid(c bemi.changes, k bemi.tracking) RETURNS oid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN c.committed_at >= k.oids_since THEN c.table_oid END;
END;

------------------------------------------------------------------------------------------------
-- Layer 1: readers of the trail (owner's rights; unreachable by name for PUBLIC)
------------------------------------------------------------------------------------------------
-- PL/pgSQL rather than SQL: a SQL function's query is planned again at every call, a PL/pgSQL
-- one's plan is kept for the session (most of the cost of reading one row's history).
-- Changes of some rows of one table the caller may read: the row-history index
-- ("table", primary_key, schema, id), then the table's OID.
CREATE FUNCTION bemi._row_trail(p_table_oid oid, p_schema text, p_table text, p_keys text[])
RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c."table" = p_table AND c.primary_key = ANY (p_keys) AND c.schema = p_schema
           AND (c.table_oid = p_table_oid OR bemi._recorded_oid(c, k) IS NULL);
END $$;

-- Changes of one table the caller may read, in a time range. Dynamic SQL so that every call is
-- planned with its own bounds: a narrow range uses the BRIN index, a table's whole life the btree.
CREATE FUNCTION bemi._table_time_trail(p_table_oid oid, p_schema text, p_table text,
                                       p_since timestamptz, p_until timestamptz)
RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT c.* FROM bemi.changes c, bemi.tracking k'
        ' WHERE c."table" = $3 AND c.schema = $4 AND c.committed_at BETWEEN $1 AND $2'
        '   AND (c.table_oid = $5 OR bemi._recorded_oid(c, k) IS NULL)'
        USING p_since, p_until, p_table, p_schema, p_table_oid;
END $$;

-- Changes of all the tables the reader may read, in a time range.
CREATE FUNCTION bemi._time_trail(p_reader oid, p_since timestamptz, p_until timestamptz)
RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT c.* FROM bemi.changes c, bemi.tracking k WHERE c.committed_at BETWEEN $2 AND $3'
        '   AND bemi._may_read($1, bemi._recorded_oid(c, k), c.schema, c."table")'
        USING p_reader, p_since, p_until;
END $$;

-- TRUNCATEs of one table the caller may read (primary_key is NULL for them: the row-history index).
CREATE FUNCTION bemi._truncate_trail(p_table_oid oid, p_schema text, p_table text) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c."table" = p_table AND c.primary_key IS NULL AND c.schema = p_schema AND c.operation = 'TRUNCATE'
           AND (c.table_oid = p_table_oid OR bemi._recorded_oid(c, k) IS NULL);
END $$;

CREATE FUNCTION bemi._transaction_trail(p_reader oid, p_transaction_id bigint) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c.transaction_id = p_transaction_id
           AND bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table");
END $$;

CREATE FUNCTION bemi._context_trail(p_reader oid, p_context jsonb) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c.context @> p_context
           AND bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table");
END $$;

CREATE FUNCTION bemi._id_trail(p_reader oid, p_ids bigint[]) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c.id = ANY (p_ids)
           AND bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table");
END $$;

-- How many changes of a transaction or a context the reader may not read: a revert refuses to do
-- half a job. It tells nothing of those changes but their number.
CREATE FUNCTION bemi._unreadable_count(p_reader oid, p_transaction_id bigint, p_context jsonb) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT count(*) FROM bemi.changes c, bemi.tracking k
             WHERE c.transaction_id = p_transaction_id
               AND NOT bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table"))
         + (SELECT count(*) FROM bemi.changes c, bemi.tracking k
             WHERE c.context @> p_context
               AND NOT bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table"));
END $$;

CREATE FUNCTION bemi._tracking() RETURNS bemi.tracking
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM bemi.tracking
$$;

DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid FROM pg_proc p WHERE p.pronamespace = 'bemi'::regnamespace
                AND (p.proname LIKE '\_%trail' OR p.proname IN ('_tracking', '_unreadable_count', '_caller',
                                                                '_may_read', '_readable_table', '_recorded_oid')) LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', fn);
    END LOOP;
END $$;

------------------------------------------------------------------------------------------------
-- Tracking rules (issue 13): what the trail records
------------------------------------------------------------------------------------------------
-- The output plugin reads bemi.rules inside decoding, with the decoding (historic) snapshot: a
-- change is judged by the rules in force when it was made, whatever the worker's lag or restarts.
-- PostgreSQL lets an output plugin read a table marked user_catalog_table that way (and keeps
-- the row versions decoding still needs). The plugin reads it with a catalog scan, never SPI
-- (src/decoding/rules.cpp), and records the changes of bemi.rules itself as ordinary changes
-- although the table is in schema bemi: every change of a rule is in the trail.
--
-- Changing rules is a privilege: superusers and members of bemi_admin (shared by every database,
-- made and checked like bemi_reader in core.sql). Reading them: trail readers (bemi_reader).
DO $$
DECLARE
    suspect text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'bemi_admin') THEN
        CREATE ROLE bemi_admin NOLOGIN;
        RETURN;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.format('%I', m.rolname), ', ' ORDER BY m.rolname) INTO suspect
      FROM pg_catalog.pg_auth_members a
      JOIN pg_catalog.pg_roles m ON m.oid OPERATOR(pg_catalog.=) a.member
      JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantor
     WHERE a.roleid OPERATOR(pg_catalog.=) 'bemi_admin'::pg_catalog.regrole
       AND NOT m.rolsuper AND (a.admin_option OR NOT g.rolsuper);
    IF suspect IS NOT NULL OR (SELECT rolcanlogin OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'bemi_admin') THEN
        RAISE EXCEPTION 'role bemi_admin exists and is not under a superuser''s control'
            USING ERRCODE = 'insufficient_privilege',
            DETAIL = pg_catalog.format('bemi_admin decides what every database''s trail records. It must be NOLOGIN, and only superusers may grant it or administer it; %s.',
                                       coalesce('these roles got it or its admin option from a non-superuser: ' || suspect, 'it can log in or is a superuser')),
            HINT = 'Check who made bemi_admin; as a superuser, REVOKE those memberships (or DROP ROLE bemi_admin) and try again.';
    END IF;
END $$;
GRANT USAGE ON SCHEMA bemi TO bemi_admin;

-- One row per rule. target is a 'schema.table' pattern where * matches any run of characters
-- (NULL for ignore_writer); columns are column-name patterns of the same kind. The CHECKs hold
-- what the plugin relies on, whoever writes the row (a restore, a superuser by hand).
CREATE TABLE bemi.rules (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text COLLATE "C" NOT NULL
                     CHECK (kind IN ('ignore', 'ignore_columns', 'mask', 'ignore_writer')),
    target           text COLLATE "C" CHECK (target ~ '^[^.]+\.[^.]+$'),
    columns          text[] COLLATE "C"
                     CHECK (pg_catalog.cardinality(columns) > 0 AND pg_catalog.array_position(columns, NULL) IS NULL
                            AND pg_catalog.array_position(columns, '') IS NULL AND pg_catalog.array_ndims(columns) = 1),
    method           text COLLATE "C" CHECK (method IN ('redact', 'hash', 'drop')),
    role             name,
    application_name text COLLATE "C",
    created_by       name NOT NULL DEFAULT session_user,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (CASE kind
           WHEN 'ignore' THEN target IS NOT NULL AND columns IS NULL AND method IS NULL
                              AND role IS NULL AND application_name IS NULL
           WHEN 'ignore_columns' THEN target IS NOT NULL AND columns IS NOT NULL AND method IS NULL
                              AND role IS NULL AND application_name IS NULL
           WHEN 'mask' THEN target IS NOT NULL AND columns IS NOT NULL AND method IS NOT NULL
                              AND role IS NULL AND application_name IS NULL
           WHEN 'ignore_writer' THEN target IS NULL AND columns IS NULL AND method IS NULL
                              AND (role IS NOT NULL OR application_name IS NOT NULL)
           END)
);
ALTER TABLE bemi.rules SET (user_catalog_table = true);
-- A dropped rule is recorded whole, not just its id.
ALTER TABLE bemi.rules REPLICA IDENTITY FULL;
REVOKE ALL ON bemi.rules FROM PUBLIC;
GRANT SELECT ON bemi.rules TO bemi_reader, bemi_admin;
SELECT pg_catalog.pg_extension_config_dump('bemi.rules', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.rules_id_seq', '');

-- The checks every rule-changing function makes on its arguments, with errors that say what to
-- write instead. Raises; returns nothing.
CREATE FUNCTION bemi._check_rule(target text, columns text[], method text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF target IS NULL OR target !~ '^[^.]+\.[^.]+$' THEN
        RAISE EXCEPTION 'invalid target %: expected a pattern schema.table', coalesce(quote_literal(target), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Write the schema and the table, each a name or a pattern where * matches any characters: ''public.sessions'', ''scratch.*'', ''*.*_cache''.';
    END IF;
    IF columns IS NOT NULL AND (cardinality(columns) = 0 OR array_ndims(columns) <> 1
                                OR array_position(columns, NULL) IS NOT NULL OR array_position(columns, '') IS NOT NULL) THEN
        RAISE EXCEPTION 'invalid columns %: expected a list of column names or patterns', columns::text
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Name at least one column, none NULL or empty, e.g. ''{updated_at, *_cached_at}''.';
    END IF;
    IF method IS NOT NULL AND method NOT IN ('redact', 'hash', 'drop') THEN
        RAISE EXCEPTION 'unknown mask method %', quote_literal(method)
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use ''redact'' (a marker), ''hash'' (a keyed hash: equal values, equal hashes) or ''drop'' (the column is left out).';
    END IF;
END
$$;

-- The rule-changing functions run as the extension's owner (they write bemi.rules, which no
-- other role may write); EXECUTE is the privilege, granted to bemi_admin only.
CREATE FUNCTION @extschema@.bemi_ignore(target text, columns text[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM bemi._check_rule(target, columns, NULL::text);
    INSERT INTO bemi.rules (kind, target, columns)
        VALUES (CASE WHEN columns IS NULL THEN 'ignore' ELSE 'ignore_columns' END, target, columns)
        RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION @extschema@.bemi_ignore(text, text[]) IS
    'Stop recording the changes of the matching tables, or, with columns, their UPDATEs that change only those columns; returns the rule''s id';

CREATE FUNCTION @extschema@.bemi_mask(target text, columns text[], method text DEFAULT 'redact') RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    IF columns IS NULL THEN
        RAISE EXCEPTION 'bemi_mask needs the columns to mask'
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Name them, e.g. bemi_mask(''public.users'', ''{password_digest, *_token}''); to record nothing of a table, use bemi_ignore.';
    END IF;
    PERFORM bemi._check_rule(target, columns, coalesce(method, 'NULL'));
    INSERT INTO bemi.rules (kind, target, columns, method) VALUES ('mask', target, columns, method)
        RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION @extschema@.bemi_mask(text, text[], text) IS
    'Keep the values of the matching columns out of the trail and the plugin''s output: redact (a marker), hash (keyed hash) or drop; returns the rule''s id';

CREATE FUNCTION @extschema@.bemi_ignore_writer(role name DEFAULT NULL, application_name text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    IF role IS NULL AND application_name IS NULL THEN
        RAISE EXCEPTION 'bemi_ignore_writer needs a role or an application_name'
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'E.g. bemi_ignore_writer(role => ''etl'') or bemi_ignore_writer(application_name => ''pg_repack''); with both, a change must match both.';
    END IF;
    -- application_name is a pattern, * matching any characters (as in targets); one that matches
    -- every application_name adds nothing to a role, and alone would stop the whole trail.
    IF application_name = '' OR application_name ~ '^\*+$' THEN
        RAISE EXCEPTION 'invalid application_name %: expected a name or a pattern', quote_literal(application_name)
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Name the application, or a pattern where * matches any characters: ''airflow-*''. To ignore a role whatever its application, give the role alone.';
    END IF;
    INSERT INTO bemi.rules (kind, role, application_name)
        VALUES ('ignore_writer', bemi_ignore_writer.role, bemi_ignore_writer.application_name)
        RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION @extschema@.bemi_ignore_writer(name, text) IS
    'Stop recording the changes made by a role, an application_name (a pattern: * matches any characters), or both together; returns the rule''s id';

CREATE FUNCTION @extschema@.bemi_drop_rule(id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM bemi.rules r WHERE r.id = bemi_drop_rule.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rule with id %', coalesce(bemi_drop_rule.id::text, 'NULL')
            USING ERRCODE = 'undefined_object',
            HINT = 'SELECT * FROM bemi.rules lists the rules.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.bemi_drop_rule(bigint) IS 'Remove a rule; changes made from then on are recorded without it';

REVOKE ALL ON FUNCTION bemi._check_rule(text, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.bemi_ignore(text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.bemi_mask(text, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.bemi_ignore_writer(name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.bemi_drop_rule(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_ignore(text, text[]) TO bemi_admin;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_mask(text, text[], text) TO bemi_admin;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_ignore_writer(name, text) TO bemi_admin;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_drop_rule(bigint) TO bemi_admin;

-- A pattern of bemi.rules as a LIKE pattern: * becomes %, LIKE's own wildcards and escape
-- character stand for themselves. Compared under COLLATE "C": bytewise, as the plugin matches.
CREATE FUNCTION bemi._rule_like(pattern text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT replace(replace(replace(replace(pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')
$$;

-- Every user table (partitions are recorded under their root, and judged by its name) with what
-- the rules make of it, and rules that match no table (a table renamed or dropped since): the
-- plugin matches the same patterns against the names at the time of each change
-- (src/decoding/rules.cpp). Runs with the caller's rights: trail readers and rule admins.
CREATE FUNCTION @extschema@.bemi_tracked_tables(
    OUT schema_name text, OUT table_name text, OUT recorded boolean, OUT ignored_columns text[],
    OUT masked_columns text[], OUT replica_identity text, OUT problems text[])
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH rules AS (
        SELECT r.id, r.kind, r.method, r.columns,
               split_part(r.target, '.', 1) AS s, split_part(r.target, '.', 2) AS t
          FROM bemi.rules r WHERE r.target IS NOT NULL),
    tables AS (
        SELECT c.oid AS rel, n.nspname::text AS s, c.relname::text AS t, c.relreplident AS replident,
               ARRAY(SELECT a.attname::text
                       FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, ord), pg_attribute a
                      WHERE i.indrelid = c.oid AND i.indisprimary AND k.ord <= i.indnkeyatts
                        AND a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord) AS key_cols
          FROM bemi._user_tables() u
          JOIN pg_class c ON c.oid = u.rel
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT u.is_partition),
    matches AS (
        SELECT tb.rel, r.id, r.kind, r.method, r.columns
          FROM tables tb JOIN rules r
            ON tb.s COLLATE "C" LIKE bemi._rule_like(r.s) AND tb.t COLLATE "C" LIKE bemi._rule_like(r.t)),
    cols AS (
        SELECT m.rel, m.kind, m.method, a.attname::text AS col
          FROM matches m
          JOIN pg_attribute a ON a.attrelid = m.rel AND a.attnum > 0 AND NOT a.attisdropped
         WHERE m.kind IN ('ignore_columns', 'mask')
           AND EXISTS (SELECT FROM unnest(m.columns) p WHERE a.attname::text COLLATE "C" LIKE bemi._rule_like(p))),
    masked AS (
        SELECT c.rel, c.col, (array_agg(c.method ORDER BY array_position(ARRAY['drop', 'redact', 'hash'], c.method)))[1] AS method
          FROM cols c WHERE c.kind = 'mask' GROUP BY c.rel, c.col)
    SELECT * FROM (
        SELECT tb.s, tb.t,
               NOT EXISTS (SELECT FROM matches m WHERE m.rel = tb.rel AND m.kind = 'ignore'),
               ARRAY(SELECT DISTINCT c.col FROM cols c WHERE c.rel = tb.rel AND c.kind = 'ignore_columns' ORDER BY 1),
               ARRAY(SELECT m.col || ':' || m.method FROM masked m WHERE m.rel = tb.rel ORDER BY 1),
               CASE tb.replident WHEN 'f' THEN 'full' WHEN 'd' THEN 'default' WHEN 'i' THEN 'index' ELSE 'nothing' END,
               ARRAY(SELECT p FROM unnest(ARRAY[
                   CASE WHEN tb.replident <> 'f'
                        THEN 'REPLICA IDENTITY is not FULL: before images hold only the key' END,
                   CASE WHEN tb.replident <> 'f' AND EXISTS (SELECT FROM cols c WHERE c.rel = tb.rel AND c.kind = 'ignore_columns')
                        THEN 'ignored columns need REPLICA IDENTITY FULL: without it, every UPDATE is recorded' END,
                   CASE WHEN NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = tb.rel AND i.indisprimary)
                        THEN 'no primary key' END,
                   -- The trail's key of a row is then masked too: it locates no row, and unless
                   -- hashed it is the same for every row.
                   (SELECT format('primary key masked (%s): reverts leave out its changes%s',
                                  string_agg(m.col || ':' || m.method, ', ' ORDER BY array_position(tb.key_cols, m.col)),
                                  CASE WHEN bool_or(m.method <> 'hash')
                                       THEN '; history by key cannot tell its rows apart' ELSE '' END)
                      FROM masked m WHERE m.rel = tb.rel AND m.col = ANY (tb.key_cols)
                    HAVING count(*) > 0)]) p WHERE p IS NOT NULL)
          FROM tables tb
        UNION ALL
        SELECT NULL, NULL, NULL, NULL, NULL, NULL,
               ARRAY[format('rule %s (%s %s.%s) matches no table', r.id, r.kind, r.s, r.t)]
          FROM rules r WHERE NOT EXISTS (SELECT FROM matches m WHERE m.id = r.id)
    ) t
    ORDER BY 1, 2, 7
$$;
COMMENT ON FUNCTION @extschema@.bemi_tracked_tables() IS
    'Every user table: whether it is recorded, its ignored and masked columns, its replica identity and what keeps its images incomplete; and the rules that match no table';
REVOKE ALL ON FUNCTION bemi._rule_like(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.bemi_tracked_tables() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi._rule_like(text) TO bemi_reader, bemi_admin;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_tracked_tables() TO bemi_reader, bemi_admin;

-- Reverts must never write a mask into a table (docs/sql-reference.md, "Reverting"). A value is
-- a mask by its shape (the marker, or "hmac:" and 64 hex digits: the plugin's BEMI_MASK_MARKER and
-- BEMI_MASK_HASH_PREFIX), tested inline where images are read, whatever today's rules say: a rule
-- made after a change left that change in clear, a rule dropped since masked it. A 'drop' mask
-- leaves no value at all, so only today's rules say why a column is missing from an image:
-- bemi_masked_columns names the columns a mask rule covers now.
-- Owner's rights (bemi.rules is for trail readers only), in schema bemi which PUBLIC cannot use:
-- reached through bemi_masked_columns, which checks the caller first.
CREATE FUNCTION bemi._masked_columns(tbl regclass, p_schema text, p_table text) RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(DISTINCT a.attname::text ORDER BY a.attname::text), '{}')
      FROM bemi.rules r
      JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
     WHERE r.kind = 'mask'
       AND p_schema COLLATE "C" LIKE bemi._rule_like(split_part(r.target, '.', 1))
       AND p_table COLLATE "C" LIKE bemi._rule_like(split_part(r.target, '.', 2))
       AND EXISTS (SELECT FROM unnest(r.columns) p WHERE a.attname::text COLLATE "C" LIKE bemi._rule_like(p))
$$;
REVOKE ALL ON FUNCTION bemi._masked_columns(regclass, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi._masked_columns(regclass, text, text) TO PUBLIC;

-- The columns of a table a mask rule covers now, for a caller who may read the table's changes
-- (bemi._readable_table raises otherwise): column names only. Runs as the caller; bound to the
-- helpers by OID, so it needs no USAGE on schema bemi.
CREATE FUNCTION @extschema@.bemi_masked_columns(tbl regclass) RETURNS text[]
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT bemi._masked_columns(bemi_masked_columns.tbl, t.schema_name, t.table_name)
      FROM bemi._readable_table(bemi_masked_columns.tbl) t;
END;
COMMENT ON FUNCTION @extschema@.bemi_masked_columns(regclass) IS
    'The columns of a table that a mask rule covers now (for a caller who may read its changes)';
------------------------------------------------------------------------------------------------
-- History and grouping: the changes of a row, a table, a transaction or a context, and the
-- transactions and context values they group into (docs/sql-reference.md). Every function reads
-- through access.sql's readers and returns rows of one type, built by one function.
------------------------------------------------------------------------------------------------
-- What changed between two images, as {"column": [old, new]}: every column of a CREATE or a
-- DELETE, the changed ones of an UPDATE.
CREATE FUNCTION @extschema@.bemi_diff(before_image jsonb, after_image jsonb) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'bemi_diff' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.bemi_diff(jsonb, jsonb) IS 'What changed between two images, as {"column": [old, new]}';

-- Does bemi record values of this type as their output text (to_jsonb would run a function an
-- ordinary role could have written)? Time travel renders keys with it, as the images were built.
-- Where it is true, format('%s', value) gives that text without calling any cast.
CREATE FUNCTION @extschema@.bemi_json_is_text(type regtype) RETURNS boolean
    AS 'MODULE_PATHNAME', 'bemi_json_is_text' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.bemi_json_is_text(regtype) IS
    'Whether bemi records values of this type as their text output (its JSON conversion would run user code)';

-- The primary key of a row image of a table, as bemi.changes.primary_key holds it: the output
-- plugin's own rule (src/decoding/image.cpp, BemiPrimaryKey), for SQL that matches rows to the
-- trail (time travel). NULL when the table has no primary key.
CREATE FUNCTION @extschema@.bemi_primary_key(tbl regclass, image jsonb) RETURNS text
    AS 'MODULE_PATHNAME', 'bemi_key_text' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.bemi_primary_key(regclass, jsonb) IS
    'The primary key of a row image of tbl, as bemi.changes.primary_key holds it';

-- One change as the history functions return it: a bemi.changes row with its diff.
CREATE TYPE @extschema@.bemi_change AS (
    id bigint, "schema" text, "table" text, primary_key text, operation text, diff jsonb,
    "before" jsonb, "after" jsonb, context jsonb, committed_at timestamptz, transaction_id bigint,
    position pg_lsn);

-- Every history function below maps a trail row `c` to a bemi_change with the same column list,
-- written once: the placeholder BEMI_CHANGE_COLUMNS between @ signs is replaced by the Makefile when it
-- assembles the install script. Written out, not a mapping function: a function taking the row
-- (c bemi.changes) made the planner build a whole-row value and an extra subquery per call, and
-- tripled the planning time of a row's history (0.07 -> 0.22 ms).

CREATE FUNCTION @extschema@.bemi_row_history(tbl regclass, primary_key text) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_row_history.tbl) t,
           LATERAL bemi._row_trail(bemi_row_history.tbl, t.schema_name, t.table_name,
                                   ARRAY[bemi_row_history.primary_key]) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_row_history(regclass, text) IS
    'Every recorded change of one row, newest first, with a diff; primary_key as bemi.changes has it';

-- The same for a key given as a value of its own type: 26, 'ACME-1', ARRAY[3, 14]. (A quoted
-- body, as polymorphic functions need, without SET so that it is inlined; every name qualified,
-- every argument of the type it is declared with.)
CREATE FUNCTION @extschema@.bemi_row_history(tbl regclass, primary_key anycompatible) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE AS $$
    SELECT * FROM @extschema@.bemi_row_history(tbl,
        CASE WHEN @extschema@.bemi_json_is_text(pg_catalog.pg_typeof(primary_key))
             THEN pg_catalog.format('%s', primary_key)
             ELSE pg_catalog.to_jsonb(primary_key) OPERATOR(pg_catalog.#>>) '{}'::pg_catalog.text[] END)
$$;

CREATE FUNCTION @extschema@.bemi_rows_history(tbl regclass, primary_keys text[]) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_rows_history.tbl) t,
           LATERAL bemi._row_trail(bemi_rows_history.tbl, t.schema_name, t.table_name, bemi_rows_history.primary_keys) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_rows_history(regclass, text[]) IS
    'Every recorded change of several rows of one table, newest first';

CREATE FUNCTION @extschema@.bemi_table_history(tbl regclass, since timestamptz DEFAULT '-infinity',
                                               until timestamptz DEFAULT 'infinity') RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_table_history.tbl) t,
           LATERAL bemi._table_time_trail(bemi_table_history.tbl, t.schema_name, t.table_name,
                                          coalesce(bemi_table_history.since, '-infinity'),
                                          coalesce(bemi_table_history.until, 'infinity')) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_table_history(regclass, timestamptz, timestamptz) IS
    'Every recorded change of one table committed between since and until (both included), newest first';

CREATE FUNCTION @extschema@.bemi_table_truncations(tbl regclass) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_table_truncations.tbl) t,
           LATERAL bemi._truncate_trail(bemi_table_truncations.tbl, t.schema_name, t.table_name) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_table_truncations(regclass) IS 'The recorded TRUNCATEs of one table, newest first';

-- Changes of tables the caller cannot read are left out of the following three.
CREATE FUNCTION @extschema@.bemi_transaction_history(transaction_id bigint) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._transaction_trail(bemi._caller(), bemi_transaction_history.transaction_id) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_transaction_history(bigint) IS
    'Every recorded change of one transaction (bemi.changes.transaction_id), newest first';

CREATE FUNCTION @extschema@.bemi_context_history(context jsonb) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._context_trail(bemi._caller(), bemi_context_history.context) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_context_history(jsonb) IS
    'Every recorded change whose context contains the given object, newest first';

CREATE FUNCTION @extschema@.bemi_changes(ids bigint[]) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._id_trail(bemi._caller(), bemi_changes.ids) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_changes(bigint[]) IS 'The recorded changes with the given ids, newest first';

-- How many changes of a transaction or a context the caller cannot read: a revert refuses to do
-- half a job.
CREATE FUNCTION @extschema@.bemi_unreadable_changes(transaction_id bigint DEFAULT NULL, context jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT bemi._unreadable_count(bemi._caller(), bemi_unreadable_changes.transaction_id,
                                  bemi_unreadable_changes.context);
END;
COMMENT ON FUNCTION @extschema@.bemi_unreadable_changes(bigint, jsonb) IS
    'How many changes of a transaction or context are on tables the current user cannot read';

------------------------------------------------------------------------------------------------
-- Grouping
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.bemi_transactions(since timestamptz DEFAULT '-infinity', until timestamptz DEFAULT 'infinity')
RETURNS TABLE (transaction_id bigint, committed_at timestamptz, context jsonb, tables text[],
               changes bigint, creates bigint, updates bigint, deletes bigint, truncates bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.transaction_id, c.committed_at, (array_agg(c.context ORDER BY c.id))[1],
           array_agg(DISTINCT format('%I.%I', c.schema, c."table")), count(*),
           count(*) FILTER (WHERE c.operation = 'CREATE'), count(*) FILTER (WHERE c.operation = 'UPDATE'),
           count(*) FILTER (WHERE c.operation = 'DELETE'), count(*) FILTER (WHERE c.operation = 'TRUNCATE')
      FROM bemi._time_trail(bemi._caller(), coalesce(bemi_transactions.since, '-infinity'),
                            coalesce(bemi_transactions.until, 'infinity')) c
     GROUP BY c.transaction_id, c.committed_at
     ORDER BY max(c.id) DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_transactions(timestamptz, timestamptz) IS
    'One row per transaction committed between since and until: its context, tables and counts';

CREATE FUNCTION @extschema@.bemi_context_groups(key text, since timestamptz DEFAULT '-infinity',
                                                until timestamptz DEFAULT 'infinity')
RETURNS TABLE (value jsonb, transactions bigint, changes bigint, tables text[],
               first_committed_at timestamptz, last_committed_at timestamptz)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.context -> bemi_context_groups.key, count(DISTINCT (c.transaction_id, c.committed_at)),
           count(*), array_agg(DISTINCT format('%I.%I', c.schema, c."table")),
           min(c.committed_at), max(c.committed_at)
      FROM bemi._time_trail(bemi._caller(), coalesce(bemi_context_groups.since, '-infinity'),
                            coalesce(bemi_context_groups.until, 'infinity')) c
     WHERE c.context ? bemi_context_groups.key
     GROUP BY 1
     ORDER BY max(c.id) DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_context_groups(text, timestamptz, timestamptz) IS
    'One row per value of a context key (user, request, endpoint ...): transactions, changes, tables, time span';

------------------------------------------------------------------------------------------------
-- Time travel: a table or a row as it was at a moment, rebuilt from its current rows and the
-- trail (docs/sql-reference.md). PL/pgSQL running as the caller; reads through history.sql.
------------------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.bemi_tracking_started_at() RETURNS timestamptz
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT t.started_at FROM bemi._tracking() t;
END;
COMMENT ON FUNCTION @extschema@.bemi_tracking_started_at() IS
    'Where the trail starts: when tracking began, or where retention cut it. Time travel reaches back to here';

-- When tracking began, and whether the table held rows then (if so, the trail alone cannot
-- rebuild it). Raises unless the caller may read the table's changes.
CREATE FUNCTION @extschema@.bemi_tracking(tbl regclass, OUT started_at timestamptz, OUT had_rows_at_start boolean)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT t.started_at, format('%I.%I', r.schema_name, r.table_name) = ANY (t.nonempty_tables)
      FROM bemi._readable_table(bemi_tracking.tbl) r, bemi._tracking() t;
END;
COMMENT ON FUNCTION @extschema@.bemi_tracking(regclass) IS
    'When tracking began, and whether the table already held rows then';

-- The table behind a row type, the SQL that renders a row's key as bemi.changes.primary_key
-- holds it (alias t; through bemi_primary_key, the plugin's rule), and the column list of the
-- key. Checks everything time travel needs.
CREATE FUNCTION @extschema@.bemi_time_travel_target(row_type regtype, at timestamptz, OUT tbl regclass,
                                        OUT key_sql text, OUT key_columns text[],
                                        OUT had_rows_at_start boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    started timestamptz;
BEGIN
    IF at IS NULL THEN
        RAISE EXCEPTION 'the moment must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass a timestamptz, for example now() - interval ''1 hour''.';
    END IF;
    SELECT nullif(typrelid, 0)::regclass INTO tbl FROM pg_type WHERE oid = row_type;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'time travel needs a table''s row type, not %', coalesce(row_type::text, 'NULL')
            USING ERRCODE = 'wrong_object_type', HINT = 'Pass NULL::tablename as the first argument.';
    END IF;
    SELECT * INTO started, had_rows_at_start FROM @extschema@.bemi_tracking(tbl);
    -- The key text comes from the output plugin's own rule (bemi_primary_key), applied to an
    -- image of the key columns built as the plugin builds images: a type whose JSON conversion
    -- would run an untrusted role's code is recorded as its output text, which format('%s')
    -- gives without calling any of its casts. One exception, for speed (time travel renders the
    -- key of every current row, and building an image costs as much again as the rest): a key of
    -- one integer, text or uuid column is its own text, which a plain cast gives; sql/primary_key.sql
    -- checks that both give the same text.
    SELECT array_agg(a.attname::text ORDER BY k.ord),
           CASE WHEN count(*) = 1 AND min(a.atttypid::int) = max(a.atttypid::int)
                 AND min(a.atttypid::int) IN ('int2'::regtype::int, 'int4'::regtype::int, 'int8'::regtype::int,
                                              'text'::regtype::int, 'varchar'::regtype::int, 'uuid'::regtype::int)
                THEN format('(t.%I)::pg_catalog.text', min(a.attname))
                ELSE format('@extschema@.bemi_primary_key(%s::pg_catalog.oid::pg_catalog.regclass, pg_catalog.jsonb_build_object(%s))',
                            tbl::oid,
                            string_agg(format('%L::pg_catalog.text, ', a.attname)
                                       || CASE WHEN @extschema@.bemi_json_is_text(a.atttypid::regtype)
                                               THEN format('pg_catalog.format(''%%s'', t.%I)', a.attname)
                                               ELSE format('t.%I', a.attname) END, ', ' ORDER BY k.ord)) END
      INTO key_columns, key_sql
      FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, ord), pg_attribute a
     WHERE i.indrelid = tbl AND i.indisprimary AND k.ord <= i.indnkeyatts
       AND a.attrelid = tbl AND a.attnum = k.attnum;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', tbl USING ERRCODE = 'feature_not_supported',
            DETAIL = 'Time travel and reverts match the trail to rows by primary key.',
            HINT = 'Add a primary key; its changes are tracked from then on.';
    END IF;
    IF at > clock_timestamp() THEN
        RAISE EXCEPTION 'cannot read % as of %: that moment is in the future', tbl, at
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Read the table itself for its current state.';
    END IF;
    IF at < started THEN
        RAISE EXCEPTION 'cannot read % as of %: the trail starts later', tbl, at
            USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('The trail starts at %s (when tracking began, or where retention cut it); it cannot tell what the table held before.', started),
            HINT = 'Pick a moment after bemi_tracking_started_at().';
    END IF;
END $$;
COMMENT ON FUNCTION @extschema@.bemi_time_travel_target(regtype, timestamptz) IS
    'Checks a time-travel request and returns the table, its key expression and key columns';

-- The columns of a table where a mask read from the trail (the marker "[masked]", a hash
-- "hmac:<64 hex digits>") is not a value of the column's type: time travel reads a mask there as
-- NULL, as it reads a dropped one, and returns the others masked (docs/sql-reference.md, "Time
-- travel"). marker and hash list them for each kind of mask: every column of no string type, a
-- varchar(n) or char(n) shorter than the mask, and a column of another string type (a domain, name,
-- citext) whose type does not take the mask back unchanged (too short, a CHECK, a truncation),
-- tried with the type's input as jsonb_populate_record applies it (a hash with the real ones'
-- shape). Runs as the caller: the input functions and domain checks are those time travel runs.
CREATE FUNCTION @extschema@.bemi_mask_misfits(tbl regclass, OUT marker text[], OUT hash text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col record;
    mask text;
    fits boolean;
BEGIN
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum)
                        FILTER (WHERE t.typcategory <> 'S' OR (a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype)
                                                                AND a.atttypmod >= 0 AND a.atttypmod - 4 < 8)), '{}'),
           coalesce(array_agg(a.attname::text ORDER BY a.attnum)
                        FILTER (WHERE t.typcategory <> 'S' OR (a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype)
                                                                AND a.atttypmod >= 0 AND a.atttypmod - 4 < 69)), '{}')
      INTO marker, hash
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;
    FOR col IN SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND t.typcategory = 'S'
                  AND a.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype)
                ORDER BY a.attnum LOOP
        FOREACH mask IN ARRAY ARRAY['[masked]', 'hmac:' || repeat('0', 64)] LOOP
            BEGIN
                EXECUTE format('SELECT pg_catalog.rtrim(pg_catalog.format(''%%s'', x.v), '' '') = $1'
                               ' FROM pg_catalog.jsonb_to_record($2) AS x (v %s)', col.type)
                    INTO fits USING mask, jsonb_build_object('v', mask);
            EXCEPTION WHEN OTHERS THEN
                fits := false;
            END;
            IF NOT fits AND mask = '[masked]' THEN
                marker := marker || col.name;
            ELSIF NOT fits THEN
                hash := hash || col.name;
            END IF;
        END LOOP;
    END LOOP;
    marker := ARRAY(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = tbl AND a.attname::text = ANY (marker) ORDER BY a.attnum);
    hash := ARRAY(SELECT a.attname::text FROM pg_attribute a
                   WHERE a.attrelid = tbl AND a.attname::text = ANY (hash) ORDER BY a.attnum);
END $$;
COMMENT ON FUNCTION @extschema@.bemi_mask_misfits(regclass) IS
    'The columns of a table where time travel reads a mask (marker, hash) as NULL: it is not a value of their type';

-- A table as it was at a moment, as rows of its own type: the current rows that no change
-- after the moment touched, plus the before-image of the first change after the moment of every
-- row that was changed since (unless that change created the row). After a TRUNCATE later than
-- the moment, the current rows say nothing: the state is replayed from the trail instead, which
-- works when the table was empty at a recorded TRUNCATE before the moment or when tracking began.
-- Waits for the trail to catch up with everything committed before the call.
CREATE FUNCTION @extschema@.bemi_as_of(tbl anyelement, at timestamptz) RETURNS SETOF anyelement
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    target record := @extschema@.bemi_time_travel_target(pg_typeof(tbl), at);
    base_id bigint;
    base_at timestamptz;
    -- Masked values are read back masked (docs/sql-reference.md, "Time travel"): a mask (the marker
    -- or a hash, by its shape) where it is no value of the column's type reads as NULL, as a dropped
    -- one does.
    misfit record := @extschema@.bemi_mask_misfits(target.tbl);
    unmask constant text := $u$ - ARRAY(SELECT e.key FROM pg_catalog.jsonb_each(%1$s) e
                                       WHERE pg_catalog.jsonb_typeof(e.value) = 'string'
                                         AND CASE WHEN e.value #>> '{}' = '[masked]' THEN e.key = ANY (%2$s)
                                                  WHEN e.value #>> '{}' ~ '^hmac:[0-9a-f]{64}$' THEN e.key = ANY (%3$s)
                                                  ELSE false END)$u$;
    -- A mask rule covers a key column: the changes recorded under it say not which row they
    -- changed ("[masked]" is every row's key), so time travel over them is refused.
    masked_key constant boolean := target.key_columns && @extschema@.bemi_masked_columns(target.tbl);
    keyless bigint;
BEGIN
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    IF NOT EXISTS (SELECT 1 FROM @extschema@.bemi_table_truncations(target.tbl) WHERE committed_at > at) THEN
        IF masked_key THEN
            SELECT h.id INTO keyless FROM @extschema@.bemi_table_history(target.tbl, at, 'infinity'::timestamptz) h
             WHERE h.committed_at > at AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
                                WHERE img <> '{}' AND CASE WHEN img ? c
                                    THEN jsonb_typeof(img -> c) = 'string' AND (img ->> c = '[masked]' OR img ->> c ~ '^hmac:[0-9a-f]{64}$')
                                    ELSE true END)
             ORDER BY h.id LIMIT 1;
        END IF;
        IF keyless IS NOT NULL THEN
            RAISE EXCEPTION 'cannot read % as of %: changes since were recorded with its primary key masked', target.tbl, at
                USING ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = format('Change %s (and maybe others) holds a mask of the key (a marker, a hash, or no value), which says not which row it changed.', keyless),
                HINT = 'Read the images with bemi_table_history; time travel matches the trail to rows by primary key.';
        END IF;
        BEGIN
            RETURN QUERY EXECUTE format($q$
                WITH firsts AS (
                    SELECT DISTINCT ON (h.primary_key) h.primary_key, h.operation, h."before"
                      FROM @extschema@.bemi_table_history($1, $2, 'infinity'::timestamptz) h
                     WHERE h.committed_at > $2
                     ORDER BY h.primary_key, h.id)
                SELECT t.* FROM %1$s t
                 WHERE NOT EXISTS (SELECT 1 FROM firsts f WHERE f.primary_key = %2$s)
                UNION ALL
                SELECT r.* FROM firsts f, jsonb_populate_record(NULL::%1$s, f."before" %3$s) r
                 WHERE f.operation <> 'CREATE'$q$, target.tbl, target.key_sql, format(unmask, 'f."before"', '$3', '$4'))
                USING target.tbl, at, misfit.marker, misfit.hash;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'an old image of % does not fit the table''s current columns', target.tbl
                USING ERRCODE = 'datatype_mismatch', DETAIL = SQLERRM,
                HINT = 'A column''s type changed since; read the images with bemi_table_history instead.';
        END;
        RETURN;
    END IF;
    -- Truncated since: rebuild from the last empty state at or before the moment.
    SELECT id, committed_at INTO base_id, base_at FROM @extschema@.bemi_table_truncations(target.tbl)
     WHERE committed_at <= at ORDER BY id DESC LIMIT 1;
    IF NOT FOUND THEN
        IF target.had_rows_at_start THEN
            RAISE EXCEPTION 'cannot read % as of %: it was truncated since, and the trail does not hold its rows at that moment',
                target.tbl, at USING ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = 'The table already held rows when tracking began, and no TRUNCATE before the moment emptied it.',
                HINT = 'Read it as of a moment after a recorded TRUNCATE, or restore a backup.';
        END IF;
        base_id := 0;
        base_at := '-infinity';
    END IF;
    IF masked_key THEN
        SELECT h.id INTO keyless FROM @extschema@.bemi_table_history(target.tbl, base_at, at) h
         WHERE h.id > base_id AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
                            WHERE img <> '{}' AND CASE WHEN img ? c
                                THEN jsonb_typeof(img -> c) = 'string' AND (img ->> c = '[masked]' OR img ->> c ~ '^hmac:[0-9a-f]{64}$')
                                ELSE true END)
         ORDER BY h.id LIMIT 1;
    END IF;
    IF keyless IS NOT NULL THEN
        RAISE EXCEPTION 'cannot read % as of %: changes before it were recorded with its primary key masked', target.tbl, at
            USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('It was truncated since, so it is replayed from the trail; change %s (and maybe others) holds a mask of the key (a marker, a hash, or no value), which says not which row it changed.', keyless),
            HINT = 'Read the images with bemi_table_history; time travel matches the trail to rows by primary key.';
    END IF;
    BEGIN
        RETURN QUERY EXECUTE format($q$
            SELECT r.* FROM (
                SELECT DISTINCT ON (h.primary_key) h.operation, h."after"
                  FROM @extschema@.bemi_table_history($1, $3, $2) h
                 WHERE h.id > $4 AND h.operation <> 'TRUNCATE'
                 ORDER BY h.primary_key, h.id DESC) l,
                jsonb_populate_record(NULL::%1$s, l."after" %2$s) r
             WHERE l.operation <> 'DELETE'$q$, target.tbl, format(unmask, 'l."after"', '$5', '$6'))
            USING target.tbl, at, base_at, base_id, misfit.marker, misfit.hash;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'an old image of % does not fit the table''s current columns', target.tbl
            USING ERRCODE = 'datatype_mismatch', DETAIL = SQLERRM,
            HINT = 'A column''s type changed since; read the images with bemi_table_history instead.';
    END;
END $$;
COMMENT ON FUNCTION @extschema@.bemi_as_of(anyelement, timestamptz) IS
    'SELECT * FROM bemi_as_of(NULL::tbl, moment): the rows of tbl as they were at that moment';

-- One row as it was at a moment, or NULL if it did not exist then. The key is the row's primary
-- key value (26, 'ACME-1') or, for a composite key, an array or JSON array text ('[3, 14]').
CREATE FUNCTION @extschema@.bemi_row_as_of(tbl anyelement, primary_key anycompatible, at timestamptz) RETURNS anyelement
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    target record := @extschema@.bemi_time_travel_target(pg_typeof(tbl), at);
    key text := CASE WHEN @extschema@.bemi_json_is_text(pg_typeof(primary_key)) THEN format('%s', primary_key)
                     ELSE to_jsonb(primary_key) #>> '{}' END;
    key_image jsonb;
    change record;
    base_id bigint := 0;
    -- As in bemi_as_of: a mask where it is no value of the column's type reads as NULL. Those
    -- columns are looked up only for an image that holds a mask.
    no_marker text[];
    no_hash text[];
    -- A mask rule covers a key column: the changes recorded under it say not which row they
    -- changed ("[masked]" is every row's key), so time travel over them is refused.
    masked_key constant boolean := target.key_columns && @extschema@.bemi_masked_columns(target.tbl);
    keyless bigint;
BEGIN
    IF key IS NULL THEN
        RAISE EXCEPTION 'the primary key must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    -- As in bemi_as_of: any change since under a masked key may be this row's (truncated since,
    -- any change of the span replayed, below).
    IF masked_key THEN
        SELECT h.id INTO keyless FROM @extschema@.bemi_table_history(target.tbl, at, 'infinity'::timestamptz) h
         WHERE h.committed_at > at AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
                            WHERE img <> '{}' AND CASE WHEN img ? c
                                THEN jsonb_typeof(img -> c) = 'string' AND (img ->> c = '[masked]' OR img ->> c ~ '^hmac:[0-9a-f]{64}$')
                                ELSE true END)
         ORDER BY h.id LIMIT 1;
    END IF;
    IF keyless IS NOT NULL THEN
        RAISE EXCEPTION 'cannot read a row of % as of %: changes since were recorded with its primary key masked', target.tbl, at
            USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('Change %s (and maybe others) holds a mask of the key (a marker, a hash, or no value), which says not which row it changed.', keyless),
            HINT = 'Read the images with bemi_table_history; time travel matches the trail to rows by primary key.';
    END IF;
    BEGIN
        SELECT h.operation, h."before" INTO change FROM @extschema@.bemi_row_history(target.tbl, key) h
         WHERE h.committed_at > at ORDER BY h.id LIMIT 1;
        IF FOUND THEN
            -- The first change after the moment knows the row as it was (or that it did not exist).
            IF EXISTS (SELECT FROM jsonb_each(change."before") e
                        WHERE jsonb_typeof(e.value) = 'string'
                          AND (e.value #>> '{}' = '[masked]' OR e.value #>> '{}' ~ '^hmac:[0-9a-f]{64}$')) THEN
                SELECT m.marker, m.hash INTO no_marker, no_hash FROM @extschema@.bemi_mask_misfits(target.tbl) m;
            END IF;
            RETURN CASE WHEN change.operation = 'CREATE' THEN NULL
                        ELSE jsonb_populate_record(tbl, change."before" - ARRAY(
                             SELECT e.key FROM jsonb_each(change."before") e
                              WHERE jsonb_typeof(e.value) = 'string'
                                AND CASE WHEN e.value #>> '{}' = '[masked]' THEN e.key = ANY (no_marker)
                                         WHEN e.value #>> '{}' ~ '^hmac:[0-9a-f]{64}$' THEN e.key = ANY (no_hash)
                                         ELSE false END)) END;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM @extschema@.bemi_table_truncations(target.tbl) WHERE committed_at > at) THEN
            -- Untouched since: it is as it is now.
            key_image := CASE WHEN cardinality(target.key_columns) = 1
                              THEN jsonb_build_object(target.key_columns[1], key)
                              ELSE (SELECT jsonb_object_agg(c, key::jsonb -> (o::int - 1))
                                      FROM unnest(target.key_columns) WITH ORDINALITY AS u (c, o)) END;
            EXECUTE format('SELECT t.* FROM %1$s t, jsonb_populate_record(NULL::%1$s, $1) k WHERE (%2$s) = (%3$s)',
                           target.tbl,
                           (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(target.key_columns) c),
                           (SELECT string_agg(format('k.%I', c), ', ') FROM unnest(target.key_columns) c))
                INTO tbl USING key_image;
            RETURN tbl;
        END IF;
        -- Truncated since: the latest change at or before the moment, after the last empty state.
        SELECT coalesce(max(id), 0) INTO base_id FROM @extschema@.bemi_table_truncations(target.tbl)
         WHERE committed_at <= at;
        IF base_id = 0 AND target.had_rows_at_start THEN
            RAISE EXCEPTION 'cannot read a row of % as of %: the table was truncated since, and the trail does not hold its rows at that moment',
                target.tbl, at USING ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = 'The table already held rows when tracking began, and no TRUNCATE before the moment emptied it.',
                HINT = 'Read it as of a moment after a recorded TRUNCATE, or restore a backup.';
        END IF;
        IF masked_key THEN
            SELECT h.id INTO keyless FROM @extschema@.bemi_table_history(target.tbl, '-infinity'::timestamptz, at) h
             WHERE h.id > base_id AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
                                WHERE img <> '{}' AND CASE WHEN img ? c
                                    THEN jsonb_typeof(img -> c) = 'string' AND (img ->> c = '[masked]' OR img ->> c ~ '^hmac:[0-9a-f]{64}$')
                                    ELSE true END)
             ORDER BY h.id LIMIT 1;
        END IF;
        IF keyless IS NOT NULL THEN
            RAISE EXCEPTION 'cannot read a row of % as of %: changes before it were recorded with its primary key masked', target.tbl, at
                USING ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = format('It was truncated since, so it is replayed from the trail; change %s (and maybe others) holds a mask of the key (a marker, a hash, or no value), which says not which row it changed.', keyless),
                HINT = 'Read the images with bemi_table_history; time travel matches the trail to rows by primary key.';
        END IF;
        SELECT h.operation, h."after" INTO change FROM @extschema@.bemi_row_history(target.tbl, key) h
         WHERE h.committed_at <= at AND h.id > base_id ORDER BY h.id DESC LIMIT 1;
        IF FOUND AND EXISTS (SELECT FROM jsonb_each(change."after") e
                         WHERE jsonb_typeof(e.value) = 'string'
                           AND (e.value #>> '{}' = '[masked]' OR e.value #>> '{}' ~ '^hmac:[0-9a-f]{64}$')) THEN
            SELECT m.marker, m.hash INTO no_marker, no_hash FROM @extschema@.bemi_mask_misfits(target.tbl) m;
        END IF;
        RETURN CASE WHEN NOT FOUND OR change.operation = 'DELETE' THEN NULL
                    ELSE jsonb_populate_record(tbl, change."after" - ARRAY(
                             SELECT e.key FROM jsonb_each(change."after") e
                              WHERE jsonb_typeof(e.value) = 'string'
                                AND CASE WHEN e.value #>> '{}' = '[masked]' THEN e.key = ANY (no_marker)
                                         WHEN e.value #>> '{}' ~ '^hmac:[0-9a-f]{64}$' THEN e.key = ANY (no_hash)
                                         ELSE false END)) END;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'an old image of % does not fit the table''s current columns', target.tbl
            USING ERRCODE = 'datatype_mismatch', DETAIL = SQLERRM,
            HINT = 'A column''s type changed since; read the images with bemi_row_history instead.';
    END;
END $$;
COMMENT ON FUNCTION @extschema@.bemi_row_as_of(anyelement, anycompatible, timestamptz) IS
    'bemi_row_as_of(NULL::tbl, key, moment): one row as it was at that moment, NULL if it did not exist';

------------------------------------------------------------------------------------------------
-- Reversion: undo a set of changes (a change, a transaction, a context, a table since a moment)
-- and redo a revert, in the caller's transaction with the caller's rights (docs/sql-reference.md).
------------------------------------------------------------------------------------------------
-- One statement of a revert: what it does to which row, the SQL, and its two parameters ($1 the
-- image to restore, $2 the image that identifies the row as it is now). rows is NULL in a dry run.
CREATE TYPE @extschema@.bemi_revert_step AS (
    step integer, "table" text, primary_key text, action text, reverts bigint[], statement text,
    image jsonb, key_image jsonb, rows bigint, transaction_id bigint);

-- Reverts a set of changes in the caller's transaction, as the caller (so it needs the caller's
-- INSERT, UPDATE and DELETE rights). For every row the set touched, the row is brought back to
-- the before-image of the set's first change of it: deleted if that change created it, inserted
-- if the set deleted it, otherwise the columns the set changed are set back. Refuses if a change
-- outside the set touched one of those rows after the set did (a conflict), unless force.
-- A revert never writes a mask: a column whose old value is a mask (by its shape), or is missing
-- from the image while a mask rule covers it now ('drop'), is left as it is (an UPDATE) or to its
-- default (an INSERT), and a NOTICE names it, with or without force. A change of a row whose primary
-- key the trail holds masked locates no row: refused, or with force left out (and named).
-- The writes carry the caller's context plus `marker` (default {"bemi_revert": {"change_ids": …}}).
CREATE FUNCTION @extschema@.bemi_revert_changes(change_ids bigint[], force boolean DEFAULT false,
                                    dry_run boolean DEFAULT false, marker jsonb DEFAULT NULL)
RETURNS SETOF @extschema@.bemi_revert_step
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sel @extschema@.bemi_change[];
    missing bigint[];
    conflicts text[] := '{}';
    tab record;
    grp record;
    rel regclass;
    key_cols text[];
    cols text[];
    held text[];
    masks text[];
    b jsonb;
    k jsonb;
    result @extschema@.bemi_revert_step;
    n bigint;
    prev_context jsonb := @extschema@.bemi_context();
    saved_min_messages text;
    step_no integer := 0;
    unkeyed text[] := '{}';
    unkeyed_ids bigint[] := '{}';
BEGIN
    IF change_ids IS NULL OR force IS NULL OR dry_run IS NULL THEN
        RAISE EXCEPTION 'change_ids, force and dry_run must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    sel := ARRAY(SELECT c FROM @extschema@.bemi_changes(change_ids) c);
    missing := ARRAY(SELECT unnest(change_ids) EXCEPT SELECT s.id FROM unnest(sel) s ORDER BY 1);
    IF missing <> '{}' THEN
        RAISE EXCEPTION 'cannot revert: % of the changes are not in the trail', cardinality(missing)
            USING ERRCODE = 'undefined_object', DETAIL = format('Unknown change ids: %s.', missing),
            HINT = 'Changes of tables you cannot SELECT are invisible to you.';
    END IF;
    IF sel = '{}' THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(sel) s WHERE s.operation = 'TRUNCATE' OR s.primary_key IS NULL) THEN
        RAISE EXCEPTION 'cannot revert a TRUNCATE or a change of a table without a primary key'
            USING ERRCODE = 'feature_not_supported',
            DETAIL = format('Changes: %s.', ARRAY(SELECT s.id FROM unnest(sel) s
                                                   WHERE s.operation = 'TRUNCATE' OR s.primary_key IS NULL ORDER BY 1)),
            HINT = 'Reverts find rows by primary key; a TRUNCATE can be undone with bemi_as_of and INSERT … SELECT.';
    END IF;

    -- Changes of rows whose primary key the trail holds masked: a key column whose value has a
    -- mask's shape, or that the image lacks while a mask rule covers it now ('drop'). Such a key
    -- locates no row ("[masked]" is every row's key; a hash or nothing is no value of the table), so
    -- the change is never reverted: refused, or with force left out with a NOTICE.
    FOR tab IN SELECT s.schema, s."table" FROM unnest(sel) s GROUP BY 1, 2 ORDER BY 1, 2 LOOP
        rel := to_regclass(format('%I.%I', tab.schema, tab."table"));
        CONTINUE WHEN rel IS NULL; -- refused below
        key_cols := ARRAY(SELECT a.attname::text
                            FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS u (attnum, ord), pg_attribute a
                           WHERE i.indrelid = rel AND i.indisprimary AND u.ord <= i.indnkeyatts
                             AND a.attrelid = rel AND a.attnum = u.attnum ORDER BY u.ord);
        FOR grp IN SELECT s.id, s.operation, array_agg(c ORDER BY u.ord) AS cols
                     FROM unnest(sel) s, unnest(key_cols) WITH ORDINALITY AS u (c, ord)
                    WHERE s.schema = tab.schema AND s."table" = tab."table"
                      AND EXISTS (SELECT FROM unnest(ARRAY[s."before", s."after"]) img
                                   WHERE img <> '{}' AND CASE WHEN img ? c
                                       THEN jsonb_typeof(img -> c) = 'string'
                                            AND (img ->> c = '[masked]' OR img ->> c ~ '^hmac:[0-9a-f]{64}$')
                                       ELSE c = ANY (@extschema@.bemi_masked_columns(rel)) END)
                    GROUP BY s.id, s.operation ORDER BY s.id LOOP
            unkeyed_ids := unkeyed_ids || grp.id;
            unkeyed := unkeyed || format('change %s (%s of %s, key %s masked)', grp.id, grp.operation, rel,
                                         array_to_string(grp.cols, ', '));
        END LOOP;
    END LOOP;
    IF unkeyed <> '{}' THEN
        IF NOT force THEN
            RAISE EXCEPTION 'cannot revert: % change(s) are of rows whose primary key the trail holds masked', cardinality(unkeyed)
                USING ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = 'A masked key (a marker, a hash, or no value) locates no row, and a revert never matches a row by a mask: '
                         || array_to_string(unkeyed[1:20], ', ') || CASE WHEN cardinality(unkeyed) > 20 THEN ', …' ELSE '' END || '.',
                HINT = 'Revert the other changes (bemi_revert_changes), or pass force => true to leave these out (force also overwrites later conflicting changes).';
        END IF;
        RAISE NOTICE 'revert: % change(s) left out, of rows whose primary key the trail holds masked', cardinality(unkeyed)
            USING DETAIL = 'A masked key locates no row: ' || array_to_string(unkeyed[1:20], ', ')
                           || CASE WHEN cardinality(unkeyed) > 20 THEN ', …' ELSE '' END || '.',
                  HINT = 'Revert those rows by hand if they must change.';
        sel := ARRAY(SELECT s FROM unnest(sel) s WHERE s.id <> ALL (unkeyed_ids));
        IF sel = '{}' THEN
            RETURN;
        END IF;
    END IF;

    -- Conflicts: later changes of the same rows (or TRUNCATEs of the table) outside the set.
    FOR tab IN SELECT s.schema, s."table" FROM unnest(sel) s GROUP BY 1, 2 ORDER BY 1, 2 LOOP
        rel := to_regclass(format('%I.%I', tab.schema, tab."table"));
        IF rel IS NULL THEN
            RAISE EXCEPTION 'cannot revert changes of %.%: the table no longer exists', tab.schema, tab."table"
                USING ERRCODE = 'undefined_table';
        END IF;
        conflicts := conflicts || ARRAY(
            SELECT format('change %s (%s of %s row %s)', h.id, h.operation, rel, h.primary_key)
              FROM (SELECT s.primary_key, min(s.id) AS first_id FROM unnest(sel) s
                     WHERE s.schema = tab.schema AND s."table" = tab."table" GROUP BY 1) f
              JOIN @extschema@.bemi_rows_history(rel, ARRAY(SELECT s.primary_key FROM unnest(sel) s
                                                             WHERE s.schema = tab.schema AND s."table" = tab."table")) h
                ON h.primary_key = f.primary_key AND h.id > f.first_id
             WHERE h.id <> ALL (change_ids)
            UNION ALL
            SELECT format('change %s (TRUNCATE of %s)', h.id, rel)
              FROM @extschema@.bemi_table_truncations(rel) h
             WHERE h.id > (SELECT min(s.id) FROM unnest(sel) s WHERE s.schema = tab.schema AND s."table" = tab."table"));
        -- A mask rule made on the key since: the later changes recorded under it do not say which row
        -- they touched, so each is a conflict.
        key_cols := ARRAY(SELECT a.attname::text
                            FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS u (attnum, ord), pg_attribute a
                           WHERE i.indrelid = rel AND i.indisprimary AND u.ord <= i.indnkeyatts
                             AND a.attrelid = rel AND a.attnum = u.attnum ORDER BY u.ord);
        IF key_cols && @extschema@.bemi_masked_columns(rel) THEN
            conflicts := conflicts || ARRAY(
                SELECT format('change %s (%s of %s, a row whose key is masked: it may be one of them)', h.id, h.operation, rel)
                  FROM @extschema@.bemi_table_history(rel, (SELECT min(s.committed_at) FROM unnest(sel) s
                                                             WHERE s.schema = tab.schema AND s."table" = tab."table"),
                                                      'infinity'::timestamptz) h
                 WHERE h.id > (SELECT min(s.id) FROM unnest(sel) s WHERE s.schema = tab.schema AND s."table" = tab."table")
                   AND h.id <> ALL (change_ids) AND h.operation <> 'TRUNCATE'
                   AND EXISTS (SELECT FROM unnest(key_cols) c, unnest(ARRAY[h."before", h."after"]) img
                                WHERE img <> '{}' AND CASE WHEN img ? c
                                    THEN jsonb_typeof(img -> c) = 'string'
                                         AND (img ->> c = '[masked]' OR img ->> c ~ '^hmac:[0-9a-f]{64}$')
                                    ELSE c = ANY (@extschema@.bemi_masked_columns(rel)) END)
                 ORDER BY h.id);
        END IF;
    END LOOP;
    IF conflicts <> '{}' AND NOT force THEN
        RAISE EXCEPTION 'cannot revert: % later change(s) outside the reverted set touched the same rows', cardinality(conflicts)
            USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = 'Conflicts: ' || array_to_string(conflicts[1:20], ', ')
                     || CASE WHEN cardinality(conflicts) > 20 THEN ', …' ELSE '' END || '.',
            HINT = 'Revert the later changes too, or pass force => true to overwrite them.';
    END IF;

    IF NOT dry_run THEN
        -- Called from a statement outside BEGIN … COMMIT, bemi_set_context warns that a local
        -- context has no effect there; inside this function it does (the statement is the
        -- transaction), so the warning is muted for the call.
        saved_min_messages := current_setting('client_min_messages');
        PERFORM set_config('client_min_messages', 'error', true);
        PERFORM @extschema@.bemi_set_context(coalesce(prev_context, '{}') - '_bemi'
            || coalesce(marker, jsonb_build_object('bemi_revert', jsonb_build_object('change_ids', change_ids))), true);
        PERFORM set_config('client_min_messages', saved_min_messages, true);
    END IF;
    -- One statement per row, newest row first (children before parents, as they were written).
    FOR grp IN SELECT s.schema, s."table", s.primary_key, array_agg(s.id ORDER BY s.id) AS ids,
                      (array_agg(s ORDER BY s.id))[1] AS first, (array_agg(s ORDER BY s.id DESC))[1] AS last,
                      ARRAY(SELECT DISTINCT jsonb_object_keys(CASE WHEN s2.operation = 'UPDATE' THEN s2.diff
                                                                   ELSE s2."before" || s2."after" END)
                              FROM unnest(sel) s2
                             WHERE s2.schema = s.schema AND s2."table" = s."table"
                               AND s2.primary_key = s.primary_key) AS changed
                 FROM unnest(sel) s GROUP BY 1, 2, 3 ORDER BY max(s.id) DESC LOOP
        rel := to_regclass(format('%I.%I', grp.schema, grp."table"));
        b := CASE WHEN (grp.first).operation = 'CREATE' THEN NULL ELSE (grp.first)."before" END;
        k := CASE WHEN (grp.last).operation = 'DELETE' THEN NULL ELSE (grp.last)."after" END;
        CONTINUE WHEN b IS NULL AND k IS NULL;
        key_cols := ARRAY(SELECT a.attname::text
                            FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS u (attnum, ord), pg_attribute a
                           WHERE i.indrelid = rel AND i.indisprimary AND u.ord <= i.indnkeyatts
                             AND a.attrelid = rel AND a.attnum = u.attnum ORDER BY u.ord);
        IF key_cols = '{}' THEN
            RAISE EXCEPTION 'cannot revert changes of %: it has no primary key now', rel
                USING ERRCODE = 'feature_not_supported';
        END IF;
        -- Columns that exist now and can be written; columns dropped since are skipped, columns
        -- added since keep their default (INSERT) or their current value (UPDATE).
        -- Columns whose value in the trail is a mask, or that a mask rule covers now and the image
        -- lacks: never written. A marker hides whether an UPDATE changed the value, so it is named
        -- whatever the diff says; a hash that did not change is not.
        masks := ARRAY(SELECT e.key FROM jsonb_each(b) e
                        WHERE jsonb_typeof(e.value) = 'string'
                          AND (e.value #>> '{}' = '[masked]' OR e.value #>> '{}' ~ '^hmac:[0-9a-f]{64}$'));
        held := CASE WHEN b IS NULL THEN '{}' ELSE ARRAY(
                    SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                       AND CASE WHEN b ? a.attname
                                THEN a.attname = ANY (masks)
                                     AND (k IS NULL OR a.attname = ANY (grp.changed) OR b ->> a.attname::text = '[masked]')
                                ELSE a.attname = ANY (@extschema@.bemi_masked_columns(rel)) END
                     ORDER BY a.attnum) END;
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                         AND b ? a.attname AND a.attname <> ALL (held)
                         AND (k IS NULL OR (a.attname = ANY (grp.changed) AND a.attidentity <> 'a'))
                       ORDER BY a.attnum);
        -- No mask reaches jsonb_populate_record either (a marker does not fit an integer column).
        b := b - held - masks;
        k := k - ARRAY(SELECT e.key FROM jsonb_each(k) e
                        WHERE jsonb_typeof(e.value) = 'string'
                          AND (e.value #>> '{}' = '[masked]' OR e.value #>> '{}' ~ '^hmac:[0-9a-f]{64}$'));
        IF held <> '{}' THEN
            RAISE NOTICE 'revert of % row %: masked column(s) % left %', rel, grp.primary_key, held,
                CASE WHEN k IS NULL THEN 'to their default' ELSE 'as they are' END
                USING DETAIL = 'The trail holds a mask (a marker, a hash, or no value), not the value; a revert never writes one.',
                      HINT = 'Set those columns by hand if they must change.';
        END IF;
        result.action := CASE WHEN b IS NULL THEN 'DELETE' WHEN k IS NULL THEN 'INSERT' ELSE 'UPDATE' END;
        CONTINUE WHEN result.action = 'UPDATE' AND cols = '{}';
        result.statement := CASE result.action
            WHEN 'DELETE' THEN format(
                'DELETE FROM %1$s AS t USING jsonb_populate_record(NULL::%1$s, $2) AS k WHERE (%2$s) = (%3$s)', rel,
                (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(key_cols) c),
                (SELECT string_agg(format('k.%I', c), ', ') FROM unnest(key_cols) c))
            WHEN 'INSERT' THEN format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE SELECT %2$s FROM jsonb_populate_record(NULL::%1$s, $1)',
                rel, (SELECT string_agg(format('%I', c), ', ') FROM unnest(cols) c))
            ELSE format(
                'UPDATE %1$s AS t SET (%2$s) = ROW(%3$s) FROM jsonb_populate_record(NULL::%1$s, $1) AS r,'
                ' jsonb_populate_record(NULL::%1$s, $2) AS k WHERE (%4$s) = (%5$s)', rel,
                (SELECT string_agg(format('%I', c), ', ') FROM unnest(cols) c),
                (SELECT string_agg(format('r.%I', c), ', ') FROM unnest(cols) c),
                (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(key_cols) c),
                (SELECT string_agg(format('k.%I', c), ', ') FROM unnest(key_cols) c)) END;
        step_no := step_no + 1;
        result.step := step_no;
        result."table" := rel::text;
        result.primary_key := grp.primary_key;
        result.reverts := grp.ids;
        result.image := b;
        result.key_image := k;
        result.rows := NULL;
        IF NOT dry_run THEN
            BEGIN
                EXECUTE result.statement USING b, k;
            EXCEPTION WHEN data_exception THEN
                RAISE EXCEPTION 'an old image of % does not fit the table''s current columns', rel
                    USING ERRCODE = 'datatype_mismatch', DETAIL = SQLERRM,
                    HINT = 'A column''s type changed since the reverted change; revert it by hand.';
            END;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 AND NOT force THEN
                RAISE EXCEPTION 'cannot revert: row % of % is not where the trail says it is', grp.primary_key, rel
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                    DETAIL = format('%s found no row.', result.statement),
                    HINT = 'A change may not have reached the trail yet; retry, or pass force => true.';
            END IF;
            result.rows := n;
            result.transaction_id := xid(pg_current_xact_id())::text::bigint;
        END IF;
        RETURN NEXT result;
    END LOOP;
    IF NOT dry_run THEN
        PERFORM set_config('client_min_messages', 'error', true);
        PERFORM @extschema@.bemi_set_context(nullif(coalesce(prev_context, '{}') - '_bemi', '{}'), true);
        PERFORM set_config('client_min_messages', saved_min_messages, true);
    END IF;
END $$;
COMMENT ON FUNCTION @extschema@.bemi_revert_changes(bigint[], boolean, boolean, jsonb) IS
    'Revert a set of changes in one transaction; refuses on later conflicting changes unless force; dry_run shows the SQL';

CREATE FUNCTION @extschema@.bemi_revert_change(change_id bigint, force boolean DEFAULT false, dry_run boolean DEFAULT false)
RETURNS SETOF @extschema@.bemi_revert_step
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM @extschema@.bemi_revert_changes(ARRAY[change_id], force, dry_run,
                                                  jsonb_build_object('bemi_revert', jsonb_build_object('change_id', change_id)))
$$;
COMMENT ON FUNCTION @extschema@.bemi_revert_change(bigint, boolean, boolean) IS 'Revert one change (bemi.changes.id)';

CREATE FUNCTION @extschema@.bemi_revert_transaction(transaction_id bigint, force boolean DEFAULT false, dry_run boolean DEFAULT false)
RETURNS SETOF @extschema@.bemi_revert_step
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    ids := ARRAY(SELECT h.id FROM @extschema@.bemi_transaction_history(transaction_id) h);
    IF @extschema@.bemi_unreadable_changes(transaction_id, NULL::jsonb) > 0 THEN
        RAISE EXCEPTION 'cannot revert transaction %: it changed tables you cannot read', transaction_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF ids = '{}' THEN
        RAISE EXCEPTION 'no changes recorded for transaction %', transaction_id USING ERRCODE = 'undefined_object',
            HINT = 'Transaction ids are those of bemi.changes.transaction_id (see bemi_transactions()).';
    END IF;
    RETURN QUERY SELECT * FROM @extschema@.bemi_revert_changes(ids, force, dry_run,
        jsonb_build_object('bemi_revert', jsonb_build_object('transaction_id', transaction_id)));
END $$;
COMMENT ON FUNCTION @extschema@.bemi_revert_transaction(bigint, boolean, boolean) IS 'Revert every change of one transaction';

CREATE FUNCTION @extschema@.bemi_revert_context(context jsonb, force boolean DEFAULT false, dry_run boolean DEFAULT false)
RETURNS SETOF @extschema@.bemi_revert_step
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    IF context IS NULL OR context = '{}' OR jsonb_typeof(context) <> 'object' THEN
        RAISE EXCEPTION 'the context to revert must be a non-empty JSON object, not %', coalesce(context::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example ''{"request_id": "r1"}''.';
    END IF;
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    ids := ARRAY(SELECT h.id FROM @extschema@.bemi_context_history(context) h);
    IF @extschema@.bemi_unreadable_changes(NULL::bigint, context) > 0 THEN
        RAISE EXCEPTION 'cannot revert context %: it changed tables you cannot read', context
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF ids = '{}' THEN
        RAISE EXCEPTION 'no changes recorded with context %', context USING ERRCODE = 'undefined_object';
    END IF;
    RETURN QUERY SELECT * FROM @extschema@.bemi_revert_changes(ids, force, dry_run,
        jsonb_build_object('bemi_revert', jsonb_build_object('context', context)));
END $$;
COMMENT ON FUNCTION @extschema@.bemi_revert_context(jsonb, boolean, boolean) IS
    'Revert every change whose context contains the given object (a request, a user''s session …)';

-- A table back to a moment: revert every change of it committed after the moment. Rows nobody
-- touched since are left alone; a TRUNCATE since is refused (the rows it removed are not keyed).
CREATE FUNCTION @extschema@.bemi_revert_table(tbl regclass, at timestamptz, force boolean DEFAULT false,
                                  dry_run boolean DEFAULT false)
RETURNS SETOF @extschema@.bemi_revert_step
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
    ids bigint[];
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    target := @extschema@.bemi_time_travel_target((SELECT reltype FROM pg_class WHERE oid = tbl)::regtype, at);
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    ids := ARRAY(SELECT h.id FROM @extschema@.bemi_table_history(tbl, at, 'infinity'::timestamptz) h WHERE h.committed_at > at);
    RETURN QUERY SELECT * FROM @extschema@.bemi_revert_changes(ids, force, dry_run,
        jsonb_build_object('bemi_revert', jsonb_build_object('table', tbl::text, 'to', at)));
END $$;
COMMENT ON FUNCTION @extschema@.bemi_revert_table(regclass, timestamptz, boolean, boolean) IS
    'Bring a table back to how it was at a moment, by reverting every change of it since';

-- Roll-forward: re-apply what a revert undid, by reverting the revert's transaction. Later
-- changes to the same rows are conflicts, exactly as for a revert.
CREATE FUNCTION @extschema@.bemi_roll_forward(revert_transaction_id bigint, force boolean DEFAULT false,
                                  dry_run boolean DEFAULT false)
RETURNS SETOF @extschema@.bemi_revert_step
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    ids := ARRAY(SELECT h.id FROM @extschema@.bemi_transaction_history(revert_transaction_id) h
                  WHERE h.context ? 'bemi_revert');
    IF ids = '{}' THEN
        RAISE EXCEPTION 'transaction % made no revert', revert_transaction_id USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass the transaction_id a bemi_revert_… function returned.';
    END IF;
    RETURN QUERY SELECT * FROM @extschema@.bemi_revert_changes(ids, force, dry_run,
        jsonb_build_object('bemi_roll_forward', jsonb_build_object('transaction_id', revert_transaction_id)));
END $$;
COMMENT ON FUNCTION @extschema@.bemi_roll_forward(bigint, boolean, boolean) IS
    'Re-apply the changes a revert undid (the revert''s transaction_id), with the same conflict checks';
------------------------------------------------------------------------------------------------
-- Retention: bemi.changes partitioned by committed_at, old partitions dropped
------------------------------------------------------------------------------------------------
-- bemi_set_retention() turns it on. The worker then keeps partitions made ahead of time and
-- drops those older than the retention (bemi._maintain_changes, about every minute). A change
-- whose commit time has no partition of its own lands in bemi.changes_default, never nowhere:
-- when a partition is made for its range later, it is moved there first.

-- No row: partitions are not managed and every change stays in bemi.changes_default.
CREATE TABLE bemi.retention (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    retention          interval CHECK (retention > interval '0'),
    partition_interval interval NOT NULL CHECK (partition_interval >= interval '1 second'),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON bemi.retention FROM PUBLIC;
GRANT SELECT ON bemi.retention TO bemi_reader;
SELECT pg_catalog.pg_extension_config_dump('bemi.retention', '');

-- The partitions of bemi.changes other than the default, with their bounds.
CREATE FUNCTION bemi._partitions(OUT part regclass, OUT from_time timestamptz, OUT to_time timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
    SELECT c.oid::regclass,
           CASE WHEN b[1] = 'MINVALUE' THEN '-infinity' ELSE b[2]::timestamptz END,
           CASE WHEN b[3] = 'MAXVALUE' THEN 'infinity' ELSE b[4]::timestamptz END
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
           regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        '^FOR VALUES FROM \((MINVALUE|''([^'']*)'')\) TO \((MAXVALUE|''([^'']*)'')\)$') b
     WHERE i.inhparent = 'bemi.changes'::regclass AND b IS NOT NULL
     ORDER BY 2
$$;

-- The start of the partition holding `at`: whole months for intervals of months, else a
-- multiple of the interval since 2000-01-01 UTC (so '1 day' gives UTC days).
CREATE FUNCTION bemi._partition_start(at timestamptz, step interval) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    months int := extract(year FROM step)::int * 12 + extract(month FROM step)::int;
    m int;
BEGIN
    IF months = 0 THEN
        RETURN date_bin(step, at, timestamptz '2000-01-01 00:00:00+00');
    END IF;
    m := (extract(year FROM at)::int - 2000) * 12 + extract(month FROM at)::int - 1;
    RETURN timestamptz '2000-01-01 00:00:00+00' + make_interval(months => m - ((m % months) + months) % months);
END $$;

-- Makes the partition [lo, hi), first moving into it the changes bemi.changes_default holds for
-- that range. The new table takes no lock that stops reading bemi.changes; the default
-- partition is locked briefly.
CREATE FUNCTION bemi._make_partition(lo timestamptz, hi timestamptz) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    name text := 'changes_' || to_char(lo, CASE WHEN lo = date_trunc('day', lo) THEN 'YYYYMMDD'
                                                ELSE 'YYYYMMDD"_"HH24MISS' END);
    moved bigint;
BEGIN
    LOCK TABLE bemi.changes IN SHARE UPDATE EXCLUSIVE MODE;
    LOCK TABLE bemi.changes_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE bemi.%I (LIKE bemi.changes_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)', name);
    EXECUTE format('WITH moved AS (DELETE FROM bemi.changes_default WHERE committed_at >= $1 AND committed_at < $2 RETURNING *)'
                   ' INSERT INTO bemi.%I SELECT * FROM moved', name) USING lo, hi;
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE bemi.changes ATTACH PARTITION bemi.%I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    RETURN format('created bemi.%I for [%s, %s)', name, lo, hi)
        || CASE WHEN moved > 0 THEN format(', moving %s changes out of bemi.changes_default', moved) ELSE '' END;
END $$;

-- One round of upkeep at time `now`: partitions past the retention dropped, then partitions made
-- for the current and the next intervals (and for any gap since the newest one, so that a worker
-- that was down finds room for its backlog). A step that cannot get its locks within lock_timeout
-- is left for the next round: waiting longer would hold up readers queued behind the lock.
-- Returns what it did, and when it wants to run again.
CREATE FUNCTION bemi._maintain_changes(now timestamptz, OUT actions text[], OUT next_in interval)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET lock_timeout = '500ms' AS $$
DECLARE
    cfg bemi.retention;
    lo timestamptz;
    hi timestamptz;
    horizon timestamptz;
    cutoff timestamptz;
    newest timestamptz;
    p record;
    part text;
    n bigint;
BEGIN
    actions := '{}';
    next_in := '5 seconds';  -- not set up: look again soon, for bemi_set_retention()
    SELECT * INTO cfg FROM bemi.retention;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- One round at a time (the worker's, a user's): decisions are made under this lock.
    BEGIN
        LOCK TABLE bemi.changes IN SHARE UPDATE EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        actions := ARRAY['bemi.changes is busy; upkeep is tried again later'];
        next_in := '10 seconds';
        RETURN;
    END;
    next_in := least(greatest(cfg.partition_interval / 4, interval '1 second'), interval '1 minute');

    -- Where the partitions end, before retention drops any (see the gap below).
    SELECT max(to_time) INTO newest FROM bemi._partitions() WHERE to_time < 'infinity';

    -- Drops first: they need bemi.changes itself locked, and taking that lock before any of
    -- its partitions keeps the order readers use (no deadlock with a reader).
    IF cfg.retention IS NOT NULL THEN
        -- Time travel cannot reach behind the cutoff any more: say so before anything goes.
        cutoff := now - cfg.retention;
        FOR p IN SELECT * FROM bemi._partitions() WHERE to_time <= cutoff LOOP
            part := p.part::text;
            BEGIN
                PERFORM bemi._trail_starts_at(p.to_time);
                EXECUTE format('ALTER TABLE bemi.changes DETACH PARTITION %s', part);
                EXECUTE format('DROP TABLE %s', part);
                actions := actions || format('dropped %s [%s, %s): older than the retention of %s', part, p.from_time, p.to_time, cfg.retention);
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                actions := actions || format('could not lock bemi.changes to drop %s; trying again later', part);
                EXIT;
            END;
        END LOOP;
    END IF;

    -- Partitions from the current interval (or the end of the newest partition, if that is
    -- later than the retention's cutoff) to three intervals (and at least 15 seconds) ahead.
    lo := bemi._partition_start(now, cfg.partition_interval);
    IF newest IS NOT NULL AND newest < lo THEN
        lo := greatest(newest, bemi._partition_start(now - coalesce(cfg.retention, interval '0'), cfg.partition_interval));
    END IF;
    horizon := now + greatest(3 * cfg.partition_interval, interval '15 seconds');
    WHILE lo < horizon LOOP
        hi := bemi._partition_start(lo, cfg.partition_interval) + cfg.partition_interval;
        SELECT * INTO p FROM bemi._partitions() WHERE from_time <= lo AND to_time > lo;
        IF FOUND THEN
            lo := p.to_time;
            CONTINUE;
        END IF;
        -- Existing partitions made with another interval keep their bounds: fill around them.
        hi := least(hi, coalesce((SELECT min(from_time) FROM bemi._partitions() WHERE from_time > lo), hi));
        BEGIN
            actions := actions || bemi._make_partition(lo, hi);
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            actions := actions || format('could not lock bemi.changes to make a partition for [%s, %s); trying again later', lo, hi);
            EXIT;
        END;
        lo := hi;
    END LOOP;

    IF cfg.retention IS NOT NULL THEN
        -- Old changes in the default partition (from before retention was set up): in slices, so
        -- that one round stays short.
        IF EXISTS (SELECT 1 FROM bemi.changes_default WHERE committed_at < cutoff) THEN
            PERFORM bemi._trail_starts_at(cutoff);
            DELETE FROM bemi.changes_default
             WHERE ctid = ANY (ARRAY(SELECT ctid FROM bemi.changes_default WHERE committed_at < cutoff LIMIT 100000));
            GET DIAGNOSTICS n = ROW_COUNT;
            actions := actions || format('deleted %s changes older than %s from bemi.changes_default', n, cutoff);
            IF n = 100000 THEN
                next_in := '1 second';
            END IF;
        END IF;
    END IF;
END $$;

-- Changes before `at` are going: time travel starts there now, and no table can be rebuilt from
-- the trail alone (their first rows may be in what is dropped).
CREATE FUNCTION bemi._trail_starts_at(at timestamptz) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE bemi.tracking
       SET started_at = at,
           nonempty_tables = ARRAY(SELECT t.name FROM bemi._user_tables() t WHERE NOT t.is_partition)
     WHERE started_at < at
$$;

-- Turn retention on, change it, or (retention NULL) keep changes for ever in partitions.
CREATE FUNCTION @extschema@.bemi_set_retention(retention interval, partition_interval interval DEFAULT '1 day')
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF partition_interval IS NULL THEN
        RAISE EXCEPTION 'partition_interval must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Use bemi_reset_retention() to stop managing partitions.';
    END IF;
    IF partition_interval < interval '1 second' THEN
        RAISE EXCEPTION 'partition_interval must be at least 1 second, not %', partition_interval
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF date_trunc('month', partition_interval) NOT IN (interval '0', partition_interval) THEN
        RAISE EXCEPTION 'partition_interval % mixes months with days or hours', partition_interval
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use whole months (''1 month'') or a fixed length (''7 days'').';
    END IF;
    IF retention <= interval '0' THEN
        RAISE EXCEPTION 'retention must be positive, not %', retention USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass NULL to keep changes for ever.';
    END IF;
    IF retention < partition_interval THEN
        RAISE EXCEPTION 'retention % is shorter than partition_interval %', retention, partition_interval
            USING ERRCODE = 'invalid_parameter_value',
            DETAIL = 'Whole partitions are dropped: a partition is kept until all of it is older than the retention.',
            HINT = 'Use a shorter partition_interval.';
    END IF;
    INSERT INTO bemi.retention (retention, partition_interval) VALUES (retention, partition_interval)
        ON CONFLICT (singleton) DO UPDATE
        SET retention = excluded.retention, partition_interval = excluded.partition_interval, updated_at = now();
    RETURN QUERY SELECT unnest((bemi._maintain_changes(now())).actions);
END $$;
COMMENT ON FUNCTION @extschema@.bemi_set_retention(interval, interval) IS
    'Partition bemi.changes by committed_at and drop changes older than retention (NULL: keep them)';

CREATE FUNCTION @extschema@.bemi_reset_retention() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM bemi.retention;
$$;
COMMENT ON FUNCTION @extschema@.bemi_reset_retention() IS
    'Stop making and dropping partitions; existing partitions stay, new changes go to bemi.changes_default';

-- Run a round of upkeep now (the worker does it on its own).
CREATE FUNCTION @extschema@.bemi_maintain_changes() RETURNS SETOF text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT unnest((bemi._maintain_changes(now())).actions);
$$;
COMMENT ON FUNCTION @extschema@.bemi_maintain_changes() IS
    'Make the partitions bemi.changes needs now and apply the retention; returns what it did';

-- The partitions of the trail, oldest first.
CREATE FUNCTION @extschema@.bemi_partitions(OUT partition_name text, OUT from_time timestamptz, OUT to_time timestamptz,
                                OUT bytes bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'bemi.changes_default', NULL::timestamptz, NULL::timestamptz, pg_total_relation_size('bemi.changes_default')
    UNION ALL
    SELECT part::text, from_time, to_time, pg_total_relation_size(part) FROM bemi._partitions()
$$;
COMMENT ON FUNCTION @extschema@.bemi_partitions() IS 'The partitions of bemi.changes, with their ranges and sizes';

REVOKE ALL ON FUNCTION @extschema@.bemi_set_retention(interval, interval), @extschema@.bemi_reset_retention(),
    @extschema@.bemi_maintain_changes(), @extschema@.bemi_partitions(), bemi._maintain_changes(timestamptz), bemi._make_partition(timestamptz, timestamptz),
    bemi._trail_starts_at(timestamptz), bemi._partitions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_partitions() TO bemi_reader;
------------------------------------------------------------------------------------------------
-- Start capture: this must stay the last statement of the script.
------------------------------------------------------------------------------------------------
-- Starts this database's worker while CREATE EXTENSION is still open: the worker's slot becomes
-- consistent as this transaction commits, so no write after it is missed.
CREATE FUNCTION bemi._start_worker() RETURNS void
    AS 'MODULE_PATHNAME', 'bemi_start_worker' LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION bemi._start_worker() FROM PUBLIC;
SELECT bemi._start_worker();
