-- Snapshots (issue 15): bemi_snapshot records every row a table holds as a SNAPSHOT change, read
-- in primary-key order in chunks by a background worker. Who may take one, what it records, and
-- what history, time travel and reverts make of it. (Concurrent writes and crashes: test/t/013_snapshot.pl.)
\set SHOW_CONTEXT never
CREATE ROLE snap_admin IN ROLE bemi_admin;
CREATE ROLE snap_nobody;

CREATE TABLE snap_items (id int PRIMARY KEY, name text, price numeric, tags text[], made date);
INSERT INTO snap_items SELECT g, 'item ' || g, g * 1.5, ARRAY['t' || g], date '2024-01-01' + g FROM generate_series(1, 25) g;
UPDATE snap_items SET name = 'renamed' WHERE id = 7;

-- 25 rows in chunks of 10: three chunks, and the job says so.
SELECT bemi_snapshot('snap_items', chunk_size => 10) AS job \gset
SELECT "table", state, rows, last_key, chunk_size, requested_by = current_user AS by_me,
       finished_at >= started_at AS finished, error
  FROM bemi.snapshots WHERE id = :job;
-- Every row once, its image what to_jsonb gives, keyed like any change, in the job's context.
SELECT count(*) AS snapshots, count(DISTINCT primary_key) AS keys,
       count(DISTINCT transaction_id) AS chunks,
       bool_and("before" = '{}') AS no_before,
       bool_and(context -> 'bemi_snapshot' = to_jsonb(:job)) AS job_context,
       bool_and(context -> '_bemi' ->> 'application_name' = 'bemi snapshot') AS identity
  FROM bemi.changes WHERE "table" = 'snap_items' AND operation = 'SNAPSHOT';
SELECT count(*) AS differ
  FROM snap_items i FULL JOIN (SELECT * FROM bemi.changes WHERE "table" = 'snap_items' AND operation = 'SNAPSHOT') c
    ON c.primary_key = i.id::text
 WHERE c."after" IS DISTINCT FROM to_jsonb(i);
SELECT "after" FROM bemi.changes WHERE "table" = 'snap_items' AND operation = 'SNAPSHOT' AND primary_key = '7';
SELECT bemi_snapshot_finished_at('snap_items') IS NOT NULL AS finished,
       bemi_snapshot_finished_at('snap_items', '-infinity') AS before_any;

-- History shows a snapshot as what the row held then; reverts leave it alone (it changed nothing).
SELECT operation, diff FROM bemi_row_history('snap_items', 7) ORDER BY id;
SELECT now() AS after_snapshot \gset
UPDATE snap_items SET price = 0 WHERE id = 7;
DELETE FROM snap_items WHERE id = 8;
SELECT count(*) FROM bemi_revert_changes(ARRAY(SELECT id FROM bemi.changes WHERE "table" = 'snap_items' AND operation = 'SNAPSHOT'));
SELECT action, primary_key FROM bemi_revert_table('snap_items', :'after_snapshot', dry_run => true) ORDER BY step;
-- Time travel to a moment after the snapshot: the first change since (not the snapshot) knows the row.
SELECT id, name, price FROM bemi_as_of(NULL::snap_items, :'after_snapshot') WHERE id IN (7, 8) ORDER BY id;
SELECT price FROM bemi_row_as_of(NULL::snap_items, 7, :'after_snapshot');

-- A composite key of text and integer, over many chunks; a partitioned table, recorded as a whole.
CREATE TABLE snap_pairs (region text, n int, v text, PRIMARY KEY (region, n));
INSERT INTO snap_pairs SELECT r, g, r || g FROM unnest(ARRAY['north', 'south', 'east']) r, generate_series(1, 7) g;
SELECT bemi_snapshot('snap_pairs', chunk_size => 4) > 0 AS taken;
SELECT count(*) AS snapshots, count(DISTINCT primary_key) AS keys, min(primary_key), max(primary_key)
  FROM bemi.changes WHERE "table" = 'snap_pairs' AND operation = 'SNAPSHOT';
CREATE TABLE snap_parts (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);
CREATE TABLE snap_parts_low PARTITION OF snap_parts FOR VALUES FROM (0) TO (100);
CREATE TABLE snap_parts_high PARTITION OF snap_parts FOR VALUES FROM (100) TO (200);
INSERT INTO snap_parts VALUES (1, 'low'), (150, 'high'), (99, 'low too');
SELECT bemi_snapshot('snap_parts', chunk_size => 2) > 0 AS taken;
SELECT "table", primary_key, "after" FROM bemi.changes WHERE "table" LIKE 'snap_parts%' AND operation = 'SNAPSHOT' ORDER BY id;
-- A partition alone is refused: its changes are recorded under the partitioned table.
SELECT bemi_snapshot('snap_parts_high');
-- An empty table: a job with no rows, done.
CREATE TABLE snap_empty (id int PRIMARY KEY);
SELECT bemi_snapshot('snap_empty') AS empty_job \gset
SELECT state, rows, last_key FROM bemi.snapshots WHERE id = :empty_job;

-- Tracking rules apply as to any change: a masked column is masked in the snapshot, and an
-- ignored table's snapshot reads its rows (the job counts them) but records none.
CREATE TABLE snap_users (id int PRIMARY KEY, email text, password text);
INSERT INTO snap_users VALUES (1, 'ann@example.com', 'secret');
SELECT bemi_mask('public.snap_users', '{password}') AS mask_rule \gset
SELECT bemi_snapshot('snap_users') > 0 AS taken;
SELECT "after" FROM bemi.changes WHERE "table" = 'snap_users' AND operation = 'SNAPSHOT';
SELECT bemi_drop_rule(:mask_rule);
CREATE TABLE snap_ignored (id int PRIMARY KEY);
INSERT INTO snap_ignored VALUES (1), (2);
SELECT bemi_ignore('public.snap_ignored') AS ignore_rule \gset
SELECT bemi_snapshot('snap_ignored') AS ignored_job \gset
SELECT state, rows FROM bemi.snapshots WHERE id = :ignored_job;
SELECT count(*) FROM bemi.changes WHERE "table" = 'snap_ignored' AND operation = 'SNAPSHOT';
SELECT bemi_drop_rule(:ignore_rule);

-- What cannot be snapshotted, and who may not.
CREATE TABLE snap_nokey (a int);
CREATE UNLOGGED TABLE snap_unlogged (id int PRIMARY KEY);
CREATE VIEW snap_view AS SELECT * FROM snap_items;
SELECT bemi_snapshot('snap_nokey');
SELECT bemi_snapshot('snap_unlogged');
SELECT bemi_snapshot('snap_view');
SELECT bemi_snapshot('bemi.rules');
SELECT bemi_snapshot('snap_items', chunk_size => 0);
SELECT bemi_snapshot('snap_items', chunk_size => 1000001);
SELECT bemi_snapshot('snap_items', wait => NULL);
CREATE TEMP TABLE snap_temp (id int PRIMARY KEY);
SELECT bemi_snapshot('snap_temp');
DROP TABLE snap_temp;
SELECT bemi_snapshot(NULL);
BEGIN;
INSERT INTO snap_empty VALUES (1);
SELECT bemi_snapshot('snap_empty');
ROLLBACK;
BEGIN;
LOCK TABLE snap_empty IN EXCLUSIVE MODE;
SELECT bemi_snapshot('snap_empty');
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT bemi_snapshot('snap_empty');
ROLLBACK;
-- Only superusers and bemi_admin, and only of a table whose every row they may read.
GRANT SELECT ON snap_items TO snap_nobody;
SET ROLE snap_nobody;
SELECT bemi_snapshot_finished_at('snap_pairs');
SELECT bemi_snapshot_finished_at('snap_items') IS NOT NULL AS finished;
SELECT bemi_snapshot('snap_items');
SELECT bemi._snapshot_start('snap_items', true, 10);
SELECT * FROM bemi.snapshots;
RESET ROLE;
-- (The function checks for itself too, whoever is let call it.)
GRANT USAGE ON SCHEMA bemi TO snap_nobody;
GRANT EXECUTE ON FUNCTION bemi._snapshot_start(regclass, boolean, integer) TO snap_nobody;
SET ROLE snap_nobody;
SELECT bemi._snapshot_start('snap_items', true, 10);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION bemi._snapshot_start(regclass, boolean, integer) FROM snap_nobody;
REVOKE USAGE ON SCHEMA bemi FROM snap_nobody;
SET ROLE snap_admin;
SELECT bemi_snapshot('snap_items');
RESET ROLE;
-- Row-level security: a snapshot records every row, so a role that policies hide rows from is refused;
-- a superuser's snapshot holds them all.
CREATE TABLE snap_secret (id int PRIMARY KEY, owner text);
INSERT INTO snap_secret VALUES (1, 'snap_admin'), (2, 'someone else');
ALTER TABLE snap_secret ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON snap_secret USING (owner = current_user);
GRANT SELECT ON snap_secret TO snap_admin;
SET ROLE snap_admin;
SELECT count(*) FROM snap_secret;
SELECT bemi_snapshot('snap_secret');
RESET ROLE;
SELECT bemi_snapshot('snap_secret') > 0 AS taken;
SELECT count(*) FROM bemi.changes WHERE "table" = 'snap_secret' AND operation = 'SNAPSHOT';
-- A member of bemi_admin who may read every row takes one.
GRANT SELECT ON snap_pairs TO snap_admin;
SET ROLE snap_admin;
SELECT bemi_snapshot('snap_pairs') > 0 AS taken;
RESET ROLE;
SELECT CASE WHEN requested_by = current_user THEN 'me' ELSE requested_by END AS requested_by, state, rows
  FROM bemi.snapshots WHERE "table" = 'snap_pairs' ORDER BY id;

-- A chunk only counts when bemi signed it for its own transaction: one emitted by SQL is ignored.
SELECT pg_logical_emit_message(true, 'bemi_snapshot', 'BEMISNAP1') IS NOT NULL AS emitted;
SELECT pg_logical_emit_message(true, 'bemi_snapshot', 'bemi:1:' || repeat('0', 64) || ':BEMISNAP1') IS NOT NULL AS emitted;
SELECT bemi_wait();
SELECT count(*) FROM bemi.changes WHERE operation = 'SNAPSHOT';

DROP TABLE snap_items, snap_pairs, snap_parts, snap_empty, snap_users, snap_ignored, snap_nokey, snap_unlogged, snap_secret CASCADE;
DROP ROLE snap_admin;
DROP ROLE snap_nobody;
