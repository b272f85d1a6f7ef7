-- Partitioned tables: changes are recorded under the partitioned table's name (by default,
-- bemi.partitions_as_root), whichever partition holds the row.
CREATE TABLE part_events (id int, at date, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE part_events_2023 PARTITION OF part_events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE part_events_2024 PARTITION OF part_events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
SELECT relname, relreplident FROM pg_class WHERE relname LIKE 'part\_events%' AND relkind IN ('r', 'p') ORDER BY 1;
INSERT INTO part_events VALUES (1, '2023-06-01', 'a'), (2, '2024-06-01', 'b');
-- A row moving between partitions is a DELETE from one and an INSERT into the other.
UPDATE part_events SET at = '2024-02-01' WHERE id = 1;
UPDATE part_events SET what = 'b2' WHERE id = 2;
TRUNCATE part_events;
SELECT bemi_wait();
SELECT "table", operation, primary_key, before, after FROM bemi.changes
 WHERE operation <> 'DDL' AND "table" LIKE 'part\_events%' ORDER BY id;
