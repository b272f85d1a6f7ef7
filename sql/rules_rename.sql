-- Renames against tracking rules (issue 13): the rules match a table's name when each change is
-- decoded, so an ordinary table owner could rename her table into an ignore rule's pattern (or out
-- of a mask's), write unrecorded (or in clear), and rename it back. The DDL guard records such a
-- rename in bemi.gaps: relation, role, statement, and which rules matched before and after.
CREATE ROLE rename_owner;
CREATE ROLE rename_other;
-- Renaming needs CREATE on the schema (and on the database for a schema): an ordinary owner's rights.
GRANT CREATE ON SCHEMA public TO rename_owner;
DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO rename_owner', current_database()); END $$;
CREATE SCHEMA rename_s AUTHORIZATION rename_owner;
CREATE TABLE rename_ledger (id int PRIMARY KEY, amount int);
CREATE TABLE rename_users (id int PRIMARY KEY, password text);
CREATE TABLE rename_s.notes (id int PRIMARY KEY, body text);
ALTER TABLE rename_ledger OWNER TO rename_owner;
ALTER TABLE rename_users OWNER TO rename_owner;
ALTER TABLE rename_s.notes OWNER TO rename_owner;
SELECT bemi_ignore('public.rename_tmp_*') AS r_tmp, bemi_ignore('rename_hidden.*') AS r_hidden,
       bemi_mask('public.rename_users', '{password}') AS r_mask \gset
SELECT coalesce(max(id), 0) AS last_gap FROM bemi.gaps \gset
SET ROLE rename_owner;

-- 1. Into an ignore rule and back: the UPDATE in between is not recorded.
INSERT INTO rename_ledger VALUES (1, 100);
ALTER TABLE rename_ledger RENAME TO rename_tmp_ledger;
UPDATE rename_tmp_ledger SET amount = 0;
ALTER TABLE rename_tmp_ledger RENAME TO rename_ledger;
UPDATE rename_ledger SET amount = 1;
-- 2. Out of a mask and back: the INSERT in between is recorded in clear.
ALTER TABLE rename_users RENAME TO rename_users_plain;
INSERT INTO rename_users_plain VALUES (1, 'secret-1');
ALTER TABLE rename_users_plain RENAME TO rename_users;
INSERT INTO rename_users VALUES (2, 'secret-2');
-- 3. A schema renamed into an ignore rule's pattern and back.
INSERT INTO rename_s.notes VALUES (1, 'a');
ALTER SCHEMA rename_s RENAME TO rename_hidden;
UPDATE rename_hidden.notes SET body = 'hidden';
ALTER SCHEMA rename_hidden RENAME TO rename_s;
-- 4. SET SCHEMA into an ignored schema and back.
RESET ROLE;
CREATE SCHEMA rename_hidden AUTHORIZATION rename_owner;
SET ROLE rename_owner;
ALTER TABLE rename_ledger SET SCHEMA rename_hidden;
UPDATE rename_hidden.rename_ledger SET amount = 2;
ALTER TABLE rename_hidden.rename_ledger SET SCHEMA public;
-- 5. Renames that change no rule's match, and a rename that fails: no gap.
ALTER TABLE rename_ledger RENAME TO rename_ledger2;
ALTER TABLE rename_ledger2 RENAME TO rename_ledger;
BEGIN;
ALTER TABLE rename_ledger RENAME TO rename_tmp_undone;
ROLLBACK;
SET ROLE rename_other;
ALTER TABLE rename_ledger RENAME TO rename_tmp_ledger;
RESET ROLE;

SELECT bemi_wait();
SELECT schema, "table", operation, primary_key, before, after
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" IN ('rename_ledger', 'rename_tmp_ledger', 'rename_users', 'rename_users_plain', 'notes')
 ORDER BY id;
SELECT relation, role, regexp_replace(reason, 'rule [0-9]+ ', 'rule ', 'g') AS reason, statement
  FROM bemi.gaps WHERE id > :last_gap ORDER BY id;


-- Column renames against column rules: renaming a column out of a mask (password to pw) or into
-- an ignore-with-columns rule (note to updated_at), writing, and renaming it back.
CREATE TABLE rename_accounts (id int PRIMARY KEY, password text, note text);
ALTER TABLE rename_accounts OWNER TO rename_owner;
SELECT bemi_mask('public.rename_accounts', '{password}') AS r_cmask,
       bemi_ignore('public.rename_accounts', '{updated_at}') AS r_cignore \gset
SELECT coalesce(max(id), 0) AS last_gap FROM bemi.gaps \gset
SET ROLE rename_owner;
INSERT INTO rename_accounts VALUES (1, 'secret-1', 'n1');
-- 6. Out of a mask and back: the UPDATE in between is recorded in clear.
ALTER TABLE rename_accounts RENAME COLUMN password TO pw;
UPDATE rename_accounts SET pw = 'secret-2';
ALTER TABLE rename_accounts RENAME COLUMN pw TO password;
-- 7. Into an ignored column and back: the UPDATE in between is not recorded.
ALTER TABLE rename_accounts RENAME COLUMN note TO updated_at;
UPDATE rename_accounts SET updated_at = 'hidden';
ALTER TABLE rename_accounts RENAME updated_at TO note;
UPDATE rename_accounts SET note = 'n3';
-- 8. A column rename no rule cares about, and one rolled back: no gap.
ALTER TABLE rename_accounts RENAME COLUMN note TO remark;
ALTER TABLE rename_accounts RENAME COLUMN remark TO note;
BEGIN;
ALTER TABLE rename_accounts RENAME COLUMN password TO pw;
ROLLBACK;

-- Partitions are recorded as their root (bemi.partitions_as_root): their rules follow the root
-- they belong to at the time of the change. ATTACH and DETACH move a partition between roots.
RESET ROLE;
CREATE TABLE rename_parts (id int, password text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE rename_parts_1 PARTITION OF rename_parts FOR VALUES FROM (0) TO (100);
CREATE TABLE rename_quiet (id int, body text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE rename_loose (id int PRIMARY KEY, body text);
CREATE TABLE rename_sub (id int, body text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE rename_sub_a PARTITION OF rename_sub FOR VALUES FROM (100) TO (200);
ALTER TABLE rename_parts OWNER TO rename_owner;
ALTER TABLE rename_parts_1 OWNER TO rename_owner;
ALTER TABLE rename_quiet OWNER TO rename_owner;
ALTER TABLE rename_loose OWNER TO rename_owner;
ALTER TABLE rename_sub OWNER TO rename_owner;
ALTER TABLE rename_sub_a OWNER TO rename_owner;
SELECT bemi_mask('public.rename_parts', '{password}') AS r_pmask,
       bemi_ignore('public.rename_quiet') AS r_quiet \gset
SET ROLE rename_owner;
INSERT INTO rename_parts VALUES (1, 'secret-p1');
INSERT INTO rename_loose VALUES (1, 'l1');
INSERT INTO rename_sub VALUES (100, 's1');
-- 9. Out of a masked root and back: the INSERT in between is recorded in clear.
ALTER TABLE rename_parts DETACH PARTITION rename_parts_1;
INSERT INTO rename_parts_1 VALUES (2, 'secret-p2');
ALTER TABLE rename_parts ATTACH PARTITION rename_parts_1 FOR VALUES FROM (0) TO (100);
-- 10. Into an ignored root and out again (CONCURRENTLY): the UPDATE in between is not recorded.
ALTER TABLE rename_quiet ATTACH PARTITION rename_loose FOR VALUES FROM (0) TO (100);
UPDATE rename_loose SET body = 'hidden';
ALTER TABLE rename_quiet DETACH PARTITION rename_loose CONCURRENTLY;
UPDATE rename_loose SET body = 'l2';
-- 11. A partitioned table with its own partition: its sub-partitions move with it.
ALTER TABLE rename_quiet ATTACH PARTITION rename_sub FOR VALUES FROM (100) TO (200);
UPDATE rename_sub_a SET body = 'hidden';
ALTER TABLE rename_quiet DETACH PARTITION rename_sub;
UPDATE rename_sub SET body = 's2';
-- 12. Between roots no rule tells apart, and an ATTACH rolled back: no gap.
ALTER TABLE rename_sub DETACH PARTITION rename_sub_a;
ALTER TABLE rename_sub ATTACH PARTITION rename_sub_a FOR VALUES FROM (100) TO (200);
BEGIN;
ALTER TABLE rename_quiet ATTACH PARTITION rename_loose FOR VALUES FROM (0) TO (100);
ROLLBACK;
RESET ROLE;

SELECT bemi_wait();
SELECT "table", operation, primary_key, before, after
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" IN ('rename_accounts', 'rename_parts', 'rename_parts_1', 'rename_quiet',
                                      'rename_loose', 'rename_sub', 'rename_sub_a')
 ORDER BY id;
SELECT relation, role, regexp_replace(reason, 'rule [0-9]+ ', 'rule ', 'g') AS reason, statement
  FROM bemi.gaps WHERE id > :last_gap ORDER BY id;
DELETE FROM bemi.rules WHERE id IN (:r_cmask, :r_cignore, :r_pmask, :r_quiet);
DROP TABLE rename_accounts, rename_parts, rename_quiet, rename_loose, rename_sub;

DELETE FROM bemi.rules WHERE id IN (:r_tmp, :r_hidden, :r_mask);
DROP TABLE rename_ledger, rename_users;
DROP SCHEMA rename_s, rename_hidden CASCADE;
DROP OWNED BY rename_owner, rename_other;
DROP ROLE rename_owner, rename_other;
