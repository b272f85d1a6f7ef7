-- bemi 0.3.0 -> 0.4.0. Run by ALTER EXTENSION bemi UPDATE, as the extension's owner (a
-- superuser), in every database that has bemi. Released: never edit this file; a later change is
-- a new step bemi--0.4.0--B.sql, even one that changes no SQL.
-- It brings a 0.3.0 database to exactly the schema of a fresh 0.4.0 install and keeps the trail
-- (no table of 0.3.0 changes). 0.4.0 adds tracking rules (issue 13): the role bemi_admin, the
-- table bemi.rules that the output plugin reads while decoding, and the functions that change
-- rules, and bemi_tracked_tables(); bemi_status() counts the changes rules skipped; time travel
-- and reverts that never write a mask back. Their definitions below are 0.4.0's (ext/rules.sql,
-- ext/core.sql, ext/time_travel.sql, ext/revert.sql at its release).
\echo Use "ALTER EXTENSION bemi UPDATE TO '0.4.0'" to load this file. \quit

-- The same rule as the install script: names resolve only in pg_catalog (docs/security.md, "Names").
SET LOCAL search_path = pg_catalog, pg_temp;

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
-- bemi_status() counts the changes tracking rules skipped (skipped_table_rules,
-- skipped_column_rules, skipped_writer_rules): it and bemi._worker_state() get new columns, so
-- both are made again (no object refers to them). As in core.sql at 0.4.0.
------------------------------------------------------------------------------------------------
DROP FUNCTION @extschema@.bemi_status();
DROP FUNCTION bemi._worker_state();
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
-- History, time travel and reverts know the rules (issue 13): ext/time_travel.sql and
-- ext/revert.sql at 0.4.0; the functions keep their arguments, results, comments and grants.
------------------------------------------------------------------------------------------------
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

CREATE OR REPLACE FUNCTION @extschema@.bemi_as_of(tbl anyelement, at timestamptz) RETURNS SETOF anyelement
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

CREATE OR REPLACE FUNCTION @extschema@.bemi_row_as_of(tbl anyelement, primary_key anycompatible, at timestamptz) RETURNS anyelement
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

CREATE OR REPLACE FUNCTION @extschema@.bemi_revert_changes(change_ids bigint[], force boolean DEFAULT false,
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
