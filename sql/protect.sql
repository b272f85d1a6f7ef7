-- The trail cannot be dropped or edited silently (issue 15): every way an attacker would try, as a
-- superuser and as a role with every grant on bemi's tables, is refused with the trail unchanged,
-- unless the session says it means it (bemi.allow_drop, bemi.allow_trail_changes; superuser only),
-- and a modification allowed that way is recorded in bemi.gaps.
SELECT current_database() AS regress_db \gset
CREATE TABLE prot_items (id int PRIMARY KEY, note text);
INSERT INTO prot_items VALUES (1, 'one'), (2, 'two');
SELECT bemi_wait();
CREATE TEMP TABLE prot_before AS
SELECT max(id) AS last_id, md5(string_agg(c::text, ',' ORDER BY id)) AS trail,
       (SELECT count(*) FROM bemi.gaps) AS gaps
  FROM bemi.changes c;
-- The changes recorded before the attacks, as they were.
CREATE FUNCTION pg_temp.trail_unchanged() RETURNS boolean LANGUAGE sql AS $$
    SELECT md5(string_agg(c::text, ',' ORDER BY id)) = (SELECT trail FROM prot_before)
      FROM bemi.changes c WHERE id <= (SELECT last_id FROM prot_before)
$$;

-- What a refusal says (numbers and the object dropped first vary with what earlier tests did).
DO $$
DECLARE
    m text; d text; h text;
BEGIN
    DROP EXTENSION bemi;
EXCEPTION WHEN dependent_objects_still_exist THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RAISE NOTICE E'%\n%\n%', m, regexp_replace(regexp_replace(d, '\d+', 'N', 'g'), 'drops \S+;', 'drops bemi.…;'), h;
END $$;
DO $$
DECLARE
    m text; d text; h text;
BEGIN
    DELETE FROM bemi.changes;
EXCEPTION WHEN insufficient_privilege THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RAISE NOTICE E'%\n%\n%', m, d, h;
END $$;

\set VERBOSITY terse
-- 1. A superuser: drops, in every form. (bemi's tables and schema are members of the extension:
-- PostgreSQL refuses to drop them alone; taken out of it first, bemi refuses.)
DROP EXTENSION bemi;
DROP EXTENSION bemi CASCADE;
DROP SCHEMA bemi CASCADE;
DROP TABLE bemi.changes_default;
DROP TABLE bemi.changes CASCADE;
DROP TABLE bemi.gaps;
DROP TABLE bemi.rules;
DROP TABLE bemi.progress;
BEGIN;
ALTER EXTENSION bemi DROP TABLE bemi.changes_default;
DROP TABLE bemi.changes_default;
ROLLBACK;
BEGIN;
ALTER EXTENSION bemi DROP TABLE bemi.gaps;
DROP TABLE bemi.gaps CASCADE;
ROLLBACK;
BEGIN;
ALTER EXTENSION bemi DROP SCHEMA bemi;
DROP SCHEMA bemi CASCADE;
ROLLBACK;
ALTER TABLE bemi.changes DETACH PARTITION bemi.changes_default;
ALTER TABLE bemi.changes DROP COLUMN context;
ALTER TABLE bemi.changes ALTER COLUMN context TYPE text;
ALTER TABLE bemi.changes_default SET UNLOGGED;
ALTER TABLE bemi.changes_default SET SCHEMA public;
ALTER TABLE bemi.changes RENAME TO old_changes;
ALTER SCHEMA bemi RENAME TO old_bemi;
DO $$ BEGIN EXECUTE 'DROP EXTENSION bemi'; END $$;

-- 2. A superuser: writes, in every form.
UPDATE bemi.changes SET context = '{}';
DELETE FROM bemi.changes;
DELETE FROM bemi.changes_default;
UPDATE bemi.changes_default SET "after" = NULL;
TRUNCATE bemi.changes;
TRUNCATE bemi.changes_default;
MERGE INTO bemi.changes c USING (SELECT 1 AS one) s ON true WHEN MATCHED THEN DELETE;
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES (current_database(), 'public', 'prot_items', 'DELETE', now(), 1, '0/1');
INSERT INTO bemi.changes_default (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES (current_database(), 'public', 'prot_items', 'DELETE', now(), 1, '0/1');
COPY bemi.changes FROM '/nonexistent';
WITH gone AS (DELETE FROM bemi.changes RETURNING 1) SELECT count(*) FROM gone;
UPDATE bemi.gaps SET reason = 'nothing happened';
DELETE FROM bemi.gaps;
TRUNCATE bemi.gaps;
-- Through a view, a SECURITY DEFINER function, a rule, a trigger, a DO block, with triggers off.
CREATE VIEW prot_view AS SELECT * FROM bemi.changes;
DELETE FROM prot_view;
CREATE FUNCTION prot_wipe() RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ DELETE FROM bemi.changes $$;
SELECT prot_wipe();
CREATE TABLE prot_trap (id int);
CREATE RULE prot_trap_rule AS ON INSERT TO prot_trap DO ALSO DELETE FROM bemi.changes;
INSERT INTO prot_trap VALUES (1);
DROP RULE prot_trap_rule ON prot_trap;
CREATE FUNCTION prot_trap_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bemi.changes SET context = '{}';
    RETURN NEW;
END $$;
CREATE TRIGGER prot_trap_trigger AFTER INSERT ON prot_trap FOR EACH ROW EXECUTE FUNCTION prot_trap_trigger();
INSERT INTO prot_trap VALUES (2);
DO $$ BEGIN DELETE FROM bemi.changes; END $$;
DO $$ BEGIN EXECUTE 'TRUNCATE bemi.changes'; END $$;
SET session_replication_role = replica;
DELETE FROM bemi.changes;
TRUNCATE bemi.changes;
DROP EXTENSION bemi CASCADE;
RESET session_replication_role;

-- 3. A role with every grant on schema bemi and its tables (and the SECURITY DEFINER function).
CREATE ROLE prot_admin;
GRANT bemi_reader TO prot_admin;
GRANT ALL ON SCHEMA bemi TO prot_admin;
GRANT ALL ON ALL TABLES IN SCHEMA bemi TO prot_admin;
GRANT ALL ON ALL SEQUENCES IN SCHEMA bemi TO prot_admin;
GRANT EXECUTE ON FUNCTION prot_wipe() TO prot_admin;
SET ROLE prot_admin;
UPDATE bemi.changes SET context = '{}';
DELETE FROM bemi.changes_default;
TRUNCATE bemi.changes;
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES (current_database(), 'public', 'prot_items', 'DELETE', now(), 1, '0/1');
DELETE FROM bemi.gaps;
SELECT prot_wipe();
DROP TABLE bemi.changes_default;
DROP EXTENSION bemi;
SET bemi.allow_trail_changes = on;
SET bemi.allow_drop = on;
RESET ROLE;
\set VERBOSITY default

-- Nothing changed.
SELECT pg_temp.trail_unchanged() AS trail_unchanged,
       (SELECT count(*) FROM bemi.gaps) = (SELECT gaps FROM prot_before) AS no_gap_written,
       (SELECT count(*) FROM pg_class WHERE relnamespace = 'bemi'::regnamespace AND relkind IN ('r', 'p')) AS bemi_tables;

-- 4. With the setting on (superuser only), the session may, and each statement is recorded.
SET bemi.allow_trail_changes = on;
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position, context)
VALUES (current_database(), 'public', 'prot_items', 'DELETE', now(), 1, '0/1', '{"made": "up"}');
UPDATE bemi.changes SET context = '{"made": "up too"}' WHERE context = '{"made": "up"}';
DELETE FROM bemi.changes WHERE context = '{"made": "up too"}';
RESET bemi.allow_trail_changes;
SELECT reason, relation, role = current_user AS by_me, statement
  FROM bemi.gaps ORDER BY id DESC LIMIT 3;
-- The trail is as it was, and what was done to it is in bemi.gaps.
SELECT pg_temp.trail_unchanged() AS trail_unchanged;

-- A session with the setting on edits the trail itself (a restore, a repair): its own changes are
-- left out of the trail, and each table it writes is named once per transaction in bemi.gaps.
SELECT bemi_wait() AS waited;
SELECT coalesce(max(id), 0) AS prot_mark, (SELECT max(id) FROM bemi.gaps) AS prot_gap_mark FROM bemi.changes \gset
SET bemi.allow_trail_changes = on;
BEGIN;
INSERT INTO prot_items VALUES (10, 'unrecorded');
UPDATE prot_items SET note = 'unrecorded too' WHERE id = 10;
COMMIT;
COPY prot_items FROM stdin;
11	copied
\.
RESET bemi.allow_trail_changes;
INSERT INTO prot_items VALUES (12, 'recorded');
SELECT bemi_wait() AS waited;
SELECT operation, primary_key, after->>'note' AS note FROM bemi.changes
 WHERE id > :prot_mark AND "table" = 'prot_items' ORDER BY id;
SELECT reason, relation, statement FROM bemi.gaps WHERE id > :prot_gap_mark ORDER BY id;
DELETE FROM prot_items WHERE id >= 10;
-- Per session only: not for a database, a role or the server.
ALTER SYSTEM SET bemi.allow_trail_changes = on;
-- ALTER ROLE ... SET is taken at login, where it is refused with a WARNING: the setting stays off.
SELECT current_user AS prot_me \gset
CREATE ROLE prot_login LOGIN;
ALTER ROLE prot_login SET bemi.allow_trail_changes = on;
\c - prot_login
SHOW bemi.allow_trail_changes;
\c - :prot_me
DROP ROLE prot_login;

-- With bemi.allow_drop, a DETACH of the trail goes ahead and is recorded (rolled back here).
BEGIN;
SET LOCAL bemi.allow_drop = on;
ALTER TABLE bemi.changes DETACH PARTITION bemi.changes_default;
SELECT reason, relation, role = current_user AS by_me, statement FROM bemi.gaps ORDER BY id DESC LIMIT 1;
ROLLBACK;

DROP TRIGGER prot_trap_trigger ON prot_trap;
DROP TABLE prot_trap, prot_items;
DROP VIEW prot_view;
DROP FUNCTION prot_wipe(), prot_trap_trigger();
REVOKE ALL ON ALL TABLES IN SCHEMA bemi FROM prot_admin;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA bemi FROM prot_admin;
REVOKE ALL ON SCHEMA bemi FROM prot_admin;
DROP ROLE prot_admin;

-- 5. An empty trail can be dropped without the setting; a full one with it. Here the extension
-- is owned by a superuser of our own, so that DROP OWNED would take it.
CREATE DATABASE bemi_protect;
\c bemi_protect
CREATE EXTENSION bemi;
DROP EXTENSION bemi;
CREATE ROLE prot_super SUPERUSER;
SET ROLE prot_super;
CREATE EXTENSION bemi;
CREATE TABLE prot_one (id int PRIMARY KEY);
INSERT INTO prot_one VALUES (1);
SELECT bemi_wait();
\set VERBOSITY terse
DROP EXTENSION bemi;
DROP OWNED BY prot_super;
\set VERBOSITY default
SELECT count(*) AS changes FROM bemi.changes;
SET bemi.allow_drop = on;
DROP OWNED BY prot_super;
RESET ROLE;
DROP ROLE prot_super;
SELECT count(*) AS bemi_schemas FROM pg_namespace WHERE nspname = 'bemi';
\c :regress_db
DROP DATABASE bemi_protect;
-- DROP DATABASE takes a trail with it: refused while bemi records the database (its trail cannot
-- be counted from another database).
CREATE DATABASE bemi_protect2;
\c bemi_protect2
CREATE EXTENSION bemi;
-- Right away, while its worker may still be starting: it must not take the slot from under the
-- DROP DATABASE that goes ahead.
\c :regress_db
DROP DATABASE bemi_protect2;
SET bemi.allow_drop = on;
DROP DATABASE bemi_protect2;
RESET bemi.allow_drop;
