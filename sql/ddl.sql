-- DDL in the middle of the stream: each change is recorded with the row shape it had when it
-- was made, even though the worker decodes it after all the DDL below has happened.
SET TimeZone = 'UTC';
CREATE TABLE ddl_items (id int PRIMARY KEY, name text, price int);
INSERT INTO ddl_items VALUES (1, 'one', 10);
ALTER TABLE ddl_items ADD COLUMN note text DEFAULT 'n/a';
INSERT INTO ddl_items VALUES (2, 'two', 20);
ALTER TABLE ddl_items ALTER COLUMN price TYPE numeric(10, 2);
UPDATE ddl_items SET price = price + 0.5 WHERE id = 1;
ALTER TABLE ddl_items DROP COLUMN note;
UPDATE ddl_items SET name = 'uno' WHERE id = 1;
ALTER TABLE ddl_items RENAME COLUMN name TO title;
UPDATE ddl_items SET title = 'dos' WHERE id = 2;
ALTER TABLE ddl_items RENAME TO ddl_products;
INSERT INTO ddl_products VALUES (3, 'three', 30);
DELETE FROM ddl_products WHERE id = 3;
DROP TABLE ddl_products;
SELECT bemi_wait();
SELECT "table", operation, primary_key, before, after
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" IN ('ddl_items', 'ddl_products') ORDER BY id;

-- Primary key changes: the key recorded is the one the table had at the time.
CREATE TABLE ddl_keys (a int, b int, v text, PRIMARY KEY (a));
INSERT INTO ddl_keys VALUES (1, 1, 'x');
ALTER TABLE ddl_keys DROP CONSTRAINT ddl_keys_pkey, ADD PRIMARY KEY (a, b);
INSERT INTO ddl_keys VALUES (1, 2, 'y');
SELECT bemi_wait();
SELECT operation, primary_key FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'ddl_keys' ORDER BY id;

-- Names come from the catalog as of each change, and a rename reaches the tables it names: a
-- partitioned table renamed is the new name of its partitions' changes; a schema renamed, of
-- its tables'. (The worker keeps what it knows of each table until DDL says it changed.)
CREATE SCHEMA ddl_before;
CREATE TABLE ddl_before.ddl_moved (id int PRIMARY KEY);
CREATE TABLE ddl_roots (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE ddl_roots_low PARTITION OF ddl_roots FOR VALUES FROM (0) TO (100);
INSERT INTO ddl_before.ddl_moved VALUES (1);
INSERT INTO ddl_roots VALUES (1);
ALTER SCHEMA ddl_before RENAME TO ddl_after;
ALTER TABLE ddl_roots RENAME TO ddl_trunks;
INSERT INTO ddl_after.ddl_moved VALUES (2);
INSERT INTO ddl_trunks VALUES (2);
SELECT bemi_wait();
SELECT schema, "table", operation, primary_key FROM bemi.changes
 WHERE operation <> 'DDL' AND "table" IN ('ddl_moved', 'ddl_roots', 'ddl_trunks', 'ddl_roots_low') ORDER BY id;
DROP SCHEMA ddl_after CASCADE;
DROP TABLE ddl_trunks;
