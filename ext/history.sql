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
    SELECT @BEMI_CHANGE_COLUMNS@
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
    SELECT @BEMI_CHANGE_COLUMNS@
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
    SELECT @BEMI_CHANGE_COLUMNS@
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
    SELECT @BEMI_CHANGE_COLUMNS@
      FROM bemi._readable_table(bemi_table_truncations.tbl) t,
           LATERAL bemi._truncate_trail(bemi_table_truncations.tbl, t.schema_name, t.table_name) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_table_truncations(regclass) IS 'The recorded TRUNCATEs of one table, newest first';

CREATE FUNCTION @extschema@.bemi_table_schema_changes(tbl regclass) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT @BEMI_CHANGE_COLUMNS@
      FROM bemi._readable_table(bemi_table_schema_changes.tbl) t,
           LATERAL bemi._schema_trail(bemi_table_schema_changes.tbl, t.schema_name, t.table_name) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_table_schema_changes(regclass) IS
    'The recorded schema changes (operation DDL) of one table under its current name, newest first';

-- Changes of tables the caller cannot read are left out of the following three.
CREATE FUNCTION @extschema@.bemi_transaction_history(transaction_id bigint) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT @BEMI_CHANGE_COLUMNS@
      FROM bemi._transaction_trail(bemi._caller(), bemi_transaction_history.transaction_id) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_transaction_history(bigint) IS
    'Every recorded change of one transaction (bemi.changes.transaction_id), newest first';

CREATE FUNCTION @extschema@.bemi_context_history(context jsonb) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT @BEMI_CHANGE_COLUMNS@
      FROM bemi._context_trail(bemi._caller(), bemi_context_history.context) c
     ORDER BY c.id DESC;
END;
COMMENT ON FUNCTION @extschema@.bemi_context_history(jsonb) IS
    'Every recorded change whose context contains the given object, newest first';

CREATE FUNCTION @extschema@.bemi_changes(ids bigint[]) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT @BEMI_CHANGE_COLUMNS@
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

