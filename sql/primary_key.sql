-- The primary-key text has one rule, the output plugin's (BemiPrimaryKey), and SQL asks it through
-- bemi_primary_key(tbl, image). Time travel renders the key of every current row with the SQL
-- that bemi_time_travel_target returns: for each kind of key, the text the plugin recorded, the
-- text bemi_primary_key gives for the recorded image, and the text time travel gives for the
-- row itself must be the same.
CREATE SCHEMA pk;
CREATE TYPE pk.mood AS ENUM ('calm', 'curious');
-- A cast whose code bemi must never run: the plugin records such values as their text.
CREATE FUNCTION pk.mood_json(pk.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'the cast ran';
    RETURN to_json('cast'::text);
END $$;
CREATE CAST (pk.mood AS json) WITH FUNCTION pk.mood_json(pk.mood);
CREATE TABLE pk.by_int (id int PRIMARY KEY, n int);
CREATE TABLE pk.by_bigint (id bigint PRIMARY KEY, n int);
CREATE TABLE pk.by_text (id text PRIMARY KEY, n int);
CREATE TABLE pk.by_uuid (id uuid PRIMARY KEY, n int);
CREATE TABLE pk.by_numeric (id numeric PRIMARY KEY, n int);
CREATE TABLE pk.by_date (id date PRIMARY KEY, n int);
CREATE TABLE pk.by_mood (id pk.mood PRIMARY KEY, n int);
CREATE TABLE pk.by_pair (b text, a int, n int, PRIMARY KEY (a, b));
CREATE TABLE pk.by_triple (m pk.mood, u uuid, x numeric, n int, PRIMARY KEY (x, m, u));
-- A partitioned table: its changes are recorded under it, with its key.
CREATE TABLE pk.by_part (id int, s text, n int, PRIMARY KEY (id, s)) PARTITION BY RANGE (id);
CREATE TABLE pk.by_part_low PARTITION OF pk.by_part FOR VALUES FROM (0) TO (100);
INSERT INTO pk.by_int VALUES (7, 1), (-42, 2);
INSERT INTO pk.by_bigint VALUES (9007199254740993, 1);
INSERT INTO pk.by_text VALUES ('plain', 1), ('with "quotes" and \ and ünïcode', 2), ('', 3);
INSERT INTO pk.by_uuid VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1);
INSERT INTO pk.by_numeric VALUES (1.50, 1), (-0.000001, 2), (1e20, 3);
INSERT INTO pk.by_date VALUES ('2026-02-28', 1);
INSERT INTO pk.by_mood VALUES ('curious', 1);
INSERT INTO pk.by_pair VALUES ('x', 1, 1), ('a "b"', 2, 2);
INSERT INTO pk.by_triple VALUES ('calm', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 2.5, 1);
INSERT INTO pk.by_part VALUES (5, 'five', 1);
SELECT bemi_wait();

-- Recorded, from the image, from the row: one line per row, all three equal.
CREATE FUNCTION pk.keys(tbl regclass) RETURNS TABLE (recorded text, from_image text, from_row text)
LANGUAGE plpgsql AS $$
DECLARE
    key_sql text := (bemi_time_travel_target((SELECT reltype FROM pg_class WHERE oid = tbl)::regtype, now())).key_sql;
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT c.primary_key::text, bemi_primary_key(%1$L, c."after"),
                (SELECT %2$s FROM %1$s t WHERE t.n = (c."after" ->> ''n'')::int)
           FROM bemi.changes c WHERE c.table_oid = %1$L::regclass::oid AND c.operation <> ''DDL'' ORDER BY c.id', tbl, key_sql);
END $$;
SELECT t AS "table", k.*, k.recorded = k.from_image AND k.recorded = k.from_row AS same
  FROM unnest(ARRAY['pk.by_int', 'pk.by_bigint', 'pk.by_text', 'pk.by_uuid', 'pk.by_numeric', 'pk.by_date',
                    'pk.by_mood', 'pk.by_pair', 'pk.by_triple', 'pk.by_part']::regclass[]) t, pk.keys(t) k;

-- The rule on images given by hand: a number stays a number (1.50), a missing column is null.
SELECT bemi_primary_key('pk.by_pair', '{"a": 1, "b": "x", "n": 1}'),
       bemi_primary_key('pk.by_pair', '{"a": 1}') AS missing_column_is_null,
       bemi_primary_key('pk.by_numeric', '{"id": 1.50}');
-- A table without a primary key has no key text; a view is not a table.
CREATE TABLE pk.keyless (n int);
CREATE VIEW pk.a_view AS SELECT 1 AS n;
SELECT bemi_primary_key('pk.keyless', '{"n": 1}') IS NULL AS keyless;
-- An image that is not an object has no key columns: NULL, never an error or a crash.
SELECT bemi_primary_key('pk.by_pair', '[1, "x"]') IS NULL AS array_image,
       bemi_primary_key('pk.by_pair', '"x"') IS NULL AS scalar_image,
       bemi_primary_key('pk.by_pair', 'null') IS NULL AS null_image;
SELECT bemi_primary_key('pk.a_view', '{"n": 1}');

SET client_min_messages = warning;
DROP SCHEMA pk CASCADE;
RESET client_min_messages;
