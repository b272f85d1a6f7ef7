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
