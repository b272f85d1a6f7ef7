-- Time travel across schema changes (issue 15): bemi_as_of and bemi_row_as_of return rows in the
-- table's current shape with every value in the right column. Each image is mapped by the columns
-- the table had when it was recorded (the DDL rows, by attnum): a renamed column's value goes to
-- its new name, a dropped column's is left out, an added column reads as NULL where the image
-- predates it, a retyped column's value is cast to the new type, or read as NULL with a WARNING.
CREATE TABLE ddl_tt (id int PRIMARY KEY, name text, qty int, code text, note text);
INSERT INTO ddl_tt VALUES (1, 'pen', 1, '10', 'n1'), (2, 'ink', 2, 'x7', 'n2'), (3, 'cap', 3, '30', 'n3');
SELECT bemi_wait();
SELECT clock_timestamp() AS t0 \gset
SELECT * FROM bemi_as_of(NULL::ddl_tt, :'t0') ORDER BY id;

-- Changes of every row, each under another shape of the table.
UPDATE ddl_tt SET qty = 11 WHERE id = 1;
ALTER TABLE ddl_tt RENAME COLUMN name TO title;
-- A new column under the old name: the old values must not land in it.
ALTER TABLE ddl_tt ADD COLUMN name text DEFAULT 'new';
UPDATE ddl_tt SET qty = 22 WHERE id = 2;
ALTER TABLE ddl_tt DROP COLUMN note;
ALTER TABLE ddl_tt ALTER COLUMN code TYPE int USING (CASE WHEN code ~ '^[0-9]+$' THEN code::int END);
DELETE FROM ddl_tt WHERE id = 3;
SELECT bemi_wait();
SELECT operation, after->>'statement' AS statement
  FROM bemi_table_schema_changes('ddl_tt') ORDER BY id;

-- As of t0: row 1 from an image of the first shape (name -> title, note dropped, code '10' -> 10,
-- the new name NULL); row 2 from the second shape (its code 'x7' is no integer: NULL, WARNING);
-- row 3 from the third (deleted since).
SELECT * FROM bemi_as_of(NULL::ddl_tt, :'t0') ORDER BY id;
SELECT bemi_row_as_of(NULL::ddl_tt, 1, :'t0') AS row_1, bemi_row_as_of(NULL::ddl_tt, 3, :'t0') AS row_3;
SELECT bemi_row_as_of(NULL::ddl_tt, 2, :'t0') AS row_2;
-- Now: the table itself.
SELECT * FROM bemi_as_of(NULL::ddl_tt, now()) ORDER BY id;

-- The mapping, on its own: an image recorded with given columns, in the current shape.
SELECT bemi_current_shape('ddl_tt', '{"id": 1, "name": "pen", "qty": 1, "code": "10", "note": "n1"}',
                          '[{"attnum": 1, "name": "id", "type": "integer"}, {"attnum": 2, "name": "name", "type": "text"},
                            {"attnum": 3, "name": "qty", "type": "integer"}, {"attnum": 4, "name": "code", "type": "text"},
                            {"attnum": 5, "name": "note", "type": "text"}]') AS current_shape;
-- Bad input: no table, columns that are no list; a recorded type that does not resolve (or is no
-- type at all) is a value that does not convert: left out with a WARNING, never run as SQL.
SELECT bemi_current_shape(NULL, '{"id": 1}', '[]');
SELECT bemi_current_shape('ddl_tt', '{"id": 1}', '{"attnum": 1}');
SELECT bemi_current_shape('ddl_tt', '{"id": 1, "name": "pen"}',
                          '[{"attnum": 1, "name": "id", "type": "no_such_type"},
                            {"attnum": 2, "name": "name", "type": "text) FROM pg_catalog.pg_class --"}]') AS unknown_types;

-- 2. After a TRUNCATE the state is replayed from the images after it: mapped the same way.
CREATE TABLE ddl_tt2 (id int PRIMARY KEY, v text, w int);
INSERT INTO ddl_tt2 VALUES (1, 'one', 1), (2, 'two', 2);
SELECT bemi_wait();
SELECT clock_timestamp() AS t1 \gset
ALTER TABLE ddl_tt2 RENAME COLUMN v TO label;
ALTER TABLE ddl_tt2 DROP COLUMN w, ADD COLUMN w text;
TRUNCATE ddl_tt2;
INSERT INTO ddl_tt2 VALUES (3, 'three', 'x');
SELECT bemi_wait();
SELECT * FROM bemi_as_of(NULL::ddl_tt2, :'t1') ORDER BY id;
SELECT bemi_row_as_of(NULL::ddl_tt2, 2, :'t1') AS row_2;

-- 3. A table with no schema change since the moment reads its images as they are (the plan
-- is the one of before: no mapping).
CREATE TABLE ddl_tt3 (id int PRIMARY KEY, v text);
INSERT INTO ddl_tt3 VALUES (1, 'a');
SELECT bemi_wait();
SELECT clock_timestamp() AS t2 \gset
UPDATE ddl_tt3 SET v = 'b';
SELECT bemi_wait();
SELECT * FROM bemi_as_of(NULL::ddl_tt3, :'t2');
SELECT count(*) AS schema_changes_since FROM bemi_table_schema_changes('ddl_tt3') WHERE committed_at > :'t2';

-- 4. Reading the schema changes needs the right to read the table's changes.
CREATE ROLE ddl_tt_stranger;
SET ROLE ddl_tt_stranger;
SELECT count(*) FROM bemi_table_schema_changes('ddl_tt');
RESET ROLE;
DROP ROLE ddl_tt_stranger;
DROP TABLE ddl_tt, ddl_tt2, ddl_tt3;
