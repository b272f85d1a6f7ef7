-- A table owner cannot change data without a trace (issue 10, finding 9), and cannot read the
-- history of a table in a schema she may not use. alice is an ordinary role: she owns tables in
-- public, nothing else.
CREATE ROLE alice;
CREATE TABLE ddl_accounts (id int PRIMARY KEY, owner text, balance int);
ALTER TABLE ddl_accounts OWNER TO alice;
INSERT INTO ddl_accounts VALUES (1, 'ann', 100), (2, 'bob', 200);
SELECT count(*) AS gaps_before FROM bemi.gaps \gset
SET ROLE alice;

-- 1. Replica identity: a DELETE would be recorded with no key and an empty before-image
--    (NOTHING), or with the key only (DEFAULT, USING INDEX). All refused, for any role, while
--    bemi.replica_identity_full is on.
ALTER TABLE ddl_accounts REPLICA IDENTITY NOTHING;
ALTER TABLE ddl_accounts REPLICA IDENTITY DEFAULT;
ALTER TABLE ddl_accounts REPLICA IDENTITY USING INDEX ddl_accounts_pkey;
ALTER TABLE ddl_accounts ADD COLUMN note text, REPLICA IDENTITY NOTHING;
ALTER TABLE ddl_accounts REPLICA IDENTITY FULL;
-- alice cannot turn the setting off.
SET bemi.replica_identity_full = off;
SELECT relreplident FROM pg_class WHERE oid = 'ddl_accounts'::regclass;
-- So her DELETE is recorded in full.
DELETE FROM ddl_accounts WHERE id = 2;
SELECT bemi_wait();
RESET ROLE;
SELECT primary_key, before FROM bemi.changes WHERE "table" = 'ddl_accounts' AND operation = 'DELETE';
SET ROLE alice;

-- 2. SET UNLOGGED: allowed, but it takes the table out of the WAL, so out of the trail. The gap is
--    recorded in the same transaction, with the table and the role; SET LOGGED records a second
--    row: capture resumes, and what changed in between is not in the trail.
ALTER TABLE ddl_accounts SET UNLOGGED;
UPDATE ddl_accounts SET balance = 0 WHERE id = 1;
ALTER TABLE ddl_accounts SET LOGGED;
UPDATE ddl_accounts SET balance = 1 WHERE id = 1;
SELECT bemi_wait();
RESET ROLE;
-- The UPDATE made while unlogged is not in the trail (only the next before-image shows its
-- effect): the gap rows say so.
SELECT before->'balance' AS before, after->'balance' AS after
  FROM bemi.changes WHERE "table" = 'ddl_accounts' AND operation = 'UPDATE';
SELECT relation, table_oid = 'ddl_accounts'::regclass AS same_oid, role, reason, statement,
       from_lsn = to_lsn AS at_one_lsn
  FROM bemi.gaps WHERE relation = 'public.ddl_accounts' ORDER BY id;
SET ROLE alice;

-- 3. ALTER COLUMN ... TYPE rewrites every value without a row change: allowed, recorded with the
--    column and the statement. Any form counts, not only USING.
ALTER TABLE ddl_accounts ALTER COLUMN owner TYPE varchar(20) USING 'tampered';
ALTER TABLE ddl_accounts ALTER COLUMN balance TYPE bigint, ALTER COLUMN id TYPE bigint;
SELECT * FROM ddl_accounts;
-- From a function as well (the statement is the one EXECUTE ran).
DO $$ BEGIN EXECUTE 'ALTER TABLE ddl_accounts ALTER COLUMN owner TYPE text'; END $$;
RESET ROLE;
SELECT role, reason, statement FROM bemi.gaps
 WHERE relation = 'public.ddl_accounts' AND reason LIKE 'ALTER COLUMN%' ORDER BY id;
-- bemi_status() counts them.
SELECT gaps - :gaps_before AS new_gaps FROM bemi_status();
SET ROLE alice;

-- A rolled-back or failed ALTER leaves no gap row: the row is written in its transaction.
BEGIN;
ALTER TABLE ddl_accounts SET UNLOGGED;
ROLLBACK;
ALTER TABLE ddl_accounts ALTER COLUMN balance TYPE int USING balance / 0;
BEGIN;
SAVEPOINT s;
ALTER TABLE ddl_accounts ALTER COLUMN owner TYPE text;
ROLLBACK TO SAVEPOINT s;
COMMIT;
RESET ROLE;
SELECT count(*) AS gap_rows FROM bemi.gaps WHERE relation = 'public.ddl_accounts';
SELECT relpersistence FROM pg_class WHERE oid = 'ddl_accounts'::regclass;
SET ROLE alice;

-- alice cannot write, change or erase bemi.gaps herself.
INSERT INTO bemi.gaps (to_lsn, reason) VALUES ('0/0', 'forged');
DELETE FROM bemi.gaps;
RESET ROLE;

-- 4. The same on a partitioned table and its partitions.
CREATE TABLE ddl_ledger (id int, amount int) PARTITION BY RANGE (id);
CREATE TABLE ddl_ledger_1 PARTITION OF ddl_ledger FOR VALUES FROM (0) TO (100);
CREATE UNLOGGED TABLE ddl_ledger_shadow (id int, amount bigint);
ALTER TABLE ddl_ledger OWNER TO alice;
ALTER TABLE ddl_ledger_1 OWNER TO alice;
ALTER TABLE ddl_ledger_shadow OWNER TO alice;
SET ROLE alice;
ALTER TABLE ddl_ledger REPLICA IDENTITY NOTHING;
ALTER TABLE ddl_ledger_1 REPLICA IDENTITY NOTHING;
ALTER TABLE ddl_ledger_1 REPLICA IDENTITY DEFAULT;
ALTER TABLE ddl_ledger ALTER COLUMN amount TYPE bigint USING 0;
ALTER TABLE ddl_ledger_1 SET UNLOGGED;
ALTER TABLE ddl_ledger_1 SET LOGGED;
-- An unlogged table made a partition takes part of the table out of the trail just as well.
ALTER TABLE ddl_ledger ATTACH PARTITION ddl_ledger_shadow FOR VALUES FROM (100) TO (200);
RESET ROLE;
CREATE UNLOGGED TABLE ddl_ledger_3 PARTITION OF ddl_ledger FOR VALUES FROM (200) TO (300);
SELECT relation, CASE role WHEN current_user THEN '(the superuser)' ELSE role END AS role, reason FROM bemi.gaps
 WHERE relation LIKE 'public.ddl\_ledger%' ORDER BY id;
SELECT relname, relreplident FROM pg_class WHERE relname LIKE 'ddl\_ledger%' ORDER BY 1;

-- An unlogged table may have any replica identity (it is not recorded), but it gets FULL back
-- when it is SET LOGGED, as a new table does.
ALTER TABLE ddl_ledger_shadow REPLICA IDENTITY NOTHING;
ALTER TABLE ddl_ledger_shadow SET LOGGED;
SELECT relreplident FROM pg_class WHERE oid = 'ddl_ledger_shadow'::regclass;

-- 5. A superuser who manages replica identity turns the setting off; bemi_status() then lists the
--    table. alice still cannot.
SET bemi.replica_identity_full = off;
ALTER TABLE ddl_accounts REPLICA IDENTITY DEFAULT;
RESET bemi.replica_identity_full;
SELECT 'public.ddl_accounts' = ANY (incomplete_image_tables) AS listed FROM bemi_status();
ALTER TABLE ddl_accounts REPLICA IDENTITY FULL;

-- Tables bemi does not record are not its business: temporary tables, and databases without bemi.
CREATE TEMP TABLE ddl_scratch (id int);
ALTER TABLE ddl_scratch REPLICA IDENTITY NOTHING;
ALTER TABLE ddl_scratch ALTER COLUMN id TYPE bigint;
SELECT count(*) AS scratch_gaps FROM bemi.gaps WHERE relation LIKE '%ddl\_scratch%';
SELECT current_database() AS regress_db \gset
CREATE DATABASE ddl_without_bemi;
\c ddl_without_bemi
CREATE TABLE plain (id int PRIMARY KEY);
ALTER TABLE plain REPLICA IDENTITY NOTHING;
ALTER TABLE plain SET UNLOGGED;
\c :regress_db
DROP DATABASE ddl_without_bemi;

-- 6. Schema USAGE: with SELECT on a table but no USAGE on its schema, alice cannot query it, and
--    cannot read its history by OID either.
CREATE SCHEMA ddl_private;
CREATE TABLE ddl_private.salaries (id int PRIMARY KEY, amount int);
INSERT INTO ddl_private.salaries VALUES (1, 9000);
GRANT SELECT ON ddl_private.salaries TO alice;
SELECT bemi_wait();
SELECT 'ddl_private.salaries'::regclass::oid AS salaries_oid \gset
SET ROLE alice;
SELECT * FROM ddl_private.salaries;
SELECT operation, after FROM bemi_table_history(:salaries_oid::regclass) WHERE operation <> 'DDL';
SELECT operation, after FROM bemi_row_history(:salaries_oid::regclass, '1');
SELECT operation, after FROM bemi_row_history(:salaries_oid::regclass, 1);
-- Her own table's history she reads as before.
SELECT count(*) > 0 AS reads_own FROM bemi_table_history('ddl_accounts');
RESET ROLE;
-- With USAGE she reads it.
GRANT USAGE ON SCHEMA ddl_private TO alice;
SET ROLE alice;
SELECT operation, after FROM bemi_table_history(:salaries_oid::regclass) WHERE operation <> 'DDL';
RESET ROLE;

DROP SCHEMA ddl_private CASCADE;
DROP TABLE ddl_accounts, ddl_ledger;
DROP ROLE alice;
