-- Tracking rules and what reads the trail back (issue 13): a revert never writes a mask (the
-- marker, a hash, a dropped value) into a table, whatever the rules are now; time travel returns a
-- masked column masked.
SET TimeZone = 'UTC';
\set SHOW_CONTEXT never
CREATE TABLE rrv_users (id int PRIMARY KEY, email text, password text, api_token text, ssn text, pin int);
SELECT bemi_mask('public.rrv_users', '{password, pin}') AS r_redact,
       bemi_mask('public.rrv_users', '{api_token}', 'hash') AS r_hash,
       bemi_mask('public.rrv_users', '{ssn}', 'drop') AS r_drop \gset
INSERT INTO rrv_users VALUES (1, 'ann@example.com', 'pass-1', 'token-1', 'ssn-1', 1111),
                             (2, 'bob@example.com', 'pass-2', 'token-2', 'ssn-2', 2222);
SELECT bemi_wait();
SELECT clock_timestamp() AS t1 \gset
UPDATE rrv_users SET email = 'ann@example.org', password = 'pass-1b', api_token = 'token-1b', ssn = 'ssn-1b', pin = 1112
 WHERE id = 1;
SELECT bemi_wait();
SELECT id AS upd FROM bemi.changes WHERE "table" = 'rrv_users' AND operation = 'UPDATE' \gset
-- What the trail holds of the UPDATE: masks only.
SELECT before - 'api_token' AS before, before->>'api_token' ~ '^hmac:[0-9a-f]{64}$' AS hashed
  FROM bemi.changes WHERE id = :upd;

-- Time travel: a masked text column comes back as its mask (the marker, the hash), a masked column
-- of another type and a dropped one as NULL; unmasked columns as they were.
SELECT id, email, password, api_token ~ '^hmac:[0-9a-f]{64}$' AS hashed, ssn, pin
  FROM bemi_as_of(NULL::rrv_users, :'t1') ORDER BY id;
SELECT (r).email, (r).password, (r).ssn, (r).pin FROM (SELECT bemi_row_as_of(NULL::rrv_users, 1, :'t1') AS r) s;

-- A revert of the UPDATE puts back what the trail knows (email) and leaves the masked columns as
-- they are, with a NOTICE; a dry run says the same and shows the SQL that writes only email.
SELECT action, statement FROM bemi_revert_change(:upd, dry_run => true);
SELECT action, rows FROM bemi_revert_change(:upd);
SELECT * FROM rrv_users ORDER BY id;

-- A revert of a DELETE inserts the row; the masked columns get their default (NULL here).
DELETE FROM rrv_users WHERE id = 2;
SELECT bemi_wait();
SELECT id AS del FROM bemi.changes WHERE "table" = 'rrv_users' AND operation = 'DELETE' \gset
SELECT action, rows FROM bemi_revert_change(:del);
SELECT * FROM rrv_users ORDER BY id;

-- An ordinary role (no bemi_reader, no USAGE on schema bemi) with rights on the table gets the
-- same: it reads time travel, learns which columns are masked, reverts; a role that may not read
-- the table learns nothing.
CREATE ROLE rrv_app;
CREATE ROLE rrv_other;
GRANT SELECT, INSERT, UPDATE, DELETE ON rrv_users TO rrv_app;
SET ROLE rrv_app;
SELECT bemi_masked_columns('rrv_users');
SELECT id, email, password, ssn, pin FROM bemi_as_of(NULL::rrv_users, :'t1') ORDER BY id;
SELECT action, rows FROM bemi_revert_change(:upd, force => true, dry_run => true);
SET ROLE rrv_other;
SELECT bemi_masked_columns('rrv_users');
RESET ROLE;
DROP OWNED BY rrv_app, rrv_other;
DROP ROLE rrv_app, rrv_other;

-- Judged by the value's shape too: with the rules gone, a mask in an old image is still never
-- written, and values recorded in clear since are.
SELECT bemi_drop_rule(:r_redact), bemi_drop_rule(:r_hash), bemi_drop_rule(:r_drop);
UPDATE rrv_users SET password = 'pass-1c', ssn = 'ssn-1c' WHERE id = 1;
SELECT bemi_wait();
SELECT action, rows FROM bemi_revert_change(:upd, force => true);
SELECT id, email, password, api_token, ssn, pin FROM rrv_users WHERE id = 1;
SELECT max(id) AS clear FROM bemi.changes WHERE "table" = 'rrv_users' AND operation = 'UPDATE' AND NOT coalesce(context ? 'bemi_revert', false) \gset
SELECT action, rows FROM bemi_revert_change(:clear, force => true);
SELECT id, password, ssn FROM rrv_users WHERE id = 1;
SELECT count(*) AS masks_in_table FROM rrv_users r
 WHERE to_jsonb(r)::text ~ '\[masked\]|hmac:';

DROP TABLE rrv_users;

-- A mask that does not fit its column's type (a varchar(4), a char(2), a domain over one, a
-- domain whose check rejects it; the hash in a varchar(10)) reads as NULL in time travel, on every
-- path (an image before the moment, after a TRUNCATE the replayed images); masks that fit come back.
CREATE DOMAIN rrv_short AS varchar(4);
CREATE DOMAIN rrv_digits AS text CHECK (VALUE ~ '^[0-9]*$');
CREATE DOMAIN rrv_medium AS varchar(20);
CREATE TABLE rrv_cards (id int PRIMARY KEY, last4 varchar(4), country char(2), code rrv_short, pin rrv_digits,
                        label varchar(10), hlabel varchar(10), dlabel rrv_medium, note varchar(80), plain text);
SELECT bemi_mask('public.rrv_cards', '{last4, country, code, pin, label, dlabel}') AS r_cards,
       bemi_mask('public.rrv_cards', '{hlabel, note, plain}', 'hash') AS r_cards_hash \gset
INSERT INTO rrv_cards VALUES (1, '4242', 'FR', 'AB12', '1234', 'gold', 'gold', 'gold', 'a note', 'plain');
SELECT bemi_wait();
SELECT clock_timestamp() AS t3 \gset
UPDATE rrv_cards SET last4 = '1881', country = 'DE', code = 'CD34', pin = '5678', label = 'silver', hlabel = 'silver',
                     dlabel = 'silver', note = 'b note', plain = 'plain 2';
SELECT bemi_wait();
SELECT id, last4, country, code, pin, label, hlabel, dlabel, note ~ '^hmac:[0-9a-f]{64}$' AS note_hashed,
       plain ~ '^hmac:[0-9a-f]{64}$' AS plain_hashed
  FROM bemi_as_of(NULL::rrv_cards, :'t3');
SELECT * FROM bemi_mask_misfits('rrv_cards');
SELECT (r).last4, (r).country, (r).code, (r).pin, (r).label, (r).hlabel, (r).dlabel, (r).note ~ '^hmac:' AS note_hashed
  FROM (SELECT bemi_row_as_of(NULL::rrv_cards, 1, :'t3') AS r) s;
SELECT clock_timestamp() AS t4 \gset
TRUNCATE rrv_cards;
SELECT bemi_wait();
SELECT id, last4, country, code, pin, label, hlabel, dlabel, note ~ '^hmac:[0-9a-f]{64}$' AS note_hashed
  FROM bemi_as_of(NULL::rrv_cards, :'t4');
SELECT (r).last4, (r).country, (r).code, (r).pin, (r).label, (r).hlabel, (r).dlabel, (r).note ~ '^hmac:' AS note_hashed
  FROM (SELECT bemi_row_as_of(NULL::rrv_cards, 1, :'t4') AS r) s;
SELECT bemi_drop_rule(:r_cards), bemi_drop_rule(:r_cards_hash);
DROP TABLE rrv_cards;
DROP DOMAIN rrv_short, rrv_digits, rrv_medium;

-- Masked primary-key columns: the trail's primary_key is masked too ("[masked]" for every row of
-- a redacted key, a hash stable per value, an empty key for a dropped one), so history by key,
-- conflict checks and reverts cannot tell those rows apart or find them in the table.
CREATE TABLE rrv_accounts (email text PRIMARY KEY, name text);
CREATE TABLE rrv_tokens (token text PRIMARY KEY, owner text);
CREATE TABLE rrv_pairs (org int, ssn text, note text, PRIMARY KEY (org, ssn));
CREATE TABLE rrv_plain (id int PRIMARY KEY, v text);
SELECT bemi_mask('public.rrv_accounts', '{email}') AS r_acc,
       bemi_mask('public.rrv_tokens', '{token}', 'hash') AS r_tok,
       bemi_mask('public.rrv_pairs', '{ssn}', 'drop') AS r_pairs \gset
INSERT INTO rrv_accounts VALUES ('ann@example.com', 'Ann'), ('bob@example.com', 'Bob');
INSERT INTO rrv_tokens VALUES ('tok-1', 'ann'), ('tok-2', 'bob');
INSERT INTO rrv_pairs VALUES (1, 'ssn-1', 'a'), (1, 'ssn-2', 'b');
INSERT INTO rrv_plain VALUES (1, 'x');
SELECT bemi_wait();
SELECT clock_timestamp() AS t5 \gset
BEGIN;
UPDATE rrv_accounts SET name = 'Ann B' WHERE email = 'ann@example.com';
DELETE FROM rrv_accounts WHERE email = 'bob@example.com';
INSERT INTO rrv_accounts VALUES ('cid@example.com', 'Cid');
UPDATE rrv_tokens SET owner = 'ann b' WHERE token = 'tok-1';
DELETE FROM rrv_tokens WHERE token = 'tok-2';
UPDATE rrv_pairs SET note = 'a2' WHERE ssn = 'ssn-1';
DELETE FROM rrv_pairs WHERE ssn = 'ssn-2';
UPDATE rrv_plain SET v = 'y';
COMMIT;
SELECT bemi_wait();
SELECT max(transaction_id) AS xact FROM bemi.changes WHERE "table" = 'rrv_plain' \gset
-- What the trail holds: primary_key as the plugin rendered it from the masked image.
SELECT "table", operation, CASE WHEN primary_key ~ 'hmac:' THEN regexp_replace(primary_key, '[0-9a-f]{64}', '<hash>') ELSE primary_key END AS primary_key
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" IN ('rrv_accounts', 'rrv_tokens', 'rrv_pairs') ORDER BY id;
-- History by key: "[masked]" is every row of rrv_accounts; a hash is one row of rrv_tokens.
SELECT count(*) FROM bemi_row_history('rrv_accounts', '[masked]'::text);
SELECT count(*) FROM bemi_row_history('rrv_tokens', (SELECT primary_key FROM bemi.changes WHERE "table" = 'rrv_tokens' AND operation = 'DELETE'));
-- Time travel matches the trail to rows by key: with the key masked in the changes since the
-- moment, it cannot, and refuses (55000) rather than return those changes' images as extra rows.
\set VERBOSITY sqlstate
SELECT * FROM bemi_as_of(NULL::rrv_accounts, :'t5') ORDER BY 1;
SELECT bemi_row_as_of(NULL::rrv_accounts, 'ann@example.com'::text, :'t5');
SELECT * FROM bemi_as_of(NULL::rrv_tokens, :'t5') ORDER BY 1;
SELECT * FROM bemi_as_of(NULL::rrv_pairs, :'t5') ORDER BY 1, 2;
\set VERBOSITY default
-- bemi_tracked_tables() says what a masked key costs.
SELECT table_name, masked_columns, problems FROM bemi_tracked_tables() WHERE table_name IN ('rrv_accounts', 'rrv_tokens', 'rrv_pairs');
-- Reverts: a change of a row whose key is masked is refused, or with force left out with a NOTICE
-- (each change alone, and in a transaction with a change of another table that is reverted); no
-- row is matched by a mask, none inserted without its key. (Terse: the DETAIL names change ids.)
\set VERBOSITY terse
SELECT c."table", c.operation, r.action, r.rows, r.statement
  FROM bemi.changes c LEFT JOIN LATERAL bemi_revert_change(c.id, force => true, dry_run => true) r ON true
 WHERE c.transaction_id = :xact ORDER BY c.id;
SELECT "table", action, regexp_replace(primary_key, '[0-9a-f]{64}', '<hash>') AS primary_key, rows
  FROM bemi_revert_transaction(:xact, dry_run => true);
SELECT "table", action, regexp_replace(primary_key, '[0-9a-f]{64}', '<hash>') AS primary_key, rows
  FROM bemi_revert_transaction(:xact);
SELECT "table", action, regexp_replace(primary_key, '[0-9a-f]{64}', '<hash>') AS primary_key, rows
  FROM bemi_revert_transaction(:xact, force => true);
-- A key with a default: the revert of a DELETE must not insert another row under a new key.
CREATE TABLE rrv_ids (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
SELECT bemi_mask('public.rrv_ids', '{id}') AS r_ids \gset
INSERT INTO rrv_ids (v) VALUES ('one'), ('two');
DELETE FROM rrv_ids WHERE id = 2;
SELECT bemi_wait();
SELECT "table", action, rows FROM bemi_revert_change((SELECT max(id) FROM bemi.changes WHERE "table" = 'rrv_ids'));
DO $$
DECLARE
    d text;
BEGIN
    PERFORM bemi_revert_change((SELECT max(id) FROM bemi.changes WHERE "table" = 'rrv_ids'));
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'DETAIL: %', regexp_replace(d, 'change \d+', 'change N', 'g');
END $$;
SELECT "table", action, rows FROM bemi_revert_change((SELECT max(id) FROM bemi.changes WHERE "table" = 'rrv_ids'), force => true);
SELECT * FROM rrv_ids ORDER BY id;
SELECT bemi_drop_rule(:r_ids);
DROP TABLE rrv_ids;
\set VERBOSITY default
SELECT * FROM rrv_accounts ORDER BY 1;
SELECT * FROM rrv_tokens ORDER BY 1;
SELECT * FROM rrv_pairs ORDER BY 1, 2;
SELECT * FROM rrv_plain;
SELECT bemi_drop_rule(:r_acc), bemi_drop_rule(:r_tok), bemi_drop_rule(:r_pairs);
DROP TABLE rrv_accounts, rrv_tokens, rrv_pairs, rrv_plain;
-- A mask on the key made after a change: the later changes, recorded under it, may be of the
-- same row, so each is a conflict; the change recorded in clear is reverted with force.
CREATE TABLE rrv_late (id int PRIMARY KEY, v text);
INSERT INTO rrv_late VALUES (1, 'a'), (2, 'b');
UPDATE rrv_late SET v = 'a2' WHERE id = 1;
SELECT bemi_wait();
SELECT max(id) AS late_upd FROM bemi.changes WHERE "table" = 'rrv_late' \gset
SELECT bemi_mask('public.rrv_late', '{id}') AS r_late \gset
UPDATE rrv_late SET v = 'b2' WHERE id = 2;
SELECT bemi_wait();
\set VERBOSITY terse
SELECT action, rows FROM bemi_revert_change(:late_upd);
DO $$
DECLARE
    d text;
BEGIN
    PERFORM bemi_revert_change((SELECT min(id) FROM bemi.changes WHERE "table" = 'rrv_late' AND operation = 'UPDATE'));
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'DETAIL: %', regexp_replace(d, 'change \d+', 'change N', 'g');
END $$;
\set VERBOSITY default
SELECT action, rows FROM bemi_revert_change(:late_upd, force => true);
SELECT * FROM rrv_late ORDER BY id;
SELECT bemi_drop_rule(:r_late);
DROP TABLE rrv_late;

-- Ignored-only UPDATEs are not in the trail: time travel gives the ignored column as the next
-- recorded change's before image holds it (or as it is now), which may be later than the moment.
CREATE TABLE rrv_posts (id int PRIMARY KEY, title text, views int);
SELECT bemi_ignore('public.rrv_posts', '{views}') AS r_views \gset
INSERT INTO rrv_posts VALUES (1, 'a', 0), (2, 'b', 0);
SELECT bemi_wait();
SELECT clock_timestamp() AS t2 \gset
UPDATE rrv_posts SET views = 5;
UPDATE rrv_posts SET title = 'a2' WHERE id = 1;
SELECT bemi_wait();
SELECT id, operation FROM (SELECT h.primary_key::int AS id, h.operation, h.id AS cid
                             FROM bemi_table_history('rrv_posts', :'t2', 'infinity') h) s ORDER BY cid;
SELECT * FROM bemi_as_of(NULL::rrv_posts, :'t2') ORDER BY id;
SELECT bemi_drop_rule(:r_views);
DROP TABLE rrv_posts;
