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
  FROM bemi.changes WHERE "table" IN ('ddl_items', 'ddl_products') ORDER BY id;

-- Primary key changes: the key recorded is the one the table had at the time.
CREATE TABLE ddl_keys (a int, b int, v text, PRIMARY KEY (a));
INSERT INTO ddl_keys VALUES (1, 1, 'x');
ALTER TABLE ddl_keys DROP CONSTRAINT ddl_keys_pkey, ADD PRIMARY KEY (a, b);
INSERT INTO ddl_keys VALUES (1, 2, 'y');
SELECT bemi_wait();
SELECT operation, primary_key FROM bemi.changes WHERE "table" = 'ddl_keys' ORDER BY id;
