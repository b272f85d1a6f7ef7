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

-- The source the readers below are narrowed to, from the setting bemi.source (issue 16: a
-- destination holds the changes of many sources): '' or unset, every change; 'local', the changes
-- captured by this server's own worker; '<system identifier>' or '<system identifier>/<database>',
-- the changes that source sent here. A reader keeps change c when
--   NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
--                      AND (s.database IS NULL OR c.database = s.database)).
CREATE FUNCTION bemi._source(OUT narrowed boolean, OUT system_id text, OUT database text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT v IS NOT NULL,
           CASE WHEN v = 'local' THEN NULL ELSE nullif(split_part(v, '/', 1), '') END,
           CASE WHEN strpos(v, '/') > 0 THEN nullif(substr(v, strpos(v, '/') + 1), '') END
      FROM (SELECT nullif(current_setting('bemi.source', true), '') AS v) s
$$;

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
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM bemi._source();
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c."table" = p_table AND c.primary_key = ANY (p_keys) AND c.schema = p_schema
           AND (c.table_oid = p_table_oid OR bemi._recorded_oid(c, k) IS NULL)
           AND (NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
                                   AND (s.database IS NULL OR c.database = s.database)));
END $$;

-- Changes of one table the caller may read, in a time range. Dynamic SQL so that every call is
-- planned with its own bounds: a narrow range uses the BRIN index, a table's whole life the btree.
CREATE FUNCTION bemi._table_time_trail(p_table_oid oid, p_schema text, p_table text,
                                       p_since timestamptz, p_until timestamptz)
RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM bemi._source();
    RETURN QUERY EXECUTE
        'SELECT c.* FROM bemi.changes c, bemi.tracking k'
        ' WHERE c."table" = $3 AND c.schema = $4 AND c.committed_at BETWEEN $1 AND $2'
        '   AND (c.table_oid = $5 OR bemi._recorded_oid(c, k) IS NULL)'
        '   AND (NOT $6 OR (c.source_system_id IS NOT DISTINCT FROM $7 AND ($8 IS NULL OR c.database = $8)))'
        USING p_since, p_until, p_table, p_schema, p_table_oid, s.narrowed, s.system_id, s.database;
END $$;

-- Changes of all the tables the reader may read, in a time range.
CREATE FUNCTION bemi._time_trail(p_reader oid, p_since timestamptz, p_until timestamptz)
RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM bemi._source();
    RETURN QUERY EXECUTE
        'SELECT c.* FROM bemi.changes c, bemi.tracking k WHERE c.committed_at BETWEEN $2 AND $3'
        '   AND bemi._may_read($1, bemi._recorded_oid(c, k), c.schema, c."table")'
        '   AND (NOT $4 OR (c.source_system_id IS NOT DISTINCT FROM $5 AND ($6 IS NULL OR c.database = $6)))'
        USING p_reader, p_since, p_until, s.narrowed, s.system_id, s.database;
END $$;

-- TRUNCATEs of one table the caller may read (primary_key is NULL for them: the row-history index).
CREATE FUNCTION bemi._truncate_trail(p_table_oid oid, p_schema text, p_table text) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM bemi._source();
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c."table" = p_table AND c.primary_key IS NULL AND c.schema = p_schema AND c.operation = 'TRUNCATE'
           AND (c.table_oid = p_table_oid OR bemi._recorded_oid(c, k) IS NULL)
           AND (NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
                                   AND (s.database IS NULL OR c.database = s.database)));
END $$;

-- Schema changes (operation DDL) of one table the caller may read (primary_key is NULL for them:
-- the row-history index), for time travel across them.
CREATE FUNCTION bemi._schema_trail(p_table_oid oid, p_schema text, p_table text) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM bemi._source();
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c."table" = p_table AND c.primary_key IS NULL AND c.schema = p_schema AND c.operation = 'DDL'
           AND (c.table_oid = p_table_oid OR bemi._recorded_oid(c, k) IS NULL)
           AND (NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
                                   AND (s.database IS NULL OR c.database = s.database)));
END $$;

CREATE FUNCTION bemi._transaction_trail(p_reader oid, p_transaction_id bigint) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM bemi._source();
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c.transaction_id = p_transaction_id
           AND bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table")
           AND (NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
                                   AND (s.database IS NULL OR c.database = s.database)));
END $$;


CREATE FUNCTION bemi._context_trail(p_reader oid, p_context jsonb) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
    xids bigint[];
    times timestamptz[];
BEGIN
    SELECT * INTO s FROM bemi._source();
    IF p_context OPERATOR(pg_catalog.=) '{}'::jsonb THEN
        -- Every context contains {}: every change, also those with an empty context.
        RETURN QUERY
            SELECT c.* FROM bemi.changes c, bemi.tracking k
             WHERE bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table")
               AND (NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
                                       AND (s.database IS NULL OR c.database = s.database)));
        RETURN;
    END IF;
    -- The transactions with such a context and their commit times, from bemi.contexts' index;
    -- then their changes by bemi.changes' transaction index (the commit times prune partitions),
    -- each change's own context checked. Two statements, not a join: without statistics (a fresh
    -- restore, bemi.contexts not analyzed yet) the planner would join the whole trail.
    SELECT array_agg(DISTINCT x.transaction_id), array_agg(DISTINCT x.committed_at) INTO xids, times
      FROM bemi.contexts x WHERE x.context @> p_context;
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c.transaction_id = ANY (xids) AND c.committed_at = ANY (times) AND c.context @> p_context
           AND bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table")
           AND (NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
                                   AND (s.database IS NULL OR c.database = s.database)));
END $$;

CREATE FUNCTION bemi._id_trail(p_reader oid, p_ids bigint[]) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM bemi._source();
    RETURN QUERY
        SELECT c.* FROM bemi.changes c, bemi.tracking k
         WHERE c.id = ANY (p_ids)
           AND bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table")
           AND (NOT s.narrowed OR (c.source_system_id IS NOT DISTINCT FROM s.system_id
                                   AND (s.database IS NULL OR c.database = s.database)));
END $$;

-- How many changes of a transaction or a context the reader may not read: a revert refuses to do
-- half a job. It tells nothing of those changes but their number.
CREATE FUNCTION bemi._unreadable_count(p_reader oid, p_transaction_id bigint, p_context jsonb) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    xids bigint[];
    times timestamptz[];
BEGIN
    n := (SELECT count(*) FROM bemi.changes c, bemi.tracking k
           WHERE c.transaction_id = p_transaction_id
             AND NOT bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table"));
    IF p_context OPERATOR(pg_catalog.=) '{}'::jsonb THEN
        n := n + (SELECT count(*) FROM bemi.changes c, bemi.tracking k
                   WHERE NOT bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table"));
    ELSIF p_context IS NOT NULL THEN
        -- As bemi._context_trail finds them.
        SELECT array_agg(DISTINCT x.transaction_id), array_agg(DISTINCT x.committed_at) INTO xids, times
          FROM bemi.contexts x WHERE x.context @> p_context;
        n := n + (SELECT count(*) FROM bemi.changes c, bemi.tracking k
                   WHERE c.transaction_id = ANY (xids) AND c.committed_at = ANY (times) AND c.context @> p_context
                     AND NOT bemi._may_read(p_reader, bemi._recorded_oid(c, k), c.schema, c."table"));
    END IF;
    RETURN n;
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
                                                                '_may_read', '_readable_table', '_recorded_oid',
                                                                '_source')) LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', fn);
    END LOOP;
END $$;

