-- Who can do what. Applications write and attach context; only the trail's owner and members of
-- bemi_reader read it; nobody but superusers can change it or stop capture.
CREATE ROLE sec_app LOGIN;
CREATE ROLE sec_auditor LOGIN IN ROLE bemi_reader;
CREATE TABLE sec_orders (id int PRIMARY KEY, amount int);
GRANT ALL ON sec_orders TO sec_app;

-- An application role writes with context; its role is recorded.
SET ROLE sec_app;
BEGIN;
SELECT bemi_set_context('{"user_id": 42}');
INSERT INTO sec_orders VALUES (1, 100);
COMMIT;
SELECT bemi_wait();
-- It cannot read, change or erase the trail, nor stop capture.
SELECT count(*) FROM bemi.changes;
UPDATE bemi.changes SET context = '{}';
DELETE FROM bemi.changes;
TRUNCATE bemi.changes;
SELECT * FROM bemi_status();
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE plugin = 'bemi';
SELECT bemi._start_worker();
RESET ROLE;
SELECT worker_pid FROM bemi_status() \gset
SET ROLE sec_app;
SELECT pg_terminate_backend(:worker_pid);
RESET ROLE;

-- An auditor granted bemi_reader reads it, but cannot change it either.
SET ROLE sec_auditor;
SELECT operation, after, context - '_bemi' AS context, context->'_bemi'->>'role' AS role
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'sec_orders';
SELECT worker_state FROM bemi_status();
DELETE FROM bemi.changes;
RESET ROLE;

DROP TABLE sec_orders;
DROP ROLE sec_auditor;
REVOKE ALL ON SCHEMA public FROM sec_app;
DROP ROLE sec_app;
