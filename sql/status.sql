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
SELECT operation, before, after FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'status_default_identity' ORDER BY id;

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
SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'status_async';
RESET synchronous_commit;

-- Changes the tracking rules keep out are counted by kind of rule, as the worker skips them.
CREATE ROLE status_etl;
CREATE TABLE status_skipped (id int PRIMARY KEY, v text, updated_at int);
CREATE TABLE status_ignored (id int PRIMARY KEY);
GRANT ALL ON status_skipped TO status_etl;
INSERT INTO status_skipped VALUES (1, 'a', 0);
SELECT bemi_ignore('public.status_ignored') AS r_table, bemi_ignore('public.status_skipped', '{updated_at}') AS r_columns,
       bemi_ignore_writer(role => 'status_etl') AS r_writer \gset
SELECT bemi_wait();
SELECT skipped_table_rules AS t0, skipped_column_rules AS c0, skipped_writer_rules AS w0 FROM bemi_status() \gset
INSERT INTO status_ignored VALUES (1), (2);
TRUNCATE status_ignored;
UPDATE status_skipped SET updated_at = 1;
SET ROLE status_etl;
UPDATE status_skipped SET v = 'b';
RESET ROLE;
UPDATE status_skipped SET v = 'c';
SELECT bemi_wait();
SELECT skipped_table_rules - :t0 AS table_rules, skipped_column_rules - :c0 AS column_rules,
       skipped_writer_rules - :w0 AS writer_rules
  FROM bemi_status();
SELECT operation, after->>'v' AS v FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'status_skipped' ORDER BY id;
-- A session reading a slot with the plugin applies the rules but counts nothing.
SELECT 'init' FROM pg_create_logical_replication_slot('status_slot', 'bemi');
UPDATE status_skipped SET updated_at = 2;
SELECT count(*) FROM pg_logical_slot_get_changes('status_slot', NULL, NULL);
SELECT pg_drop_replication_slot('status_slot');
SELECT bemi_wait();
SELECT skipped_column_rules - :c0 AS column_rules FROM bemi_status();
DELETE FROM bemi.rules WHERE id IN (:r_table, :r_columns, :r_writer);
DROP TABLE status_skipped, status_ignored;
DROP OWNED BY status_etl;
DROP ROLE status_etl;
-- The trail's rows are counted in the cumulative statistics like any backend's writes: autovacuum
-- vacuums and analyzes bemi.changes by these counts (left at zero, the trail was never
-- auto-analyzed, never marked all-visible and left to an anti-wraparound vacuum).
CREATE FUNCTION pg_temp.trail_inserts() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables
     WHERE schemaname = 'bemi' AND relname LIKE 'changes%' $$;
CREATE FUNCTION pg_temp.wait_trail_inserts(want bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        IF pg_temp.trail_inserts() >= want THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN false;
END $$;
SELECT pg_temp.trail_inserts() AS ins0 \gset
CREATE TABLE status_counted (id int PRIMARY KEY);
-- 5000 changes in one transaction: full batches, which the writers write (bemi.writers).
INSERT INTO status_counted SELECT generate_series(1, 5000);
SELECT bemi_wait();
SELECT pg_temp.wait_trail_inserts(:ins0 + 5000) AS trail_rows_counted;
SELECT n_mod_since_analyze > 0 AS analyze_sees_them, n_ins_since_vacuum > 0 AS vacuum_sees_them
  FROM pg_stat_user_tables WHERE relid = 'bemi.changes_default'::regclass;
DROP TABLE status_counted;
