-- bemi_status() reports the worker, its slot, lag and problems; bemi_wait() waits for the worker.
SELECT database = current_database() AS database_ok, worker_pid > 0 AS has_worker, worker_state,
       slot_name LIKE 'bemi\_%' AS slot_named, slot_active, lag_bytes >= 0 AS lag_ok,
       lag_seconds >= 0 AS lag_seconds_ok, retained_wal_bytes >= 0 AS retained_ok,
       wal_status, last_error, settings_problems
  FROM bemi_status();

-- The worker owns a logical slot with the bemi plugin.
SELECT plugin, slot_type, active FROM pg_replication_slots
 WHERE slot_name = (SELECT slot_name FROM bemi_status());

-- bemi_wait() with no change pending returns at once; a past LSN too.
SELECT bemi_wait();
SELECT bemi_wait('0/0');
-- Progress without changes: WAL that bemi does not record still moves the worker forward.
CREATE UNLOGGED TABLE status_unlogged (id int);
INSERT INTO status_unlogged SELECT generate_series(1, 10);
SELECT bemi_wait(pg_current_wal_lsn(), '30 seconds');
-- A target the worker cannot reach in time is a clear error.
DO $$
BEGIN
  PERFORM bemi_wait(pg_current_wal_lsn() + 100000000, '200 milliseconds');
EXCEPTION WHEN query_canceled THEN
  RAISE NOTICE '%: %', SQLSTATE, regexp_replace(SQLERRM, '[0-9A-F]+/[0-9A-F]+', 'X/X');
END $$;

-- Tables whose images would be incomplete are listed.
SET bemi.replica_identity_full = off;
CREATE TABLE status_default_identity (id int PRIMARY KEY, v text);
RESET bemi.replica_identity_full;
CREATE TABLE status_full_identity (id int PRIMARY KEY, v text);
SELECT relname, relreplident FROM pg_class WHERE relname LIKE 'status\_%identity' ORDER BY 1;
SELECT 'public.status_default_identity' = ANY (incomplete_image_tables) AS listed,
       'public.status_full_identity' = ANY (incomplete_image_tables) AS full_listed
  FROM bemi_status();
-- With default identity, an UPDATE has no before image and a DELETE only the key.
INSERT INTO status_default_identity VALUES (1, 'x');
UPDATE status_default_identity SET v = 'y';
DELETE FROM status_default_identity;
SELECT bemi_wait();
SELECT operation, before, after FROM bemi.changes WHERE "table" = 'status_default_identity' ORDER BY id;

-- Tables without a primary key are recorded (primary_key NULL) and listed.
CREATE TABLE status_no_pk (v int);
SELECT 'public.status_no_pk' = ANY (tables_without_primary_key) AS listed,
       'public.status_full_identity' = ANY (tables_without_primary_key) AS pk_listed
  FROM bemi_status();

-- Asynchronously committed writes are covered by bemi_wait() too.
SET synchronous_commit = off;
CREATE TABLE status_async (id int PRIMARY KEY);
INSERT INTO status_async SELECT generate_series(1, 200);
SELECT bemi_wait();
SELECT count(*) FROM bemi.changes WHERE "table" = 'status_async';
RESET synchronous_commit;
