-- Names: bemi's SQL resolves functions, operators and types only in pg_catalog and its own
-- schemas. A role that owns a database and may create in its public schema plants look-alikes of
-- the functions bemi calls, before and after bemi is installed, hoping a superuser (the install
-- script, the worker, a superuser using bemi's functions) runs one. None ever runs.
SELECT current_database() AS regress_db \gset
CREATE ROLE names_owner LOGIN;
CREATE DATABASE bemi_names OWNER names_owner;
\c bemi_names
SET client_min_messages = warning;
SET ROLE names_owner;
-- Every look-alike reports here who ran it, and tries to make its author a superuser.
CREATE TABLE public.pwned (who text, what text);
GRANT ALL ON public.pwned TO PUBLIC;
CREATE FUNCTION public.pwn(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.pwned VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        ALTER ROLE names_owner SUPERUSER;
    END IF;
END $$;
CREATE FUNCTION public.has_table_privilege(regclass, text) RETURNS boolean
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('has_table_privilege'); RETURN true; END$$;
CREATE FUNCTION public.row_security_active(regclass) RETURNS boolean
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('row_security_active'); RETURN false; END$$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('unnest'); RETURN; END$$;
CREATE FUNCTION public.format(text, text) RETURNS text
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('format'); RETURN ''; END$$;
CREATE FUNCTION public.format(text, regclass) RETURNS text
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('format'); RETURN ''; END$$;
CREATE FUNCTION public.jsonb_build_object(text, jsonb) RETURNS jsonb
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('jsonb_build_object'); RETURN '{}'; END$$;
CREATE FUNCTION public.to_jsonb(integer) RETURNS jsonb
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('to_jsonb'); RETURN '{}'; END$$;
CREATE FUNCTION public.now() RETURNS timestamptz
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('now'); RETURN pg_catalog.now(); END$$;
CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('clock_timestamp'); RETURN pg_catalog.now(); END$$;
CREATE FUNCTION public.pwn_eq(text, text) RETURNS boolean
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('= (text, text)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END$$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.pwn_eq);
CREATE FUNCTION public.pwn_contains(jsonb, jsonb) RETURNS boolean
    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('@> (jsonb, jsonb)'); RETURN $1 OPERATOR(pg_catalog.@>) $2; END$$;
CREATE OPERATOR public.@> (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.pwn_contains);
CREATE TABLE public.items (id int PRIMARY KEY, name text);
INSERT INTO public.items VALUES (1, 'before bemi');
RESET ROLE;

-- bemi_reader reads every database's trail. A role that controls it (here: it got the admin
-- option, and granted it on) would read every trail installed after: bemi refuses to install.
CREATE ROLE names_creator CREATEROLE;
CREATE ROLE names_sneaky;
GRANT bemi_reader TO names_creator WITH ADMIN OPTION;
SET ROLE names_creator;
GRANT bemi_reader TO names_sneaky;
RESET ROLE;
DO $$
DECLARE
    message text;
    detail text;
BEGIN
    CREATE EXTENSION bemi;
EXCEPTION WHEN insufficient_privilege THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    RAISE WARNING 'refused: % (%)', message, detail;
END $$;
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'bemi';
DROP ROLE names_sneaky;
DROP ROLE names_creator;

-- A superuser installs bemi into public, as usual.
CREATE EXTENSION bemi;
-- Nothing of bemi's is bound to an object outside pg_catalog and bemi's own.
SELECT pg_describe_object(d.classid, d.objid, 0) AS bemi_object,
       pg_describe_object(d.refclassid, d.refobjid, 0) AS depends_on
  FROM pg_depend d
  JOIN pg_depend e ON e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e'
                  AND e.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bemi')
 WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass)
   AND NOT EXISTS (SELECT FROM pg_depend m WHERE m.classid = d.refclassid AND m.objid = d.refobjid
                      AND m.deptype = 'e' AND m.refobjid = e.refobjid)
   AND coalesce((SELECT pronamespace FROM pg_proc WHERE d.refclassid = 'pg_proc'::regclass AND oid = d.refobjid),
                (SELECT oprnamespace FROM pg_operator WHERE d.refclassid = 'pg_operator'::regclass AND oid = d.refobjid),
                (SELECT typnamespace FROM pg_type WHERE d.refclassid = 'pg_type'::regclass AND oid = d.refobjid))
       NOT IN ('pg_catalog'::regnamespace, 'bemi'::regnamespace);

-- The application writes; the worker records it (its own SQL meets the look-alikes too).
BEGIN;
SELECT bemi_set_context('{"request": "r1"}');
INSERT INTO items VALUES (2, 'two'), (3, 'three');
UPDATE items SET name = 'one' WHERE id = 1;
COMMIT;
DELETE FROM items WHERE id = 3;
SELECT bemi_wait();
SELECT operation, primary_key, after FROM bemi.changes ORDER BY id;

-- A superuser uses every kind of bemi function.
SELECT worker_state, gaps FROM bemi_status();
SELECT count(*) FROM bemi_row_history('items', 1);
SELECT count(*) FROM bemi_row_history('items', '2');
SELECT count(*) FROM bemi_rows_history('items', ARRAY['1', '2']);
SELECT count(*) FROM bemi_table_history('items');
SELECT count(*) FROM bemi_table_truncations('items');
SELECT count(*) FROM bemi_context_history('{"request": "r1"}');
SELECT count(*) FROM bemi_transaction_history((SELECT max(transaction_id) FROM bemi.changes));
SELECT count(*) FROM bemi_changes(ARRAY[1, 2]);
SELECT bemi_unreadable_changes(1, '{"request": "r1"}');
SELECT count(*) FROM bemi_transactions();
SELECT count(*) FROM bemi_context_groups('request');
SELECT bemi_tracking_started_at() < now() AS tracking_started;
SELECT had_rows_at_start FROM bemi_tracking('items');
SELECT * FROM bemi_as_of(NULL::items, now()) ORDER BY id;
SELECT * FROM bemi_row_as_of(NULL::items, 1, now());
SELECT action, "table" FROM bemi_revert_context('{"request": "r1"}', force => true, dry_run => true);
SELECT action FROM bemi_revert_change((SELECT max(id) FROM bemi.changes));
SELECT count(*) FROM bemi_revert_table('items', bemi_tracking_started_at(), dry_run => true);
SELECT count(*) > 0 AS partitions_made FROM bemi_set_retention('30 days');
SELECT count(*) > 0 AS has_partitions FROM bemi_partitions();
SELECT count(*) >= 0 AS maintained FROM bemi_maintain_changes();
SELECT bemi_reset_retention();
CREATE TABLE made_later (id int PRIMARY KEY);
SELECT relreplident FROM pg_class WHERE oid = 'made_later'::regclass;
SELECT bemi_wait();

-- No look-alike ran, and their author is no superuser.
SELECT * FROM public.pwned;
SELECT rolsuper FROM pg_roles WHERE rolname = 'names_owner';

SET bemi.allow_drop = on;
DROP EXTENSION bemi;
RESET client_min_messages;
\c :regress_db
DROP DATABASE bemi_names;
DROP ROLE names_owner;
