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
  FROM bemi.changes WHERE "table" IN ('rename_ledger', 'rename_tmp_ledger', 'rename_users', 'rename_users_plain', 'notes')
 ORDER BY id;
SELECT relation, role, regexp_replace(reason, 'rule [0-9]+ ', 'rule ', 'g') AS reason, statement
  FROM bemi.gaps WHERE id > :last_gap ORDER BY id;

DELETE FROM bemi.rules WHERE id IN (:r_tmp, :r_hidden, :r_mask);
DROP TABLE rename_ledger, rename_users;
DROP SCHEMA rename_s, rename_hidden CASCADE;
DROP OWNED BY rename_owner, rename_other;
DROP ROLE rename_owner, rename_other;
