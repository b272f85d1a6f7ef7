-- bemi 0.3.0 -> 0.4.0. Run by ALTER EXTENSION bemi UPDATE, as the extension's owner (a
-- superuser), in every database that has bemi. Released: never edit this file; a later change is
-- a new step bemi--0.4.0--B.sql, even one that changes no SQL.
-- It brings a 0.3.0 database to exactly the schema of a fresh 0.4.0 install and keeps the trail
-- (no table of 0.3.0 changes). 0.4.0 adds tracking rules (issue 13): the role bemi_admin, the
-- table bemi.rules that the output plugin reads while decoding, and the functions that change
-- rules. Their definitions below are 0.4.0's (ext/rules.sql at its release).
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
    INSERT INTO bemi.rules (kind, role, application_name)
        VALUES ('ignore_writer', bemi_ignore_writer.role, bemi_ignore_writer.application_name)
        RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION @extschema@.bemi_ignore_writer(name, text) IS
    'Stop recording the changes made by a role, an application_name, or both together; returns the rule''s id';

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
