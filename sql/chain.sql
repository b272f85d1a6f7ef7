-- Tamper evidence: every change the worker records is chained to the one before it (hash,
-- previous_id). bemi_verify() recomputes the chain and names the first change that was altered,
-- removed, inserted or reordered; bemi_chain_head() is the last link, to publish elsewhere.
-- A fresh trail. The forgeries below are made by a superuser with bemi.allow_trail_changes, set
-- for one transaction only (SET LOCAL) and rolled back after each check.
SET bemi.allow_drop = on;
DROP EXTENSION bemi;
RESET bemi.allow_drop;
CREATE EXTENSION bemi;

CREATE TABLE ledger (id int PRIMARY KEY, amount numeric, note text);
BEGIN;
SELECT bemi_set_context('{"user": "ann"}');
INSERT INTO ledger VALUES (1, 10.50, 'first'), (2, 20, 'second'), (3, 30, 'third');
COMMIT;
UPDATE ledger SET amount = 31.00, note = 'third, corrected' WHERE id = 3;
DELETE FROM ledger WHERE id = 1;
INSERT INTO ledger SELECT g, g, repeat('x', 3000) || g FROM generate_series(4, 6) g;  -- large values too
SELECT bemi_wait() AS waited;

-- The changes of ledger, numbered 1..n in the order they were recorded.
CREATE TEMP TABLE n AS
    SELECT row_number() OVER (ORDER BY id) AS n, id FROM bemi.changes
     WHERE "table" = 'ledger' AND operation IN ('CREATE', 'UPDATE', 'DELETE');
SELECT count(*) AS ledger_changes FROM n;
CREATE FUNCTION pg_temp.id(k int) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM n WHERE n = k $$;
CREATE FUNCTION pg_temp.verify() RETURNS TABLE (reason text, change bigint, forged boolean) LANGUAGE sql AS $$
    SELECT v.reason, (SELECT n FROM n WHERE n.id = v.id), v.id > (SELECT max(id) FROM n) FROM bemi_verify() v
$$;

-- Every change is chained: a 32-byte hash, and previous_id names the change written before it.
SELECT count(*) FILTER (WHERE octet_length(hash) = 32) = count(*) AS all_chained,
       count(*) FILTER (WHERE previous_id IS NOT DISTINCT FROM prev) = count(*) AS linked_in_order,
       count(*) FILTER (WHERE previous_id IS NULL) AS chain_starts,
       count(DISTINCT hash) = count(*) AS hashes_differ
  FROM (SELECT id, hash, previous_id, lag(id) OVER (ORDER BY id) AS prev FROM bemi.changes) c;

-- Intact: no row. The head is the last change.
SELECT * FROM bemi_verify();
SELECT h.id = (SELECT max(id) FROM bemi.changes) AS head_is_last,
       h.hash = (SELECT hash FROM bemi.changes ORDER BY id DESC LIMIT 1) AS head_hash,
       h.position = (SELECT position FROM bemi.changes ORDER BY id DESC LIMIT 1) AS head_position
  FROM bemi_chain_head() h;
-- Windows of time: all of it, and nothing.
SELECT count(*) AS problems FROM bemi_verify(now() - interval '1 hour', now());
SELECT count(*) AS problems FROM bemi_verify('infinity');
-- No row must mean "checked and intact": a NULL or an empty range is refused, not passed.
SELECT * FROM bemi_verify(NULL);
SELECT * FROM bemi_verify('2026-01-02', '2026-01-01');

-- A changed value: the change is named as altered.
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
UPDATE bemi.changes SET "after" = jsonb_set("after", '{amount}', '3100') WHERE id = pg_temp.id(4);
SELECT * FROM pg_temp.verify();
ROLLBACK;
-- So is a change of its context, or of when it was written, or a large value.
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
UPDATE bemi.changes SET context = context || '{"user": "bob"}' WHERE id = pg_temp.id(2);
SELECT * FROM pg_temp.verify();
ROLLBACK;
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
UPDATE bemi.changes SET created_at = created_at + interval '1 second' WHERE id = pg_temp.id(5);
SELECT * FROM pg_temp.verify();
ROLLBACK;
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
UPDATE bemi.changes SET "after" = jsonb_set("after", '{note}', to_jsonb(repeat('y', 3000))) WHERE id = pg_temp.id(7);
SELECT * FROM pg_temp.verify();
ROLLBACK;

-- A deleted change: named as removed (by its id, which the change after it still names).
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
DELETE FROM bemi.changes WHERE id = pg_temp.id(3);
SELECT * FROM pg_temp.verify();
ROLLBACK;
-- The first one too.
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
DELETE FROM bemi.changes WHERE id = pg_temp.id(1);
SELECT * FROM pg_temp.verify();
ROLLBACK;

-- An inserted change: without a hash ...
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
INSERT INTO bemi.changes (primary_key, "after", database, schema, "table", operation, committed_at, transaction_id, position)
SELECT primary_key, "after", database, schema, "table", operation, committed_at, transaction_id, position
  FROM bemi.changes WHERE id = pg_temp.id(2);
SELECT * FROM pg_temp.verify();
ROLLBACK;
-- ... or pretending to follow a change in the middle of the chain.
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
INSERT INTO bemi.changes (primary_key, "after", database, schema, "table", operation, committed_at, transaction_id, position, hash, previous_id)
SELECT primary_key, "after", database, schema, "table", operation, committed_at, transaction_id, position, sha256(hash), id
  FROM bemi.changes WHERE id = pg_temp.id(2);
SELECT * FROM pg_temp.verify();
ROLLBACK;
-- Two changes swapped (all they hold, but their ids): named as reordered.
BEGIN;
SET LOCAL bemi.allow_trail_changes = on;
UPDATE bemi.changes c
   SET primary_key = o.primary_key, "before" = o."before", "after" = o."after", context = o.context,
       operation = o.operation, committed_at = o.committed_at, transaction_id = o.transaction_id,
       position = o.position, created_at = o.created_at
  FROM bemi.changes o
 WHERE (c.id, o.id) IN ((pg_temp.id(3), pg_temp.id(4)), (pg_temp.id(4), pg_temp.id(3)));
SELECT * FROM pg_temp.verify();
ROLLBACK;

-- Rolled back: intact again, and recording goes on in the chain.
SELECT * FROM bemi_verify();
INSERT INTO ledger VALUES (7, 70, 'seventh');
SELECT bemi_wait() AS waited;
SELECT previous_id = (SELECT max(id) FROM n) AS links_to_the_last FROM bemi.changes ORDER BY id DESC LIMIT 1;
SELECT * FROM bemi_verify();

-- The anchors are part of the trail: refused like bemi.changes, superusers included.
INSERT INTO bemi.chain_anchors (id, previous_id, previous_hash) VALUES (1, 0, '\x00');

-- Who may check: bemi_reader (who may read the whole trail anyway), not everyone.
CREATE ROLE chain_nobody;
CREATE ROLE chain_auditor IN ROLE bemi_reader;
SET ROLE chain_nobody;
SELECT * FROM bemi_verify();
SELECT * FROM bemi_chain_head();
SET ROLE chain_auditor;
SELECT * FROM bemi_verify();
SELECT id IS NOT NULL AS head FROM bemi_chain_head();
RESET ROLE;
DROP ROLE chain_nobody;
DROP ROLE chain_auditor;
DROP TABLE ledger;
