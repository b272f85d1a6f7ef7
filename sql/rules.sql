-- Tracking rules (issue 13): who may change them, what bad input gets, and what each kind does to
-- the trail and to the plugin's own output.
CREATE ROLE rules_app LOGIN;
CREATE ROLE rules_admin LOGIN IN ROLE bemi_admin;
CREATE ROLE rules_auditor LOGIN IN ROLE bemi_reader;
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- The SQL surface. A rule gets an id, its kind, who made it and when.
SELECT bemi_ignore('scratch.*') AS scratch_rule \gset
SELECT kind, target, columns, method, role, application_name, created_by = session_user AS by_me,
       created_at > now() - interval '1 hour' AS recent
  FROM bemi.rules WHERE id = :scratch_rule;
SELECT bemi_drop_rule(:scratch_rule);
SELECT count(*) FROM bemi.rules;

-- Bad input: a clear error, its SQLSTATE, a hint.
\set SHOW_CONTEXT never
SELECT bemi_ignore('sessions');
SELECT bemi_ignore('public.sessions.x');
SELECT bemi_ignore('.sessions');
SELECT bemi_ignore(NULL);
SELECT bemi_ignore('public.t', '{}');
SELECT bemi_ignore('public.t', '{a, NULL}');
SELECT bemi_ignore('public.t', '{a, ""}');
SELECT bemi_mask('public.users', NULL);
SELECT bemi_mask('public.users', '{password}', 'rot13');
SELECT bemi_mask('public.users', '{password}', NULL);
SELECT bemi_ignore_writer();
SELECT bemi_drop_rule(-1);
SELECT pg_temp.try($$SELECT bemi_ignore('sessions')$$) AS pattern,
       pg_temp.try($$SELECT bemi_mask('public.users', '{password}', 'rot13')$$) AS method,
       pg_temp.try($$SELECT bemi_drop_rule(-1)$$) AS unknown_id;
-- The table holds its rules whoever writes it (a superuser by hand, a restore).
SELECT pg_temp.try($$INSERT INTO bemi.rules (kind, target) VALUES ('mask', 'public.users')$$) AS mask_without_columns,
       pg_temp.try($$INSERT INTO bemi.rules (kind, target) VALUES ('ignore', 'users')$$) AS not_a_pattern,
       pg_temp.try($$INSERT INTO bemi.rules (kind) VALUES ('ignore_writer')$$) AS writer_without_role,
       pg_temp.try($$INSERT INTO bemi.rules (kind, target) VALUES ('drop', 'public.users')$$) AS unknown_kind;
SELECT count(*) FROM bemi.rules;

-- An ordinary role can neither change rules (directly or through the functions) nor read them.
SET ROLE rules_app;
SELECT pg_temp.try($$SELECT bemi_ignore('public.*')$$) AS ignore,
       pg_temp.try($$SELECT bemi_mask('public.*', '{*}', 'drop')$$) AS mask,
       pg_temp.try($$SELECT bemi_ignore_writer('rules_app')$$) AS ignore_writer,
       pg_temp.try($$SELECT bemi_drop_rule(1)$$) AS drop_rule;
SELECT pg_temp.try($$INSERT INTO bemi.rules (kind, target) VALUES ('ignore', 'public.*')$$) AS insert,
       pg_temp.try($$DELETE FROM bemi.rules$$) AS delete,
       pg_temp.try($$TRUNCATE bemi.rules$$) AS truncate,
       pg_temp.try($$SELECT count(*) FROM bemi.rules$$) AS read;
RESET ROLE;
-- Nor can a trail reader change them; it reads them.
SET ROLE rules_auditor;
SELECT pg_temp.try($$SELECT bemi_ignore('public.*')$$) AS ignore,
       pg_temp.try($$DELETE FROM bemi.rules$$) AS delete,
       pg_temp.try($$SELECT count(*) FROM bemi.rules$$) AS read;
RESET ROLE;
-- A member of bemi_admin changes rules through the functions only; created_by names it.
SET SESSION AUTHORIZATION rules_admin;
SELECT bemi_ignore_writer(application_name => 'nightly etl') AS admin_rule \gset
SELECT kind, role, application_name, created_by FROM bemi.rules WHERE id = :admin_rule;
SELECT pg_temp.try($$INSERT INTO bemi.rules (kind, target) VALUES ('ignore', 'public.*')$$) AS insert,
       pg_temp.try($$UPDATE bemi.rules SET application_name = 'x'$$) AS update;
SELECT bemi_drop_rule(:admin_rule);
RESET SESSION AUTHORIZATION;
SELECT count(*) FROM bemi.rules;
-- In the trail, those changes of bemi.rules were written with the extension owner's rights (the
-- functions are SECURITY DEFINER); their verified identity names the caller who made them.
SELECT bemi_wait();
SELECT operation, context->'_bemi'->>'caller' AS caller,
       context->'_bemi'->>'role' = (SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'bemi') AS as_owner
  FROM bemi.changes WHERE schema = 'bemi' AND "table" = 'rules' AND primary_key = :'admin_rule' ORDER BY id;
-- The same through SET ROLE: the caller is the role set, created_by the session's user.
SET ROLE rules_admin;
SELECT bemi_ignore('public.set_role_*') AS set_role_rule \gset
SELECT bemi_drop_rule(:set_role_rule);
RESET ROLE;
SELECT bemi_wait();
SELECT operation, context->'_bemi'->>'caller' AS caller,
       CASE operation WHEN 'DELETE' THEN before ELSE after END->>'created_by' = session_user AS created_by_session_user
  FROM bemi.changes WHERE schema = 'bemi' AND "table" = 'rules' AND primary_key = :'set_role_rule' ORDER BY id;

-- What the rules do. A slot of the plugin, made before any rule, reads the same changes as the
-- worker afterwards: the plugin's own output must follow the same rules.
\set SHOW_CONTEXT errors
SELECT 'init' FROM pg_create_logical_replication_slot('rules_slot', 'bemi');
CREATE SCHEMA rules_scratch;
CREATE TABLE rules_scratch.early (id int PRIMARY KEY);
CREATE TABLE rules_sessions (id int PRIMARY KEY, token text);
CREATE TABLE rules_users (id int PRIMARY KEY, email text, password text, api_token text, ssn text,
                          updated_at timestamptz, login_count int);
CREATE TABLE rules_late (id int PRIMARY KEY);
SELECT bemi_ignore('public.rules_sessions') AS r_sessions,
       bemi_ignore('rules_scratch.*') AS r_scratch,
       bemi_ignore('*.rules_users', '{updated_at, login_*}') AS r_noise,
       bemi_mask('public.rules_users', '{password}') AS r_redact,
       bemi_mask('public.rules_user*', '{api_*}', 'hash') AS r_hash,
       bemi_mask('*.*', '{ssn}', 'drop') AS r_drop \gset
-- Ignored tables: no change, no TRUNCATE; a table made later under rules_scratch.* from its first row.
INSERT INTO rules_sessions VALUES (1, 'secret-session');
TRUNCATE rules_sessions;
INSERT INTO rules_scratch.early VALUES (1);
CREATE TABLE rules_scratch.later (id int PRIMARY KEY);
INSERT INTO rules_scratch.later VALUES (1);
-- Masked columns: a marker, a keyed hash (equal values, equal hashes), or nothing.
INSERT INTO rules_users VALUES (1, 'ann@example.com', 'secret-pass-1', 'secret-token', 'secret-ssn-1', now(), 0),
                               (2, 'bob@example.com', 'secret-pass-2', 'secret-token', 'secret-ssn-2', now(), 0);
-- An UPDATE of ignored columns only is not recorded; one that changes another column is, whole.
UPDATE rules_users SET updated_at = updated_at + interval '1 day', login_count = login_count + 1 WHERE id = 1;
UPDATE rules_users SET email = 'ann@example.org', updated_at = updated_at + interval '1 day' WHERE id = 1;
UPDATE rules_users SET password = 'secret-pass-3' WHERE id = 2;
-- A rule applies from the change after it, in the middle of a transaction too; a change made
-- before it is recorded, however late decoding reaches it.
BEGIN;
INSERT INTO rules_late VALUES (1);
SELECT bemi_ignore('public.rules_late') AS r_late \gset
INSERT INTO rules_late VALUES (2);
COMMIT;
BEGIN;
INSERT INTO rules_late VALUES (3);
SELECT bemi_drop_rule(:r_late);
INSERT INTO rules_late VALUES (4);
COMMIT;
SELECT bemi_wait();
SELECT schema, "table", operation, primary_key, before - '{updated_at, api_token}'::text[] AS before,
       after - '{updated_at, api_token}'::text[] AS after
  FROM bemi.changes
 WHERE operation <> 'DDL' AND ("table" IN ('rules_sessions', 'early', 'later', 'rules_late') OR ("table" = 'rules_users' AND operation <> 'CREATE'))
 ORDER BY id;
SELECT primary_key, after - '{updated_at, api_token}'::text[] AS after,
       after->>'api_token' ~ '^hmac:[0-9a-f]{64}$' AS hashed
  FROM bemi.changes WHERE "table" = 'rules_users' AND operation = 'CREATE' ORDER BY id;
SELECT count(DISTINCT after->>'api_token') AS distinct_hashes
  FROM bemi.changes WHERE "table" = 'rules_users' AND operation = 'CREATE';
-- Every change of a rule is in the trail, with who made it.
SELECT operation, CASE operation WHEN 'DELETE' THEN before ELSE after END->>'kind' AS kind,
       CASE operation WHEN 'DELETE' THEN before ELSE after END->>'target' AS target,
       context->'_bemi'->>'role' = current_user AS by_me
  FROM bemi.changes WHERE schema = 'bemi' AND "table" = 'rules' ORDER BY id;
-- The plugin's output: the same changes, and no masked value anywhere.
CREATE TEMP TABLE rules_decoded AS
    SELECT lsn, data::jsonb AS doc FROM pg_logical_slot_get_changes('rules_slot', NULL, NULL);
SELECT doc->>'schema' AS schema, doc->>'table' AS "table", doc->>'operation' AS operation, doc->>'primary_key' AS primary_key
  FROM rules_decoded WHERE doc->>'operation' <> 'DDL' AND doc->>'table' IN ('rules_sessions', 'early', 'later', 'rules_late', 'rules_users')
 ORDER BY lsn;
SELECT count(*) AS secrets_in_trail FROM bemi.changes WHERE "before"::text ~ 'secret-' OR "after"::text ~ 'secret-';
SELECT count(*) AS secrets_in_output FROM rules_decoded WHERE doc::text ~ 'secret-';
SELECT count(*) AS same_hashes FROM rules_decoded d, bemi.changes c
 WHERE d.doc->>'table' = 'rules_users' AND c."table" = 'rules_users' AND c.operation = 'CREATE'
   AND d.doc->>'operation' = 'CREATE' AND d.doc->>'primary_key' = c.primary_key
   AND d.doc->'after'->>'api_token' = c.after->>'api_token';
SELECT pg_drop_replication_slot('rules_slot');

-- Writers: a role's or an application's changes are not recorded; others' are.
GRANT ALL ON rules_late TO rules_app;
SELECT bemi_ignore_writer(role => 'rules_app') AS r_role,
       bemi_ignore_writer(application_name => 'rules etl') AS r_app \gset
SET ROLE rules_app;
INSERT INTO rules_late VALUES (10);
RESET ROLE;
SET application_name = 'rules etl';
INSERT INTO rules_late VALUES (11);
RESET application_name;
INSERT INTO rules_late VALUES (12);
SELECT bemi_wait();
SELECT primary_key, context->'_bemi'->>'role' = current_user AS by_me
  FROM bemi.changes WHERE "table" = 'rules_late' AND primary_key::int >= 10 ORDER BY id;

-- A writer rule names the role outside SECURITY DEFINER functions (_bemi.caller when there is
-- one, else _bemi.role): an ordinary role calling a function owned by the ignored role is
-- recorded; the ignored role's own writes are not, also through another role's function.
CREATE ROLE rules_etl;
CREATE ROLE rules_clerk;
GRANT ALL ON rules_late TO rules_etl, rules_clerk;
CREATE FUNCTION rules_etl_insert(v int) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS 'INSERT INTO public.rules_late VALUES (v)';
CREATE FUNCTION rules_clerk_insert(v int) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS 'INSERT INTO public.rules_late VALUES (v)';
ALTER FUNCTION rules_etl_insert(int) OWNER TO rules_etl;
ALTER FUNCTION rules_clerk_insert(int) OWNER TO rules_clerk;
SELECT bemi_ignore_writer(role => 'rules_etl') AS r_etl \gset
SET ROLE rules_clerk;
SELECT rules_etl_insert(20);
INSERT INTO rules_late VALUES (21);
RESET ROLE;
SET ROLE rules_etl;
INSERT INTO rules_late VALUES (22);
SELECT rules_clerk_insert(23);
RESET ROLE;
SELECT bemi_wait();
SELECT primary_key, context->'_bemi'->>'role' AS role, context->'_bemi'->>'caller' AS caller
  FROM bemi.changes WHERE "table" = 'rules_late' AND primary_key::int >= 20 ORDER BY id;

-- application_name is a pattern, * matching any characters, as in targets.
SELECT bemi_ignore_writer(application_name => 'rules-airflow-*') AS r_airflow \gset
SET application_name = 'rules-airflow-daily';
INSERT INTO rules_late VALUES (30);
SET application_name = 'rules-airflow-';
INSERT INTO rules_late VALUES (31);
SET application_name = 'rules-airflow';
INSERT INTO rules_late VALUES (32);
SET application_name = 'x-rules-airflow-daily';
INSERT INTO rules_late VALUES (33);
RESET application_name;
SELECT bemi_wait();
SELECT primary_key, context->'_bemi'->>'application_name' AS application_name
  FROM bemi.changes WHERE "table" = 'rules_late' AND primary_key::int >= 30 ORDER BY id;
-- A pattern that matches every application, or none given as an empty string, is refused.
\set SHOW_CONTEXT never
SELECT bemi_ignore_writer(application_name => '*');
SELECT bemi_ignore_writer(role => 'rules_etl', application_name => '**');
SELECT bemi_ignore_writer(application_name => '');
\set SHOW_CONTEXT errors

-- What the rules make of each table, and the rules that match none.
SELECT bemi_ignore('nowhere.*') AS r_nowhere \gset
SELECT * FROM bemi_tracked_tables()
 WHERE table_name LIKE 'rules\_%' OR schema_name = 'rules_scratch' OR table_name IS NULL;
SET bemi.replica_identity_full = off;
ALTER TABLE rules_users REPLICA IDENTITY DEFAULT;
RESET bemi.replica_identity_full;
SELECT problems FROM bemi_tracked_tables() WHERE table_name = 'rules_users';
SET ROLE rules_auditor;
SELECT count(*) > 0 AS reads FROM bemi_tracked_tables();
SET ROLE rules_app;
SELECT pg_temp.try($$SELECT * FROM bemi_tracked_tables()$$) AS tracked_tables;
RESET ROLE;

-- The rules of this file go; the trail keeps their history.
DELETE FROM bemi.rules;
SELECT bemi_wait();
SELECT count(*) AS rule_changes FROM bemi.changes WHERE schema = 'bemi' AND "table" = 'rules';
DROP TABLE rules_sessions, rules_users, rules_late;
DROP SCHEMA rules_scratch CASCADE;
DROP OWNED BY rules_app, rules_admin, rules_auditor, rules_etl, rules_clerk;
DROP ROLE rules_app, rules_admin, rules_auditor, rules_etl, rules_clerk;
