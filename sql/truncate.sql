-- TRUNCATE is recorded: one row per truncated table, with the context of the statement.
CREATE TABLE trunc_a (id int PRIMARY KEY);
CREATE TABLE trunc_b (id int PRIMARY KEY);
INSERT INTO trunc_a VALUES (1), (2);
INSERT INTO trunc_b VALUES (1);
TRUNCATE trunc_a, trunc_b /*Bemi {"job": "reset"} Bemi*/;
SELECT bemi_wait();
SELECT "table", operation, primary_key, before, after, context - '_bemi' AS context
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" IN ('trunc_a', 'trunc_b') ORDER BY id;
