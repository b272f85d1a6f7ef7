-- before/after are exactly to_jsonb() of the old and new row, for every kind of value.
-- The worker renders with fixed settings (UTC, IntervalStyle postgres); compare under the same.
SET TimeZone = 'UTC';
SET IntervalStyle = 'postgres';
CREATE TYPE image_point AS (x int, label text);
CREATE TABLE image_types (
    id int PRIMARY KEY,
    i2 smallint, i8 bigint, num numeric, nan numeric, f4 real, f8 float8, finf float8,
    money_col money, bool_col boolean,
    t text, vc varchar(10), ch char(3), nul text,
    j json, jb jsonb, arr int[], tarr text[], nested_arr int[][],
    comp image_point, by bytea, ts timestamp, tstz timestamptz, d date, tm time, iv interval,
    u uuid, inet_col inet, rng int4range, bits bit varying, ts_vec tsvector, pt point
);
INSERT INTO image_types VALUES (
    1, 32767, 9223372036854775807, 12345678901234567890.123456789, 'NaN', 1.5, 2.25, 'Infinity',
    '12.34', true,
    E'line\nbreak "quoted" \\ tab\t unicode é ✓', 'varchar', 'ab', NULL,
    '{"a": [1, 2, {"b": null}], "dup": 1, "dup": 2}', '{"z": 1, "a": {"deep": [true, false]}}',
    '{1,2,3}', '{"x","y z",NULL}', '{{1,2},{3,4}}',
    ROW(7, 'seven'), '\xdeadbeef', '2023-12-11 17:09:12.123456', '2023-12-11 17:09:12.5+02', '2023-12-11',
    '17:09:12', '1 day 2 hours', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '[1,10)',
    B'1011', 'fat:1 cat:2', '(1.5,2)'
);
SELECT bemi_wait();
SELECT c.after = to_jsonb(r) AS after_is_to_jsonb
  FROM bemi.changes c, image_types r WHERE c."table" = 'image_types' AND c.operation = 'CREATE';
-- Any key where they differ (none).
SELECT k, c.after->k AS captured, to_jsonb(r)->k AS expected
  FROM bemi.changes c, image_types r, jsonb_object_keys(c.after) k
 WHERE c."table" = 'image_types' AND c.operation = 'CREATE' AND c.after->k IS DISTINCT FROM to_jsonb(r)->k;
SELECT jsonb_pretty(after) FROM bemi.changes WHERE "table" = 'image_types' AND operation = 'CREATE';

-- Text that looks like escapes or odd Unicode stays exactly what was stored.
CREATE TABLE image_strings (id int PRIMARY KEY, s text);
INSERT INTO image_strings VALUES
    (1, E'backslash-u zero: \\u0000, json escape: \\", nul-ish: \\x00'),
    (2, 'surrogate-looking: \ud800 \udfff'),
    (3, U&'noncharacters \FFFF \+10FFFF, emoji \+01F600, bidi \202E'),
    (4, E'control chars: \x01 \x1f \t \r'),
    (5, '*/ Bemi*/ /*Bemi {"user_id": 1} Bemi*/');
SELECT bemi_wait();
SELECT c.after = to_jsonb(r) AS same, c.after->>'s' = r.s AS text_roundtrip
  FROM bemi.changes c JOIN image_strings r ON c.primary_key = r.id::text
 WHERE c."table" = 'image_strings' ORDER BY r.id;

-- Very wide rows: 1,600 columns.
DO $$
BEGIN
  EXECUTE 'CREATE TABLE image_wide (' ||
          (SELECT string_agg(format('c%s int DEFAULT %s', g, g), ', ') FROM generate_series(1, 1600) g) || ')';
END $$;
INSERT INTO image_wide DEFAULT VALUES;
SELECT bemi_wait();
SELECT (SELECT count(*) FROM jsonb_object_keys(after)) AS keys, after->'c1600' AS c1600,
       after = (SELECT to_jsonb(w) FROM image_wide w) AS same
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'image_wide';

-- UPDATE and DELETE images are complete (REPLICA IDENTITY FULL is set on new tables).
SELECT relreplident FROM pg_class WHERE oid = 'image_types'::regclass;
CREATE TEMP TABLE image_before AS SELECT to_jsonb(r) AS img FROM image_types r;
UPDATE image_types SET num = -0.5, arr = arr || 4 WHERE id = 1;
DELETE FROM image_types WHERE id = 1;
SELECT bemi_wait();
SELECT operation, before = coalesce(lag(after) OVER (ORDER BY id), (SELECT img FROM image_before)) AS before_complete,
       after->'num' AS num, after->'arr' AS arr, after = '{}' AS after_empty
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'image_types' AND operation <> 'CREATE' ORDER BY id;

-- TOASTed values: an UPDATE that does not touch a large value still records it in full.
CREATE TABLE image_docs (id int PRIMARY KEY, title text, body text);
ALTER TABLE image_docs ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO image_docs VALUES (1, 'draft', repeat('0123456789', 100000));
UPDATE image_docs SET title = 'final' WHERE id = 1;
DELETE FROM image_docs WHERE id = 1;
SELECT bemi_wait();
SELECT operation, length(before->>'body') AS before_body, length(after->>'body') AS after_body,
       after->>'title' AS title
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'image_docs' ORDER BY id;

-- Dropped and added columns: each change has the row shape it had when it was made.
CREATE TABLE image_shapes (id int PRIMARY KEY, a text, b text);
INSERT INTO image_shapes VALUES (1, 'a', 'b');
ALTER TABLE image_shapes DROP COLUMN b;
ALTER TABLE image_shapes ADD COLUMN c int DEFAULT 3;
UPDATE image_shapes SET a = 'a2';
SELECT bemi_wait();
SELECT operation, before, after FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'image_shapes' ORDER BY id;

-- Generated columns appear as to_jsonb shows them.
CREATE TABLE image_generated (id int PRIMARY KEY, price numeric, qty int, total numeric GENERATED ALWAYS AS (price * qty) STORED);
INSERT INTO image_generated (id, price, qty) VALUES (1, 2.5, 4);
SELECT bemi_wait();
SELECT after FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'image_generated';

-- Unlogged and temporary tables are never recorded.
CREATE UNLOGGED TABLE image_unlogged (id int PRIMARY KEY);
CREATE TEMP TABLE image_temp (id int PRIMARY KEY);
INSERT INTO image_unlogged VALUES (1);
INSERT INTO image_temp VALUES (1);
SELECT bemi_wait();
SELECT count(*) AS recorded FROM bemi.changes WHERE "table" IN ('image_unlogged', 'image_temp');
