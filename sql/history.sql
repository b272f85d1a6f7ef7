-- History: of a row, of a table over a time range, of a transaction, of a context; grouped by
-- transaction and by context key. Newest first, each change with a diff of what it changed.
SET TimeZone = 'UTC';
SET DateStyle = ISO;
\set SHOW_CONTEXT never
SELECT clock_timestamp() AS t0 \gset
CREATE TABLE hist_todo (id serial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false);
CREATE TABLE hist_members (org_id int, user_id int, role text, PRIMARY KEY (org_id, user_id));
BEGIN;
SELECT bemi_set_context('{"user_id": 4242, "endpoint": "/todo", "request_id": "r1"}');
INSERT INTO hist_todo (task) VALUES ('Sleep'), ('Eat');
INSERT INTO hist_members VALUES (3, 14, 'member');
COMMIT;
SELECT bemi_wait();
SELECT clock_timestamp() AS t1 \gset
UPDATE hist_todo SET done = true WHERE id = 1 /*Bemi {"user_id": 4242, "endpoint": "/todo/done", "request_id": "r2"} Bemi*/;
-- The table's shape changes between changes: images carry the columns of their time.
ALTER TABLE hist_todo ADD COLUMN due date;
UPDATE hist_todo SET due = '2024-01-01', task = 'Sleep well' WHERE id = 1 /*Bemi {"user_id": 7, "endpoint": "/todo/edit", "request_id": "r3"} Bemi*/;
ALTER TABLE hist_todo DROP COLUMN done;
DELETE FROM hist_todo WHERE id = 2 /*Bemi {"user_id": 7, "endpoint": "/todo/delete", "request_id": "r4"} Bemi*/;
UPDATE hist_members SET role = 'admin' /*Bemi {"user_id": 4242, "endpoint": "/members", "request_id": "r5"} Bemi*/;
SELECT bemi_wait();

-- One row, by its key as a value of its own type or as bemi.changes.primary_key has it.
SELECT operation, diff, context - '_bemi' AS context FROM bemi_row_history('hist_todo', 1);
SELECT operation, diff FROM bemi_row_history('hist_todo', '2');
SELECT operation, diff FROM bemi_row_history('hist_members', ARRAY[3, 14]);
SELECT count(*) AS same_history FROM bemi_row_history('hist_members', '[3, 14]');
SELECT count(*) AS unknown_row FROM bemi_row_history('hist_todo', 999);
-- The diff alone, for any two images.
SELECT bemi_diff('{"a": 1, "b": 2}', '{"a": 1, "b": 3, "c": null}');
-- It agrees with the plain SQL definition: values compare as jsonb's = does (1.0 = 1), nested
-- values whole, a missing column is null, NULL is {}.
CREATE FUNCTION pg_temp.sql_diff(b jsonb, a jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT coalesce(jsonb_object_agg(k, jsonb_build_array(b -> k, a -> k)), '{}')
      FROM (SELECT jsonb_object_keys(coalesce(b, '{}')) UNION SELECT jsonb_object_keys(coalesce(a, '{}'))) AS keys (k)
     WHERE (b -> k) IS DISTINCT FROM (a -> k)
$$;
SELECT b, a, bemi_diff(b, a), bemi_diff(b, a) = pg_temp.sql_diff(b, a) AS same
  FROM (VALUES ('{"n": 1.0, "s": "x"}'::jsonb, '{"n": 1, "s": "x"}'::jsonb),
               ('{"o": {"x": [1, 2]}, "l": [1]}', '{"o": {"x": [1, 2]}, "l": [1, 2]}'),
               ('{"z": null}', '{}'),
               ('{"t": true, "f": false}', '{"t": "true", "f": false}'),
               ('{"k": "a"}', NULL),
               (NULL, '{"k": "a"}'),
               (NULL, NULL),
               ('{}', '{}')) AS v (b, a);
SELECT bemi_diff('[1]', '{}');
SELECT bemi_diff('{}', '"x"');
-- A table OID that names nothing.
SELECT * FROM bemi_row_history(4294967295::oid::regclass, '1');

-- A table over a time range (both ends included).
SELECT operation, primary_key, diff FROM bemi_table_history('hist_todo', :'t1') WHERE operation <> 'DDL';
SELECT operation, primary_key FROM bemi_table_history('hist_todo', :'t0', :'t1') WHERE operation <> 'DDL';

-- A transaction.
SELECT transaction_id AS first_txn FROM bemi_row_history('hist_members', ARRAY[3, 14]) WHERE operation = 'CREATE' \gset
SELECT "table", operation, primary_key FROM bemi_transaction_history(:first_txn);

-- Everything matching a context.
SELECT "table", operation, primary_key, context->>'request_id' AS request
  FROM bemi_context_history('{"user_id": 4242}');

-- Grouped by transaction: its context, tables touched and counts.
SELECT context - '_bemi' AS context, tables, changes, creates, updates, deletes
  FROM bemi_transactions(:'t0');
-- Grouped by any context key: per user, per endpoint.
SELECT value AS user_id, transactions, changes, tables FROM bemi_context_groups('user_id', :'t0');
SELECT value AS endpoint, changes FROM bemi_context_groups('endpoint', :'t0', :'t1');

-- Bad input.
SELECT * FROM bemi_row_history('no_such_table', 1);
SELECT * FROM bemi_row_history(NULL, 1);
CREATE VIEW hist_view AS SELECT * FROM hist_todo;
SELECT * FROM bemi_table_history('hist_view');
SELECT count(*) AS null_context FROM bemi_context_history(NULL);

-- Privileges: the trail of a table is readable through these functions exactly by roles that
-- can SELECT the table (and see all of its rows).
CREATE ROLE hist_reader;
GRANT SELECT ON hist_todo TO hist_reader;
CREATE SCHEMA hist_evil AUTHORIZATION hist_reader;
SET ROLE hist_reader;
SELECT count(*) AS todo_changes FROM bemi_row_history('hist_todo', 1);
SELECT * FROM bemi_row_history('hist_members', ARRAY[3, 14]);
SELECT DISTINCT "table" FROM bemi_context_history('{"user_id": 4242}');
SELECT tables FROM bemi_transactions(:'t0');
SELECT bemi_unreadable_changes(transaction_id => :first_txn);
-- The readers behind the functions cannot be named, and the trail itself stays closed.
SELECT * FROM bemi._row_trail('public', 'hist_members', ARRAY['[3, 14]']);
SELECT count(*) FROM bemi.changes;
-- Nor can a search_path of the caller's choosing swap a function used in the check.
CREATE FUNCTION hist_evil.has_table_privilege(oid, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
SET search_path = hist_evil, pg_catalog, public;
SELECT DISTINCT "table" FROM bemi_context_history('{"user_id": 4242}');
RESET search_path;
RESET ROLE;
-- Row-level security hides rows from some roles: the trail would show them, so it is refused.
GRANT SELECT ON hist_members TO hist_reader;
ALTER TABLE hist_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_org ON hist_members USING (org_id = 1);
SET ROLE hist_reader;
SELECT * FROM bemi_row_history('hist_members', ARRAY[3, 14]);
SELECT DISTINCT "table" FROM bemi_context_history('{"user_id": 4242}');
RESET ROLE;
-- Members of bemi_reader may read bemi.changes itself, so these functions show them every table.
GRANT bemi_reader TO hist_reader;
SET ROLE hist_reader;
SELECT count(*) AS members_changes FROM bemi_row_history('hist_members', ARRAY[3, 14]);
SELECT DISTINCT "table" FROM bemi_context_history('{"user_id": 4242}') ORDER BY 1;
RESET ROLE;
REVOKE bemi_reader FROM hist_reader;
DROP SCHEMA hist_evil CASCADE;
DROP VIEW hist_view;
REVOKE ALL ON hist_todo, hist_members FROM hist_reader;
DROP OWNED BY hist_reader;
DROP ROLE hist_reader;

-- Contexts are kept once per transaction (bemi.contexts) and found there; each change keeps its
-- own context in bemi.changes, as ever (issue 14).
CREATE TABLE hist_ctx (id int PRIMARY KEY, v int NOT NULL);
BEGIN;
SELECT bemi_set_context('{"request_id": "ctx-a", "user_id": 1}');
INSERT INTO hist_ctx SELECT g, 0 FROM generate_series(1, 300) g;
SELECT bemi_set_context('{"request_id": "ctx-b", "user_id": 1}');
UPDATE hist_ctx SET v = 1 WHERE id <= 5;
COMMIT;
INSERT INTO hist_ctx VALUES (1000, 0);
SELECT bemi_wait();
SELECT context - '_bemi' AS context, operation, count(*) FROM bemi.changes WHERE "table" = 'hist_ctx' GROUP BY 1, 2 ORDER BY 3;
-- One row per run of a transaction's changes with one context (here with bemi's own keys, _bemi,
-- taken out for the listing); none for {}.
SELECT x.context - '_bemi' AS context, count(*)
  FROM bemi.contexts x WHERE x.transaction_id IN (SELECT transaction_id FROM bemi.changes WHERE "table" = 'hist_ctx')
 GROUP BY 1 ORDER BY 2, 1;
SELECT count(*) AS contexts_of_no_context FROM bemi.contexts WHERE context = '{}';
SELECT count(*) AS a FROM bemi_context_history('{"request_id": "ctx-a"}');
SELECT count(*) AS b FROM bemi_context_history('{"request_id": "ctx-b"}');
SELECT count(*) AS user_1 FROM bemi_context_history('{"user_id": 1}') WHERE "table" = 'hist_ctx';
SELECT count(*) AS every_change FROM bemi_context_history('{}') WHERE "table" = 'hist_ctx';
SELECT count(*) AS none FROM bemi_context_history('{"request_id": "ctx-z"}');
SELECT bemi_unreadable_changes(NULL, '{"user_id": 1}');
-- The same when the worker writes through INSERT statements (a trigger of the user's on
-- bemi.changes): bemi's own trigger notes the contexts then.
CREATE FUNCTION hist_ctx_seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER hist_ctx_seen BEFORE INSERT ON bemi.changes FOR EACH ROW EXECUTE FUNCTION hist_ctx_seen();
BEGIN;
SELECT bemi_set_context('{"request_id": "ctx-c"}');
UPDATE hist_ctx SET v = 2 WHERE id <= 3;
COMMIT;
SELECT bemi_wait();
DROP TRIGGER hist_ctx_seen ON bemi.changes;
DROP FUNCTION hist_ctx_seen();
SELECT count(*) AS c FROM bemi_context_history('{"request_id": "ctx-c"}');
SELECT count(*) AS c_contexts FROM bemi.contexts WHERE context @> '{"request_id": "ctx-c"}';
-- The worker writes bemi.contexts directly, as bemi.changes, only while it is as bemi made it.
-- A trigger of the user's on it: the contexts go through an INSERT statement, which fires it.
CREATE TABLE hist_ctx_log (context jsonb);
CREATE FUNCTION hist_ctx_logged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.hist_ctx_log VALUES (NEW.context - '_bemi'); RETURN NULL; END $$;
CREATE TRIGGER hist_ctx_logged AFTER INSERT ON bemi.contexts FOR EACH ROW EXECUTE FUNCTION hist_ctx_logged();
BEGIN;
SELECT bemi_set_context('{"request_id": "ctx-d"}');
UPDATE hist_ctx SET v = 3 WHERE id <= 3;
SELECT bemi_set_context('{"request_id": "ctx-e"}');
UPDATE hist_ctx SET v = 3 WHERE id = 4;
COMMIT;
SELECT bemi_wait();
SELECT context FROM hist_ctx_log WHERE context ? 'request_id' ORDER BY 1;
DROP TRIGGER hist_ctx_logged ON bemi.contexts;
DROP FUNCTION hist_ctx_logged();
DROP TABLE hist_ctx_log;
-- A column added to it: the INSERT statement fills it with its default.
ALTER TABLE bemi.contexts ADD COLUMN noted_by text DEFAULT 'by statement';
BEGIN;
SELECT bemi_set_context('{"request_id": "ctx-f"}');
UPDATE hist_ctx SET v = 4 WHERE id <= 2;
COMMIT;
SELECT bemi_wait();
SELECT context - '_bemi' AS context, noted_by FROM bemi.contexts WHERE context @> '{"request_id": "ctx-f"}';
-- Dropped again (a dropped column stays in its row form), written directly again.
SET bemi.allow_drop = on;
ALTER TABLE bemi.contexts DROP COLUMN noted_by;
RESET bemi.allow_drop;
BEGIN;
SELECT bemi_set_context('{"request_id": "ctx-g"}');
UPDATE hist_ctx SET v = 5 WHERE id <= 2;
COMMIT;
SELECT bemi_wait();
SELECT count(*) AS g FROM bemi_context_history('{"request_id": "ctx-g"}');
SELECT context - '_bemi' AS context FROM bemi.contexts WHERE context @> '{"request_id": "ctx-g"}';
-- bemi.changes indexes no context itself any more: its writer's dearest index (bench/results-capture.md).
SELECT count(*) AS gin_on_changes FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
 WHERE i.indrelid = 'bemi.changes_default'::regclass AND a.amname = 'gin';
-- The contexts are the trail's: closed to other roles, which cannot write them either.
CREATE ROLE hist_ctx_role;
SET ROLE hist_ctx_role;
SELECT count(*) FROM bemi.contexts;
INSERT INTO bemi.contexts VALUES (1, now(), '{"forged": true}');
SELECT bemi_rebuild_contexts();
RESET ROLE;
DROP ROLE hist_ctx_role;
-- bemi.contexts filled again from the trail (a dump made before 0.5.0 has none): superuser only.
DELETE FROM bemi.contexts WHERE context @> '{"request_id": "ctx-a"}';
SELECT count(*) AS a_lost FROM bemi_context_history('{"request_id": "ctx-a"}');
SELECT bemi_rebuild_contexts() > 0 AS rebuilt;
SELECT count(*) AS a_found FROM bemi_context_history('{"request_id": "ctx-a"}');
SELECT count(*) AS no_doubles FROM (SELECT transaction_id, committed_at, context FROM bemi.contexts
                                     GROUP BY 1, 2, 3 HAVING count(*) > 1) d;
DROP TABLE hist_ctx;
