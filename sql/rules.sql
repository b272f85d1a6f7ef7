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
