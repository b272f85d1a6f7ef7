\pset footer off
CREATE EXTENSION bemi;
CREATE TABLE todo (id serial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false);
BEGIN;
SELECT bemi_set_context('{"user_id": 187234, "endpoint": "/todo", "method": "POST"}');
INSERT INTO todo (task) VALUES ('Sleep'), ('Eat'), ('Repeat');
COMMIT;
UPDATE todo SET is_completed = true WHERE task = 'Sleep' /*Bemi {"user_id": 187234, "endpoint": "/todo/complete", "method": "PUT"} Bemi*/;
DELETE FROM todo WHERE task = 'Eat';
SELECT bemi_wait();
SELECT primary_key, "table", operation, before, after, context, committed_at FROM bemi.changes WHERE operation <> 'DDL' ORDER BY id;
-- The CREATE TABLE is in the trail too, as a schema change (operation DDL), with who ran it.
SELECT "table", operation, after->>'command_tag' AS command, after->>'statement' AS statement, context->'_bemi'->>'role' AS role
  FROM bemi.changes WHERE operation = 'DDL' AND "table" = 'todo';
-- What is recorded: a password digest never reaches the trail, an updated_at-only UPDATE is noise.
SELECT bemi_mask('public.users', '{password_digest}', 'hash');
SELECT bemi_ignore('*.*', '{updated_at}');
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, password_digest text, updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO users (email, password_digest) VALUES ('ada@example.com', '$2a$12$R9h/cIPz0gi.URNNX3kh2O');
UPDATE users SET updated_at = now();
UPDATE users SET email = 'ada@lovelace.example';
SELECT bemi_wait();
SELECT "table", operation, before, after FROM bemi.changes WHERE "table" = 'users' ORDER BY id;
SELECT worker_state, slot_name, lag_bytes, changes_written, skipped_column_rules FROM bemi_status();
