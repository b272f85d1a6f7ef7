-- Reading the trail: a role sees, through bemi's functions, the changes of the tables it may
-- read and nothing else: not through its own predicates, functions or error messages, not
-- through a table that took the name of a dropped or renamed one. And ordinary roles create
-- tables as before (bemi's event trigger names nothing they cannot use).
SET client_min_messages = warning;
CREATE ROLE sh_alice LOGIN;
CREATE ROLE sh_mallory LOGIN;
CREATE SCHEMA sh AUTHORIZATION sh_alice;
GRANT USAGE, CREATE ON SCHEMA sh TO sh_mallory;
RESET client_min_messages;

-- Every way an ordinary role makes a table works, and the permanent ones get complete images.
SET ROLE sh_alice;
CREATE TABLE sh.payroll (id int PRIMARY KEY, name text, ssn text);
CREATE TABLE sh.copy AS SELECT 1 AS id;
SELECT 1 AS id INTO sh.selected;
CREATE TEMP TABLE sh_scratch (id int);
CREATE UNLOGGED TABLE sh.unlogged (id int);
CREATE TABLE sh.parted (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE sh.parted_2026 PARTITION OF sh.parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT c.oid::regclass AS "table", c.relreplident FROM pg_class c
 WHERE c.relnamespace = 'sh'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1;
CREATE TABLE sh.pub (id int PRIMARY KEY, note text);
GRANT ALL ON sh.pub TO sh_mallory;
BEGIN;
SELECT bemi_set_context('{"request": "r1"}');
INSERT INTO sh.payroll VALUES (1, 'Ann', '123-45-6789');
INSERT INTO sh.pub VALUES (1, 'hello');
COMMIT;
SELECT bemi_wait();
RESET ROLE;
SELECT transaction_id AS txn FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'payroll' \gset
SELECT array_agg(id) AS ids FROM bemi.changes WHERE transaction_id = :txn \gset

-- mallory may read pub, not payroll. Her predicates run only on the rows she may see: a
-- function that prints what it is shown, a cast whose error would quote a value.
SET ROLE sh_mallory;
CREATE FUNCTION pg_temp.leak(t text, a jsonb) RETURNS boolean LANGUAGE plpgsql IMMUTABLE COST 0.0000001
    AS $$BEGIN RAISE NOTICE 'seen: % %', t, a; RETURN true; END$$;
SELECT count(*) FROM bemi_context_history('{}') c WHERE pg_temp.leak(c."table", c.after);
SELECT count(*) FROM bemi_context_history('{}') c WHERE (c.after->>'ssn')::int = 0;
SELECT count(*) FROM bemi_transaction_history(:txn) c WHERE pg_temp.leak(c."table", c.after);
SELECT count(*) FROM bemi_transaction_history(:txn) c WHERE (c.after->>'ssn')::int = 0;
SELECT count(*) FROM bemi_changes(:'ids') c
 WHERE pg_temp.leak(c."table", c.after);
SELECT count(*) FROM bemi_changes(:'ids') c
 WHERE (c.after->>'ssn')::int = 0;
SELECT tables, changes FROM bemi_transactions() t WHERE pg_temp.leak(t.tables::text, t.context);
SELECT value, changes, tables FROM bemi_context_groups('request') g WHERE pg_temp.leak(g.tables::text, g.value);
-- Of the changes she cannot read she learns their number, for a revert to refuse half a job.
SELECT bemi_unreadable_changes(:txn);
SELECT * FROM bemi_table_history('sh.payroll');
SELECT set_config('sh.txn', :'txn', false) IS NOT NULL AS noted;
DO $$
BEGIN
    PERFORM bemi_revert_transaction(current_setting('sh.txn')::bigint, dry_run => true);
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'revert refused: %', regexp_replace(SQLERRM, '[0-9]+', 'N');
END $$;
RESET ROLE;

-- payroll is dropped; mallory makes a table of the same name. The old payroll's history is not
-- hers: to her the new table has no history, and the old changes are not shown by name either.
DROP TABLE sh.payroll;
SET ROLE sh_mallory;
CREATE TABLE sh.payroll (id int PRIMARY KEY, name text, ssn text);
SELECT count(*) FROM bemi_row_history('sh.payroll', 1);
-- Only her own CREATE TABLE: the old table's DROP is the old table's.
SELECT bemi_wait();
SELECT operation, after->>'command_tag' AS tag FROM bemi_table_history('sh.payroll');
SELECT count(*) FROM bemi_context_history('{"request": "r1"}');
RESET ROLE;
-- The trail's readers still see the dropped table's changes.
SELECT "table", operation, after->>'ssn' AS ssn FROM bemi_context_history('{"request": "r1"}') ORDER BY 1;
DROP TABLE sh.payroll;

-- A renamed table: its old name, taken by another table, brings none of its history along.
SET ROLE sh_alice;
CREATE TABLE sh.salaries (id int PRIMARY KEY, amount int);
INSERT INTO sh.salaries VALUES (1, 100000);
SELECT bemi_wait();
ALTER TABLE sh.salaries RENAME TO salaries_2025;
RESET ROLE;
SET ROLE sh_mallory;
CREATE TABLE sh.salaries (id int PRIMARY KEY, amount int);
SELECT count(*) FROM bemi_row_history('sh.salaries', 1);
SELECT count(*) FROM bemi_context_history('{}') WHERE "table" = 'salaries' AND operation <> 'DDL';
RESET ROLE;

-- Changes restored from a dump (committed before bemi.tracking.oids_since, their table_oid is
-- another database's) go by name, under the same rule: a table of that name that the role may
-- read, or, when no table has that name any more, trail readers only, as for a dropped table.
CREATE TABLE sh.open_book (id int PRIMARY KEY);
GRANT SELECT ON sh.open_book TO sh_mallory;
SET bemi.allow_trail_changes = on; -- made-up changes (each recorded in bemi.gaps)
INSERT INTO bemi.changes (primary_key, "after", context, database, schema, "table", operation, committed_at,
                          transaction_id, position, table_oid)
VALUES ('1', '{"id": 1}', '{"request": "restored"}', current_database(), 'sh', 'open_book', 'CREATE', '2000-01-01', 1, '0/1', 1),
       ('1', '{"id": 1}', '{"request": "restored"}', current_database(), 'sh', 'long_gone', 'CREATE', '2000-01-01', 1, '0/1', 1);
SET ROLE sh_mallory;
SELECT "table" FROM bemi_context_history('{"request": "restored"}') ORDER BY 1;
SELECT bemi_unreadable_changes(NULL, '{"request": "restored"}');
RESET ROLE;
SELECT "table" FROM bemi_context_history('{"request": "restored"}') ORDER BY 1;
DELETE FROM bemi.changes WHERE context = '{"request": "restored"}';
RESET bemi.allow_trail_changes;

SET client_min_messages = warning;
DROP SCHEMA sh CASCADE;
DROP OWNED BY sh_alice, sh_mallory;
DROP ROLE sh_alice, sh_mallory;
