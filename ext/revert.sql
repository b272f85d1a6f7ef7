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
    -- A SNAPSHOT records what a row held, not a change of it: there is nothing to undo.
    sel := ARRAY(SELECT s FROM unnest(sel) s WHERE s.operation <> 'SNAPSHOT');
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
             WHERE h.id <> ALL (change_ids) AND h.operation <> 'SNAPSHOT'
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
                   AND h.id <> ALL (change_ids) AND h.operation NOT IN ('TRUNCATE', 'SNAPSHOT')
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

-- A revert undoes row changes: the schema changes of a transaction, a context or a table's span
-- (operation DDL) are left out of what it reverts, and a DDL row given by id is refused.
CREATE FUNCTION @extschema@.bemi_revert_transaction(transaction_id bigint, force boolean DEFAULT false, dry_run boolean DEFAULT false)
RETURNS SETOF @extschema@.bemi_revert_step
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    PERFORM @extschema@.bemi_wait(pg_current_wal_insert_lsn(), interval '60 seconds');
    ids := ARRAY(SELECT h.id FROM @extschema@.bemi_transaction_history(transaction_id) h WHERE h.operation <> 'DDL');
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
    ids := ARRAY(SELECT h.id FROM @extschema@.bemi_context_history(context) h WHERE h.operation <> 'DDL');
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
    ids := ARRAY(SELECT h.id FROM @extschema@.bemi_table_history(tbl, at, 'infinity'::timestamptz) h
                  WHERE h.committed_at > at AND h.operation <> 'DDL');
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
