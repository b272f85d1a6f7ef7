-- bemi 0.2.0 -> 0.3.0. Run by ALTER EXTENSION bemi UPDATE, as the extension's owner (a
-- superuser), in every database that has bemi. Released: never edit this file; a later change is
-- a new step bemi--0.3.0--B.sql, even one that changes no SQL.
-- It brings a 0.2.0 database to exactly the schema of a fresh 0.3.0 install and keeps the trail
-- (no table changes). 0.3.0 moved the SQL functions' C code to C++ behind the same symbols, so
-- the C functions stay as they are. What changes in SQL:
--   - bemi._boundary_test(text) is gone: a test entry point, installed in every database by
--     mistake (the boundary test declares its own);
--   - bemi_primary_key(regclass, jsonb) is new: the output plugin's primary-key rule, which time
--     travel now uses (bemi_time_travel_target's key_sql) instead of a copy of it in SQL;
--   - the history functions' column list is written once in the source (the Makefile fills it
--     in); bemi_table_truncations computes its diff like the others (the same '{}').
-- Their definitions below are 0.3.0's (ext/*.sql at its release); functions whose signatures
-- hold are replaced in place (CREATE OR REPLACE), so that grants others made on them stay.
\echo Use "ALTER EXTENSION bemi UPDATE TO '0.3.0'" to load this file. \quit

-- The same rule as the install script: names resolve only in pg_catalog (docs/security.md, "Names").
SET LOCAL search_path = pg_catalog, pg_temp;

DROP FUNCTION bemi._boundary_test(text);

-- The primary key of a row image of a table, as bemi.changes.primary_key holds it: the output
-- plugin's own rule (src/decoding/image.cpp, BemiPrimaryKey), for SQL that matches rows to the
-- trail (time travel). NULL when the table has no primary key.
CREATE FUNCTION @extschema@.bemi_primary_key(tbl regclass, image jsonb) RETURNS text
    AS 'MODULE_PATHNAME', 'bemi_key_text' LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.bemi_primary_key(regclass, jsonb) IS
    'The primary key of a row image of tbl, as bemi.changes.primary_key holds it';

CREATE OR REPLACE FUNCTION @extschema@.bemi_row_history(tbl regclass, primary_key text) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_row_history.tbl) t,
           LATERAL bemi._row_trail(bemi_row_history.tbl, t.schema_name, t.table_name,
                                   ARRAY[bemi_row_history.primary_key]) c
     ORDER BY c.id DESC;
END;

CREATE OR REPLACE FUNCTION @extschema@.bemi_rows_history(tbl regclass, primary_keys text[]) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_rows_history.tbl) t,
           LATERAL bemi._row_trail(bemi_rows_history.tbl, t.schema_name, t.table_name, bemi_rows_history.primary_keys) c
     ORDER BY c.id DESC;
END;

CREATE OR REPLACE FUNCTION @extschema@.bemi_table_history(tbl regclass, since timestamptz DEFAULT '-infinity',
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

CREATE OR REPLACE FUNCTION @extschema@.bemi_table_truncations(tbl regclass) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._readable_table(bemi_table_truncations.tbl) t,
           LATERAL bemi._truncate_trail(bemi_table_truncations.tbl, t.schema_name, t.table_name) c
     ORDER BY c.id DESC;
END;

CREATE OR REPLACE FUNCTION @extschema@.bemi_transaction_history(transaction_id bigint) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._transaction_trail(bemi._caller(), bemi_transaction_history.transaction_id) c
     ORDER BY c.id DESC;
END;

CREATE OR REPLACE FUNCTION @extschema@.bemi_context_history(context jsonb) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._context_trail(bemi._caller(), bemi_context_history.context) c
     ORDER BY c.id DESC;
END;

CREATE OR REPLACE FUNCTION @extschema@.bemi_changes(ids bigint[]) RETURNS SETOF @extschema@.bemi_change
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"),
           c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position
      FROM bemi._id_trail(bemi._caller(), bemi_changes.ids) c
     ORDER BY c.id DESC;
END;

CREATE OR REPLACE FUNCTION @extschema@.bemi_time_travel_target(row_type regtype, at timestamptz, OUT tbl regclass,
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
