-- Schema changes are events in the trail (issue 15): every DDL command on a recorded table is a
-- change with operation 'DDL', in commit order among the row changes around it, with the command
-- tag, the table's name before and after, the statement's text, the columns before and after
-- ([{attnum, name, type}]) and the context and identity of whoever ran it.
CREATE SCHEMA ddl_ev;
-- The DDL rows of schema ddl_ev (and of tables moved out of it), readable: columns as
-- "attnum:name type".
CREATE FUNCTION pg_temp.cols(c jsonb) RETURNS text LANGUAGE sql AS
  $$ SELECT string_agg(format('%s:%s %s', e->>'attnum', e->>'name', e->>'type'), ', ' ORDER BY (e->>'attnum')::int)
       FROM jsonb_array_elements(c) e $$;
CREATE TEMP VIEW ddl_rows AS
  SELECT c.id, c.schema || '.' || c."table" AS recorded_as, c.after->>'command_tag' AS tag,
         c.before->>'object' AS object_before, c.after->>'object' AS object_after,
         pg_temp.cols(c.before->'columns') AS columns_before, pg_temp.cols(c.after->'columns') AS columns_after,
         c.after->'rewritten' AS rewritten, c.after->>'statement' AS statement
    FROM bemi.changes c WHERE c.operation = 'DDL' AND (c.schema LIKE 'ddl_ev%' OR c."table" LIKE 'ddl_ev%');
SELECT coalesce(max(id), 0) AS start_id FROM bemi.changes \gset

-- 1. CREATE, then ALTER in its forms, renames, and DROP, each one row.
CREATE TABLE ddl_ev.items (id int PRIMARY KEY, name text, price int);
INSERT INTO ddl_ev.items VALUES (1, 'pen', 10);
ALTER TABLE ddl_ev.items ADD COLUMN note text;
ALTER TABLE ddl_ev.items RENAME COLUMN name TO title;
ALTER TABLE ddl_ev.items ALTER COLUMN price TYPE bigint;
ALTER TABLE ddl_ev.items DROP COLUMN note;
ALTER TABLE ddl_ev.items ALTER COLUMN title SET DEFAULT 'untitled', ADD CONSTRAINT positive CHECK (price > 0);
ALTER TABLE ddl_ev.items RENAME CONSTRAINT positive TO price_positive;
ALTER TABLE ddl_ev.items RENAME TO goods;
CREATE SCHEMA ddl_ev2;
ALTER TABLE ddl_ev.goods SET SCHEMA ddl_ev2;
ALTER TABLE ddl_ev2.goods SET SCHEMA ddl_ev;
ALTER SCHEMA ddl_ev2 RENAME TO ddl_ev3;
CREATE TABLE ddl_ev3.other (id int PRIMARY KEY);
ALTER SCHEMA ddl_ev3 RENAME TO ddl_ev2;
-- A statement that changes nothing is a DDL command all the same.
ALTER TABLE IF EXISTS ddl_ev.goods ALTER COLUMN title DROP DEFAULT;
-- Not tables bemi records, not DDL of a table: nothing.
ALTER TABLE IF EXISTS ddl_ev.missing ADD COLUMN x int;
CREATE TEMP TABLE ddl_ev_temp (id int);
ALTER TABLE ddl_ev_temp ADD COLUMN x int;
CREATE UNLOGGED TABLE ddl_ev.unlogged (id int);
CREATE INDEX ON ddl_ev.goods (title);
CREATE VIEW ddl_ev.goods_view AS SELECT * FROM ddl_ev.goods;
DROP VIEW ddl_ev.goods_view;
SELECT bemi_wait();
SELECT recorded_as, tag, object_before, object_after, columns_before, columns_after, rewritten, statement
  FROM ddl_rows WHERE id > :start_id ORDER BY id;

-- 2. In commit order among the row changes, with the transaction's context and identity; a
--    rolled-back DDL (or savepoint) leaves nothing.
SELECT coalesce(max(id), 0) AS start_id FROM bemi.changes \gset
BEGIN;
SELECT bemi_set_context('{"migration": "20261201_add_stock"}');
INSERT INTO ddl_ev.goods VALUES (2, 'ink', 3);
ALTER TABLE ddl_ev.goods ADD COLUMN stock int NOT NULL DEFAULT 0;
UPDATE ddl_ev.goods SET stock = 5 WHERE id = 2;
SAVEPOINT s;
ALTER TABLE ddl_ev.goods ADD COLUMN discarded int;
ROLLBACK TO SAVEPOINT s;
COMMIT;
BEGIN;
ALTER TABLE ddl_ev.goods ADD COLUMN rolled_back int;
ROLLBACK;
ALTER TABLE ddl_ev.goods ADD COLUMN by_comment int /*Bemi {"ticket": "OPS-1"} Bemi*/;
SELECT bemi_wait();
SELECT operation, primary_key, after->>'command_tag' AS tag, after->>'statement' AS statement,
       context - '_bemi' AS context, context->'_bemi'->>'role' = current_user AS by_me
  FROM bemi.changes WHERE id > :start_id ORDER BY id;

-- 3. Rewrites: a type change that rewrites the table, a volatile default. (VACUUM FULL and
--    CLUSTER rewrite no value and no column: not recorded.)
SELECT coalesce(max(id), 0) AS start_id FROM bemi.changes \gset
ALTER TABLE ddl_ev.goods ALTER COLUMN stock TYPE bigint;
ALTER TABLE ddl_ev.goods ALTER COLUMN stock TYPE bigint;
ALTER TABLE ddl_ev.goods ADD COLUMN token float8 DEFAULT random();
VACUUM FULL ddl_ev.goods;
SELECT bemi_wait();
SELECT tag, statement, rewritten FROM ddl_rows WHERE id > :start_id ORDER BY id;

-- 4. Partitions and inheritance: a partition's DDL is recorded under its root's name, without
--    column lists (its changes are read with the root's); ALTER TABLE of a parent recurses, and
--    each inheritance child whose columns changed has a row of its own.
SELECT coalesce(max(id), 0) AS start_id FROM bemi.changes \gset
CREATE TABLE ddl_ev.events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ddl_ev.events_2026 PARTITION OF ddl_ev.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
ALTER TABLE ddl_ev.events ADD COLUMN kind text;
ALTER TABLE ddl_ev.events_2026 ALTER COLUMN kind SET STATISTICS 100;
CREATE TABLE ddl_ev.base (id int PRIMARY KEY, a int);
CREATE TABLE ddl_ev.child (b int) INHERITS (ddl_ev.base);
ALTER TABLE ddl_ev.base ADD COLUMN c int;
ALTER TABLE ddl_ev.base RENAME COLUMN a TO aa;
SELECT bemi_wait();
SELECT recorded_as, tag, object_before, object_after, columns_before, columns_after
  FROM ddl_rows WHERE id > :start_id ORDER BY id;

-- 5. CREATE TABLE AS, DROP TABLE of several, DROP SCHEMA ... CASCADE: a row per table.
SELECT coalesce(max(id), 0) AS start_id FROM bemi.changes \gset
CREATE TABLE ddl_ev.copy AS SELECT id, title FROM ddl_ev.goods;
DROP TABLE ddl_ev.copy, ddl_ev.child;
DROP TABLE ddl_ev.events;
CREATE SCHEMA ddl_ev_gone;
CREATE TABLE ddl_ev_gone.t1 (id int PRIMARY KEY);
CREATE TABLE ddl_ev_gone.t2 (id int PRIMARY KEY);
DROP SCHEMA ddl_ev_gone CASCADE;
SELECT bemi_wait();
SELECT recorded_as, tag, object_before, object_after, columns_before, columns_after, statement
  FROM ddl_rows WHERE id > :start_id ORDER BY id;
-- The CREATE TABLE AS rows come before its DDL row (the table exists once they are written).
SELECT operation, primary_key FROM bemi.changes WHERE id > :start_id AND "table" = 'copy' ORDER BY id;

-- 6. An ordinary role's DDL on her own table is recorded with her identity; she cannot forge a
--    DDL row with pg_logical_emit_message, signed-looking or not, nor read the DDL rows of a
--    table she may not read.
CREATE ROLE ddl_ev_mallory;
GRANT CREATE, USAGE ON SCHEMA ddl_ev TO ddl_ev_mallory;
SELECT coalesce(max(id), 0) AS start_id FROM bemi.changes \gset
SET ROLE ddl_ev_mallory;
CREATE TABLE ddl_ev.mine (id int PRIMARY KEY);
ALTER TABLE ddl_ev.mine ADD COLUMN secret text;
SELECT pg_logical_emit_message(true, 'bemi_ddl',
  'ddl:{"schema": "ddl_ev", "table": "goods", "table_oid": 1, "before": {}, "after": {"command_tag": "DROP TABLE"}}') IS NOT NULL AS emitted;
SELECT pg_logical_emit_message(true, 'bemi_ddl',
  'bemi:1:' || repeat('0', 64) || ':ddl:{"schema": "ddl_ev", "table": "goods", "table_oid": 1, "before": {}, "after": {}}') IS NOT NULL AS emitted;
SELECT pg_logical_emit_message(true, 'bemi',
  'ddl:{"schema": "ddl_ev", "table": "goods", "table_oid": 1, "before": {}, "after": {}}') IS NOT NULL AS emitted;
RESET ROLE;
SELECT bemi_wait();
SELECT "table", operation, after->>'command_tag' AS tag, context->'_bemi'->>'role' AS role,
       table_oid = 'ddl_ev.mine'::regclass AS same_oid
  FROM bemi.changes WHERE id > :start_id ORDER BY id;
SET ROLE ddl_ev_mallory;
SELECT operation, "table", after->>'command_tag' AS tag FROM bemi_table_history('ddl_ev.mine') ORDER BY id;
SELECT count(*) AS goods_rows_visible FROM bemi_table_history('ddl_ev.goods');
RESET ROLE;

-- 7. Tracking rules apply: an ignored table has no DDL rows either.
SELECT coalesce(max(id), 0) AS start_id FROM bemi.changes \gset
SELECT bemi_ignore('ddl_ev.ignored') AS rule_id \gset
CREATE TABLE ddl_ev.ignored (id int PRIMARY KEY);
ALTER TABLE ddl_ev.ignored ADD COLUMN x int;
SELECT bemi_wait();
SELECT count(*) AS ignored_rows FROM bemi.changes WHERE id > :start_id AND "table" = 'ignored';

DROP SCHEMA ddl_ev CASCADE;
DROP SCHEMA ddl_ev2;
DROP OWNED BY ddl_ev_mallory;
DROP ROLE ddl_ev_mallory;
SELECT bemi_drop_rule(:rule_id);
