------------------------------------------------------------------------------------------------
-- Using the trail: history, time travel, grouping, reversion (docs/sql-reference.md)
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
-- Who may read which changes (src/fn/readable.c)
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
-- History
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

-- One change as the history functions return it: a bemi.changes row with its diff.
CREATE TYPE @extschema@.bemi_change AS (
    id bigint, "schema" text, "table" text, primary_key text, operation text, diff jsonb,
    "before" jsonb, "after" jsonb, context jsonb, committed_at timestamptz, transaction_id bigint,
    position pg_lsn);

CREATE FUNCTION @extschema@.bemi_row_history(tbl regclass, primary_key text) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
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
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
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
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
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
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, '{}'::jsonb,
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_table_truncations.tbl) t,
           LATERAL bemi._truncate_trail(bemi_table_truncations.tbl, t.schema_name, t.table_name) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_table_truncations(regclass) IS 'The recorded TRUNCATEs of one table, newest first';

-- Changes of tables the caller cannot read are left out of the following three.
CREATE FUNCTION @extschema@.bemi_transaction_history(transaction_id bigint) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._transaction_trail(bemi._caller(), bemi_transaction_history.transaction_id) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_transaction_history(bigint) IS
    'Every recorded change of one transaction (bemi.changes.transaction_id), newest first';

CREATE FUNCTION @extschema@.bemi_context_history(context jsonb) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._context_trail(bemi._caller(), bemi_context_history.context) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_context_history(jsonb) IS
    'Every recorded change whose context contains the given object, newest first';

CREATE FUNCTION @extschema@.bemi_changes(ids bigint[]) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
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
-- Time travel
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
-- does (alias t), and the column list of the key. Checks everything time travel needs.
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
    SELECT array_agg(a.attname::text ORDER BY k.ord),
           -- A plain cast renders these types as the plugin does, and costs much less.
           CASE WHEN count(*) = 1 AND min(a.atttypid::int) = max(a.atttypid::int)
                 AND min(a.atttypid::int) IN ('int2'::regtype::int, 'int4'::regtype::int, 'int8'::regtype::int,
                                              'text'::regtype::int, 'varchar'::regtype::int, 'uuid'::regtype::int)
                THEN format('(t.%I)::text', min(a.attname))
                -- A type whose JSON conversion would run an untrusted role's code is recorded as
                -- its output text: format('%s') gives that without calling any of its casts.
                WHEN count(*) = 1 AND bool_or(@extschema@.bemi_json_is_text(a.atttypid::regtype))
                THEN format('format(''%%s'', t.%I)', min(a.attname))
                WHEN count(*) = 1 THEN format('(to_jsonb(t.%I) #>> ''{}'')', min(a.attname))
                ELSE format('(jsonb_build_array(%s)::text)',
                            string_agg(CASE WHEN @extschema@.bemi_json_is_text(a.atttypid::regtype)
                                            THEN format('format(''%%s'', t.%I)', a.attname)
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
BEGIN
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    IF NOT EXISTS (SELECT 1 FROM @extschema@.bemi_table_truncations(target.tbl) WHERE committed_at > at) THEN
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
                SELECT r.* FROM firsts f, jsonb_populate_record(NULL::%1$s, f."before") r
                 WHERE f.operation <> 'CREATE'$q$, target.tbl, target.key_sql)
                USING target.tbl, at;
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
    BEGIN
        RETURN QUERY EXECUTE format($q$
            SELECT r.* FROM (
                SELECT DISTINCT ON (h.primary_key) h.operation, h."after"
                  FROM @extschema@.bemi_table_history($1, $3, $2) h
                 WHERE h.id > $4 AND h.operation <> 'TRUNCATE'
                 ORDER BY h.primary_key, h.id DESC) l,
                jsonb_populate_record(NULL::%1$s, l."after") r
             WHERE l.operation <> 'DELETE'$q$, target.tbl)
            USING target.tbl, at, base_at, base_id;
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
BEGIN
    IF key IS NULL THEN
        RAISE EXCEPTION 'the primary key must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    BEGIN
        SELECT h.operation, h."before" INTO change FROM @extschema@.bemi_row_history(target.tbl, key) h
         WHERE h.committed_at > at ORDER BY h.id LIMIT 1;
        IF FOUND THEN
            -- The first change after the moment knows the row as it was (or that it did not exist).
            RETURN CASE WHEN change.operation = 'CREATE' THEN NULL
                        ELSE jsonb_populate_record(tbl, change."before") END;
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
        SELECT h.operation, h."after" INTO change FROM @extschema@.bemi_row_history(target.tbl, key) h
         WHERE h.committed_at <= at AND h.id > base_id ORDER BY h.id DESC LIMIT 1;
        RETURN CASE WHEN NOT FOUND OR change.operation = 'DELETE' THEN NULL
                    ELSE jsonb_populate_record(tbl, change."after") END;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'an old image of % does not fit the table''s current columns', target.tbl
            USING ERRCODE = 'datatype_mismatch', DETAIL = SQLERRM,
            HINT = 'A column''s type changed since; read the images with bemi_row_history instead.';
    END;
END $$;
COMMENT ON FUNCTION @extschema@.bemi_row_as_of(anyelement, anycompatible, timestamptz) IS
    'bemi_row_as_of(NULL::tbl, key, moment): one row as it was at that moment, NULL if it did not exist';

------------------------------------------------------------------------------------------------
-- Reversion
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
    b jsonb;
    k jsonb;
    result @extschema@.bemi_revert_step;
    n bigint;
    prev_context jsonb := @extschema@.bemi_context();
    saved_min_messages text;
    step_no integer := 0;
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
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                         AND b ? a.attname
                         AND (k IS NULL OR (a.attname = ANY (grp.changed) AND a.attidentity <> 'a'))
                       ORDER BY a.attnum);
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
