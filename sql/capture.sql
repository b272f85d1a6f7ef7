-- The pipeline end to end: the example from the README, then the shapes of writes users make.
CREATE TABLE todo (id serial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false);
BEGIN;
SELECT bemi_set_context('{"user_id": 187234, "endpoint": "/todo", "method": "POST"}');
INSERT INTO todo (task) VALUES ('Sleep'), ('Eat'), ('Repeat');
COMMIT;
UPDATE todo SET is_completed = true WHERE task = 'Sleep' /*Bemi {"user_id": 187234, "endpoint": "/todo/complete", "method": "PUT"} Bemi*/;
DELETE FROM todo WHERE task = 'Eat';
SELECT bemi_wait();
SELECT primary_key, "table", operation, before, after, context - '_bemi' AS context,
       committed_at IS NOT NULL AS has_commit_time
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'todo' ORDER BY id;

-- The DELETE had no application context: the writer's database identity is still recorded,
-- under a reserved key that an application key cannot overwrite.
SELECT context->'_bemi'->>'application_name' AS application_name,
       context->'_bemi'->>'role' = current_user AS role_recorded
  FROM bemi.changes WHERE "table" = 'todo' AND operation = 'DELETE';
BEGIN;
SELECT bemi_set_context('{"_bemi": {"role": "forged"}, "user_id": 1}');
UPDATE todo SET task = 'Repeat!' WHERE task = 'Repeat';
COMMIT;
SELECT bemi_wait();
SELECT context->'_bemi'->>'role' = current_user AS forged_role_overridden, context->'user_id' AS user_id
  FROM bemi.changes WHERE "table" = 'todo' ORDER BY id DESC LIMIT 1;

-- Several requests in one transaction: each change takes the latest context before it.
BEGIN;
SELECT bemi_set_context('{"request_id": "r1"}');
INSERT INTO todo (task) VALUES ('first request');
SELECT bemi_set_context('{"request_id": "r2"}');
INSERT INTO todo (task) VALUES ('second request');
SELECT bemi_set_context(NULL);
INSERT INTO todo (task) VALUES ('no request');
COMMIT;
SELECT bemi_wait();
SELECT after->>'task' AS task, context - '_bemi' AS context
  FROM bemi.changes WHERE "table" = 'todo' AND operation = 'CREATE' AND id > (
       SELECT max(id) FROM bemi.changes WHERE after->>'task' = 'Repeat') ORDER BY id;

-- Session context applies to every later transaction.
SELECT bemi_set_context('{"worker": "cron"}', false);
INSERT INTO todo (task) VALUES ('by cron');
UPDATE todo SET is_completed = true WHERE task = 'by cron';
SELECT bemi_set_context(NULL, false);
SELECT bemi_wait();
SELECT operation, context - '_bemi' AS context FROM bemi.changes
 WHERE "table" = 'todo' AND (after->>'task' = 'by cron' OR before->>'task' = 'by cron') ORDER BY id;

-- Rolled back transactions and savepoints leave nothing.
BEGIN;
INSERT INTO todo (task) VALUES ('rolled back');
ROLLBACK;
BEGIN;
INSERT INTO todo (task) VALUES ('kept');
SAVEPOINT s;
SELECT bemi_set_context('{"leaked": true}');
INSERT INTO todo (task) VALUES ('rolled back to savepoint');
ROLLBACK TO SAVEPOINT s;
INSERT INTO todo (task) VALUES ('kept too');
COMMIT;
SELECT bemi_wait();
SELECT after->>'task' AS task, context - '_bemi' AS context FROM bemi.changes
 WHERE "table" = 'todo' AND after->>'task' IN ('rolled back', 'kept', 'rolled back to savepoint', 'kept too')
 ORDER BY id;

-- COPY, and changes made by triggers, are captured like any other.
CREATE TABLE todo_log (id bigserial PRIMARY KEY, todo_id int, what text);
CREATE FUNCTION todo_log_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO todo_log (todo_id, what) VALUES (NEW.id, TG_OP);
  RETURN NEW;
END $$;
CREATE TRIGGER todo_log AFTER INSERT ON todo FOR EACH ROW EXECUTE FUNCTION todo_log_trigger();
BEGIN;
SELECT bemi_set_context('{"source": "import"}');
COPY todo (task) FROM STDIN;
copied one
copied two
\.
COMMIT;
SELECT bemi_wait();
SELECT "table", operation, after - 'id' AS after, context - '_bemi' AS context FROM bemi.changes
 WHERE operation <> 'DDL' AND (("table" = 'todo' AND after->>'task' LIKE 'copied%') OR "table" = 'todo_log') ORDER BY id;

-- Primary keys: any column name, composite keys, and none at all.
CREATE TABLE accounts (account_code text PRIMARY KEY, balance numeric);
CREATE TABLE memberships (org_id int, user_id int, role text, PRIMARY KEY (org_id, user_id));
CREATE TABLE readings (sensor text, value float8);
INSERT INTO accounts VALUES ('ACME-1', 10.50);
INSERT INTO memberships VALUES (3, 14, 'admin');
INSERT INTO readings VALUES ('t1', 21.5);
UPDATE readings SET value = 22 WHERE sensor = 't1';
DELETE FROM memberships;
SELECT bemi_wait();
SELECT "table", operation, primary_key, before, after FROM bemi.changes
 WHERE operation <> 'DDL' AND "table" IN ('accounts', 'memberships', 'readings') ORDER BY id;

-- Other columns of every row.
SELECT count(*) = count(*) FILTER (WHERE database = current_database() AND schema = 'public'
                                   AND transaction_id > 0 AND position > '0/0' AND created_at >= committed_at)
       AS rows_complete
  FROM bemi.changes;

-- The worker never records its own writes.
SELECT count(*) AS own_writes FROM bemi.changes WHERE schema = 'bemi';

-- Ordinary roles cannot read or write the trail.
CREATE ROLE capture_nobody;
SET ROLE capture_nobody;
SELECT count(*) FROM bemi.changes;
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES ('x', 'x', 'x', 'CREATE', now(), 1, '0/1');
RESET ROLE;
DROP ROLE capture_nobody;
