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
SELECT primary_key, "table", operation, before, after, context, committed_at FROM bemi.changes ORDER BY id;
SELECT worker_state, slot_name, lag_bytes, changes_written FROM bemi_status();
