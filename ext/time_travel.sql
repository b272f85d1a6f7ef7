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
    -- A snapshot finished by the moment recorded every row the table held (docs/guarantees.md,
    -- "Snapshots"): from then on the trail alone rebuilds it, as if it had been empty at the start.
    IF had_rows_at_start AND @extschema@.bemi_snapshot_finished_at(tbl, at) >= started THEN
        had_rows_at_start := false;
    END IF;
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

-- An image recorded while the table had the columns `columns` ([{attnum, name, type}], the
-- "before" columns of the first DDL row after it), in the table's current shape: each value under
-- the name its column (by attnum) has now; a column dropped since is left out, one added since is
-- absent (reads as NULL); a value whose column's type changed is cast from the old type to the new
-- one, or left out (NULL) with a WARNING when that fails. NULL columns: the image as it is. Runs as
-- the caller (the casts are those the caller may run).
CREATE FUNCTION @extschema@.bemi_current_shape(tbl regclass, image jsonb, columns jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb := '{}';
    col record;
    v jsonb;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'bemi_current_shape needs a table' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF columns IS NULL OR image IS NULL OR image = '{}' THEN
        RETURN image;
    END IF;
    IF jsonb_typeof(columns) <> 'array' OR jsonb_typeof(image) <> 'object' THEN
        RAISE EXCEPTION 'bemi_current_shape takes an image (a JSON object) and its columns (a JSON array of {attnum, name, type})'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR col IN SELECT o->>'name' AS old_name, o->>'type' AS old_type, a.attname::text AS name,
                      format_type(a.atttypid, a.atttypmod) AS type
                 FROM jsonb_array_elements(columns) o
                 JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = (o->>'attnum')::int2 AND NOT a.attisdropped
                WHERE image ? (o->>'name') LOOP
        v := image -> col.old_name;
        IF col.type <> col.old_type AND jsonb_typeof(v) <> 'null' THEN
            BEGIN
                EXECUTE format('SELECT pg_catalog.to_jsonb(($1 OPERATOR(pg_catalog.#>>) ''{}''::pg_catalog.text[])::%s::%s)',
                               col.old_type::pg_catalog.regtype, col.type) INTO v USING v;
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'a value of column % of % (recorded as %) does not convert to its type now (%), read as NULL',
                    quote_ident(col.name), tbl, col.old_type, col.type
                    USING DETAIL = SQLERRM;
                CONTINUE;
            END;
        END IF;
        result := result || jsonb_build_object(col.name, v);
    END LOOP;
    RETURN result;
END $$;
COMMENT ON FUNCTION @extschema@.bemi_current_shape(regclass, jsonb, jsonb) IS
    'An image recorded with the given columns, in the table''s current columns (renames, drops, type changes)';

-- A table as it was at a moment, as rows of its own type: the current rows that no change
-- after the moment touched, plus the before-image of the first change after the moment of every
-- row that was changed since (unless that change created the row; a SNAPSHOT is no change). After
-- a TRUNCATE later than the moment, the current rows say nothing: the state is replayed from the
-- trail instead, which works when the table was empty at a recorded TRUNCATE before the moment or
-- when tracking began, or when a snapshot (bemi_snapshot) finished before the moment.
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
    -- Schema changes since the images used (columns renamed, dropped, retyped): [{id, columns}],
    -- the columns before each; an image is read in the table's current shape by the columns of the
    -- first one after it (bemi_current_shape). NULL, the common case: images are read as they are.
    shapes jsonb;
    image text;
BEGIN
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    IF NOT EXISTS (SELECT 1 FROM @extschema@.bemi_table_truncations(target.tbl) WHERE committed_at > at) THEN
        shapes := (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', d.id, 'columns', d."before" -> 'columns') ORDER BY d.id)
                   FROM @extschema@.bemi_table_schema_changes(target.tbl) d
                  WHERE d.committed_at > at AND d."before" ? 'columns'
                    AND d."before" -> 'columns' IS DISTINCT FROM d."after" -> 'columns');
        image := CASE WHEN shapes IS NULL THEN 'f."before"' ELSE
            $i$@extschema@.bemi_current_shape($1, f."before", (SELECT s -> 'columns' FROM pg_catalog.jsonb_array_elements($5) s
                WHERE (s ->> 'id')::pg_catalog.int8 > f.id ORDER BY (s ->> 'id')::pg_catalog.int8 LIMIT 1))$i$ END;
        IF masked_key THEN
            SELECT h.id INTO keyless FROM @extschema@.bemi_table_history(target.tbl, at, 'infinity'::timestamptz) h
             WHERE h.committed_at > at AND h.operation <> 'DDL' AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
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
                    SELECT DISTINCT ON (h.primary_key) h.id, h.primary_key, h.operation, h."before"
                      FROM @extschema@.bemi_table_history($1, $2, 'infinity'::timestamptz) h
                     WHERE h.committed_at > $2 AND h.operation NOT IN ('SNAPSHOT', 'DDL')
                     ORDER BY h.primary_key, h.id)
                SELECT t.* FROM %1$s t
                 WHERE NOT EXISTS (SELECT 1 FROM firsts f WHERE f.primary_key = %2$s)
                UNION ALL
                SELECT r.* FROM firsts f, LATERAL (SELECT %3$s AS img %5$s) i,
                       jsonb_populate_record(NULL::%1$s, i.img %4$s) r
                 WHERE f.operation <> 'CREATE'$q$, target.tbl, target.key_sql, image, format(unmask, 'i.img', '$3', '$4'),
                 CASE WHEN shapes IS NULL THEN '' ELSE 'OFFSET 0' END)
                USING target.tbl, at, misfit.marker, misfit.hash, shapes;
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
         WHERE h.id > base_id AND h.operation <> 'DDL' AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
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
    shapes := (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', d.id, 'columns', d."before" -> 'columns') ORDER BY d.id)
               FROM @extschema@.bemi_table_schema_changes(target.tbl) d
              WHERE d.committed_at > base_at AND d."before" ? 'columns'
                AND d."before" -> 'columns' IS DISTINCT FROM d."after" -> 'columns');
    image := CASE WHEN shapes IS NULL THEN 'l."after"' ELSE
        $i$@extschema@.bemi_current_shape($1, l."after", (SELECT s -> 'columns' FROM pg_catalog.jsonb_array_elements($7) s
            WHERE (s ->> 'id')::pg_catalog.int8 > l.id ORDER BY (s ->> 'id')::pg_catalog.int8 LIMIT 1))$i$ END;
    BEGIN
        RETURN QUERY EXECUTE format($q$
            SELECT r.* FROM (
                SELECT DISTINCT ON (h.primary_key) h.id, h.operation, h."after"
                  FROM @extschema@.bemi_table_history($1, $3, $2) h
                 WHERE h.id > $4 AND h.operation NOT IN ('TRUNCATE', 'DDL')
                 ORDER BY h.primary_key, h.id DESC) l,
                LATERAL (SELECT %2$s AS img %4$s) i,
                jsonb_populate_record(NULL::%1$s, i.img %3$s) r
             WHERE l.operation <> 'DELETE'$q$, target.tbl, image, format(unmask, 'i.img', '$5', '$6'),
             CASE WHEN shapes IS NULL THEN '' ELSE 'OFFSET 0' END)
            USING target.tbl, at, base_at, base_id, misfit.marker, misfit.hash, shapes;
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
    shape jsonb; -- the columns of the image used, when a schema change came after it
BEGIN
    IF key IS NULL THEN
        RAISE EXCEPTION 'the primary key must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    -- As in bemi_as_of: any change since under a masked key may be this row's (truncated since,
    -- any change of the span replayed, below).
    IF masked_key THEN
        SELECT h.id INTO keyless FROM @extschema@.bemi_table_history(target.tbl, at, 'infinity'::timestamptz) h
         WHERE h.committed_at > at AND h.operation <> 'DDL' AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
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
        SELECT h.id, h.operation, h."before" INTO change FROM @extschema@.bemi_row_history(target.tbl, key) h
         WHERE h.committed_at > at AND h.operation <> 'SNAPSHOT' ORDER BY h.id LIMIT 1;
        IF FOUND THEN
            -- The image in the table's current shape, if a schema change came after it.
            IF change.operation <> 'CREATE' THEN
                shape := (SELECT d."before" -> 'columns' FROM @extschema@.bemi_table_schema_changes(target.tbl) d
                           WHERE d.id > change.id AND d."before" ? 'columns'
                             AND d."before" -> 'columns' IS DISTINCT FROM d."after" -> 'columns'
                           ORDER BY d.id LIMIT 1);
                IF shape IS NOT NULL THEN
                    change."before" := @extschema@.bemi_current_shape(target.tbl, change."before", shape);
                END IF;
            END IF;
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
             WHERE h.id > base_id AND h.operation <> 'DDL' AND EXISTS (SELECT FROM unnest(target.key_columns) c, unnest(ARRAY[h."before", h."after"]) img
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
        SELECT h.id, h.operation, h."after" INTO change FROM @extschema@.bemi_row_history(target.tbl, key) h
         WHERE h.committed_at <= at AND h.id > base_id ORDER BY h.id DESC LIMIT 1;
        IF FOUND AND change.operation <> 'DELETE' THEN
            shape := (SELECT d."before" -> 'columns' FROM @extschema@.bemi_table_schema_changes(target.tbl) d
                       WHERE d.id > change.id AND d."before" ? 'columns'
                         AND d."before" -> 'columns' IS DISTINCT FROM d."after" -> 'columns'
                       ORDER BY d.id LIMIT 1);
            IF shape IS NOT NULL THEN
                change."after" := @extschema@.bemi_current_shape(target.tbl, change."after", shape);
            END IF;
        END IF;
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

