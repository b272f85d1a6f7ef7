-- Retention: bemi.changes is partitioned by committed_at; the worker makes partitions ahead of
-- time and drops those older than the retention. Nothing is lost at the boundaries.
SET TimeZone = 'UTC';
-- A fresh trail: what the earlier tests recorded does not matter here. This test drops the trail,
-- and later makes up changes of its own: it says it means it (docs/security.md). Not before: a
-- session with bemi.allow_trail_changes on is itself left out of the trail.
SET bemi.allow_drop = on;
DROP EXTENSION bemi;
CREATE EXTENSION bemi;
-- Dates are shown relative to the start of today (UTC), as "d+N".
CREATE FUNCTION pg_temp.d(t timestamptz) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN t IS NULL THEN NULL WHEN x = trunc(x) THEN 'd' || to_char(x, 'SGFM990')
                ELSE 'd' || to_char(x, 'SGFM990.00') END
      FROM (SELECT extract(epoch FROM t - date_trunc('day', now())) / 86400 AS x) s
$$;
-- An action of the upkeep with its moments shown that way, and partition names as N.
CREATE FUNCTION pg_temp.norm(action text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    m text[];
BEGIN
    FOR m IN SELECT regexp_matches(action, '\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00', 'g') LOOP
        action := replace(action, m[1], pg_temp.d(m[1]::timestamptz));
    END LOOP;
    RETURN regexp_replace(action, '\d{8}(_\d{6})?', 'N', 'g');
END $$;
CREATE FUNCTION pg_temp.parts() RETURNS TABLE (partition_name text, from_day text, to_day text, changes bigint)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM bemi_partitions() LOOP
        partition_name := regexp_replace(p.partition_name, '\d{8}(_\d{6})?$', 'N');
        from_day := pg_temp.d(p.from_time);
        to_day := pg_temp.d(p.to_time);
        EXECUTE format('SELECT count(*) FROM %s', p.partition_name) INTO changes;
        RETURN NEXT;
    END LOOP;
END $$;

-- Until retention is set up, every change is in the default partition.
CREATE TABLE kept (id int PRIMARY KEY, note text);
INSERT INTO kept VALUES (1, 'one'), (2, 'two');
SELECT bemi_wait();
SELECT * FROM pg_temp.parts();

-- Bad settings are refused.
SELECT bemi_set_retention('3 days', NULL);
SELECT bemi_set_retention('3 days', '100 milliseconds');
SELECT bemi_set_retention('-1 day');
SELECT bemi_set_retention('1 hour', '1 day');
SELECT bemi_set_retention('1 year', '1 month 2 days');
SELECT count(*) FROM bemi.retention;

-- Turning it on makes today's partition and three more, and moves today's changes into it.
SELECT pg_temp.norm(a) AS action
  FROM bemi_set_retention('10 days') a;
SELECT retention, partition_interval FROM bemi.retention;
SELECT * FROM pg_temp.parts();
-- New changes go to today's partition.
INSERT INTO kept VALUES (3, 'three');
SELECT bemi_wait();
SELECT id, operation, pg_temp.d(date_trunc('day', committed_at)) AS day,
       regexp_replace(tableoid::regclass::text, '\d{8}', 'N') AS stored_in
  FROM bemi.changes WHERE "table" = 'kept' ORDER BY id;
SELECT count(*) FROM bemi.changes_default;

-- The steps below call the upkeep as of other moments. Each runs in a transaction, so that the
-- worker's own upkeep (as of now) waits and does not mix in. Their changes are made up.
SET bemi.allow_trail_changes = on;
-- A change whose moment has no partition yet (a clock far ahead, say) lands in the default
-- partition, and moves into the partition made for its range later.
BEGIN;
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES (current_database(), 'public', 'ahead', 'CREATE', date_trunc('day', now()) + interval '5 days 1 hour', 1, '0/1'),
       (current_database(), 'public', 'ahead', 'CREATE', date_trunc('day', now()) + interval '6 days', 1, '0/1');
SELECT count(*) FROM bemi.changes_default;
SELECT pg_temp.norm(a) AS action
  FROM unnest((bemi._maintain_changes(now() + interval '4 days')).actions) a;
SELECT count(*) FROM bemi.changes_default;
SELECT pg_temp.d(committed_at), regexp_replace(tableoid::regclass::text, '\d{8}', 'N') AS stored_in
  FROM bemi.changes WHERE "table" = 'ahead' ORDER BY committed_at;
-- Boundaries: a change exactly at a partition's lower bound is in that partition.
SELECT count(*) FROM bemi.changes c, bemi_partitions() p
 WHERE c."table" = 'ahead' AND c.tableoid = p.partition_name::regclass AND c.committed_at = p.from_time;
DELETE FROM bemi.changes WHERE "table" = 'ahead';
COMMIT;

-- Old changes: a partition past the retention is dropped whole; old changes in the default
-- partition are deleted.
BEGIN;
SELECT count(*) AS made FROM unnest((bemi._maintain_changes(now() - interval '20 days')).actions);
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position, context)
SELECT current_database(), 'public', 'old', 'CREATE', date_trunc('day', now()) - interval '20 days' + g * interval '1 hour', 1, '0/1',
       '{"request": "old"}'
  FROM generate_series(0, 23) g;
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position, context)
VALUES (current_database(), 'public', 'old', 'CREATE', now() - interval '40 days', 1, '0/1', '{"request": "old"}');
SELECT regexp_replace(tableoid::regclass::text, '\d{8}', 'N') AS stored_in, count(*)
  FROM bemi.changes WHERE "table" = 'old' GROUP BY 1 ORDER BY 1;
-- Their contexts, once per transaction and commit time (bemi.contexts).
SELECT count(*) AS old_contexts FROM bemi.contexts WHERE context @> '{"request": "old"}';
COMMIT;
SELECT count(*) >= 0 FROM bemi_maintain_changes();
SELECT count(*) AS old_changes_left FROM bemi.changes WHERE "table" = 'old';
-- Their contexts went with them.
SELECT count(*) AS old_contexts_left FROM bemi.contexts WHERE context @> '{"request": "old"}';
SELECT count(*) AS kept_changes_left FROM bemi.changes WHERE "table" = 'kept';
SELECT * FROM pg_temp.parts();
-- Tracking began today, after what was dropped: time travel still starts there.
SELECT bemi_tracking_started_at() > now() - interval '1 hour' AS trail_starts_today;
SELECT id, note FROM bemi_as_of(NULL::kept, now()) ORDER BY id;

-- Partitions are superuser business; their list is for bemi_reader too.
CREATE ROLE retention_user;
SET ROLE retention_user;
SELECT bemi_set_retention('1 day');
SELECT bemi_maintain_changes();
SELECT count(*) FROM bemi_partitions();
RESET ROLE;
GRANT bemi_reader TO retention_user;
SET ROLE retention_user;
SELECT count(*) > 1 FROM bemi_partitions();
RESET ROLE;
DROP ROLE retention_user;

-- Switching to monthly partitions keeps the daily ones and fills around them.
BEGIN;
SELECT count(*) > 0 FROM bemi_set_retention(NULL, '1 month');
SELECT count(*) FILTER (WHERE from_time < lag_to) AS overlaps, count(*) FILTER (WHERE from_time > lag_to) AS gaps
  FROM (SELECT *, lag(to_time) OVER (ORDER BY from_time) AS lag_to FROM bemi_partitions()
         WHERE from_time >= date_trunc('day', now())) p;
SELECT max(to_time) >= now() + interval '2 months' AS months_ahead FROM bemi_partitions();
ROLLBACK;

-- A worker back after a long stop (here: upkeep as of 30 days from now) makes partitions for
-- the time it missed, drops what is past the retention, and time travel starts at the cut.
BEGIN;
SELECT pg_temp.norm(a) AS action
  FROM unnest((bemi._maintain_changes(now() + interval '30 days')).actions) a;
SELECT * FROM pg_temp.parts();
SELECT pg_temp.d(bemi_tracking_started_at()) AS trail_starts;
DO $$
BEGIN
    PERFORM * FROM bemi_as_of(NULL::kept, now());
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE NOTICE '%', regexp_replace(SQLERRM, 'as of .*:', 'as of now:');
END $$;
ROLLBACK;

-- Turning it off leaves the partitions; no more are made.
SELECT bemi_reset_retention();
SELECT count(*) FROM bemi.retention;
SELECT * FROM bemi_maintain_changes();

-- DROP EXTENSION takes the worker-made partitions with it.
DROP TABLE kept;
DROP EXTENSION bemi;
SELECT count(*) FROM pg_class WHERE relname LIKE 'changes\_%';
CREATE EXTENSION bemi;
SELECT partition_name, from_time FROM bemi_partitions();
