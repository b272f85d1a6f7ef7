-- Identity comes only from the server. Any role may call pg_logical_emit_message, with bemi's
-- prefix or with Bemi's trigger prefix: such a message carries application context at most. The
-- `_bemi` identity recorded with a change is the one bemi's own backend code signed for the
-- writer's transaction; a message that breaks the limits of bemi_set_context is recorded as a
-- note with its reason, never with its bytes.
CREATE ROLE mallory LOGIN;
CREATE TABLE id_notes (id int PRIMARY KEY, body text);
GRANT ALL ON id_notes TO mallory;
SET application_name = 'security_identity';

-- What a real message looks like (seen raw through test_decoding, which only a superuser or a
-- replication role can do): a versioned header with a MAC, then the context.
SELECT 'slot' FROM pg_create_logical_replication_slot('id_raw', 'test_decoding', true);
BEGIN;
SELECT bemi_set_context('{"user_id": 1}');
INSERT INTO id_notes VALUES (0, 'by the superuser');
COMMIT;
SELECT substring(data FROM 'content:(.*)$') AS real_message
  FROM pg_logical_slot_get_changes('id_raw', NULL, NULL) WHERE data LIKE 'message:%prefix: bemi,%' \gset
SELECT replace(regexp_replace(:'real_message', '^bemi:1:[0-9a-f]{64}:', 'bemi:1:<mac>:'),
               '"' || session_user || '"', '"<superuser>"') AS real_message;
SELECT 'dropped' FROM pg_drop_replication_slot('id_raw');

-- Mallory writes a row, then emits a message, then writes another row, in one transaction. Each
-- attempt is numbered; the second row of each shows what the message achieved.
SET ROLE mallory;
-- 1. The issue's forgery, with bemi's prefix.
BEGIN;
INSERT INTO id_notes VALUES (10, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi',
  '{"_bemi": {"role": "postgres", "application_name": "admin-console"}}');
INSERT INTO id_notes VALUES (11, 'after');
COMMIT;
-- 2. The same with Bemi's trigger prefix, plus application context (which is allowed).
BEGIN;
INSERT INTO id_notes VALUES (20, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi',
  '{"ticket": 7, "_bemi": {"role": "postgres", "application_name": "admin-console"}}');
INSERT INTO id_notes VALUES (21, 'after');
COMMIT;
-- 3. A copy of the superuser's real message: its MAC is for another transaction.
BEGIN;
INSERT INTO id_notes VALUES (30, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi', :'real_message');
INSERT INTO id_notes VALUES (31, 'after');
COMMIT;
-- 4. The copy under Bemi's trigger prefix.
BEGIN;
INSERT INTO id_notes VALUES (40, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi', :'real_message');
INSERT INTO id_notes VALUES (41, 'after');
COMMIT;
-- 5. Our form with a made-up MAC.
BEGIN;
INSERT INTO id_notes VALUES (50, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi', 'bemi:1:' || repeat('0', 64) ||
  ':{"_bemi": {"role": "postgres", "application_name": "admin-console"}}');
INSERT INTO id_notes VALUES (51, 'after');
COMMIT;
-- 6. A message before the transaction's first write: bemi's own message follows it.
BEGIN;
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi',
  '{"_bemi": {"role": "postgres", "application_name": "admin-console"}}');
INSERT INTO id_notes VALUES (61, 'first write');
COMMIT;
-- 7. Trying to erase the identity: `_bemi` null, an empty object.
BEGIN;
INSERT INTO id_notes VALUES (70, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi', '{"_bemi": null}');
INSERT INTO id_notes VALUES (71, 'after null');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi', '{}');
INSERT INTO id_notes VALUES (72, 'after {}');
COMMIT;
-- 8. Nested: a `_bemi` inside the application's object is the application's data, not identity.
BEGIN;
INSERT INTO id_notes VALUES (80, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi',
  '{"app": {"_bemi": {"role": "postgres"}}, "_bemi": {"_bemi": {"role": "postgres"}}}');
INSERT INTO id_notes VALUES (81, 'after');
COMMIT;
-- 9. Not an object: an array, a string, broken JSON.
BEGIN;
INSERT INTO id_notes VALUES (90, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi', '[{"_bemi": {"role": "postgres"}}]');
INSERT INTO id_notes VALUES (91, 'after array');
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi', '"postgres"');
INSERT INTO id_notes VALUES (92, 'after string');
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi', '{"_bemi": {"role": "postgres"}');
INSERT INTO id_notes VALUES (93, 'after broken JSON');
COMMIT;
-- 10. Larger than bemi.max_context_size (1 MB here): 5 MB, with either prefix.
BEGIN;
INSERT INTO id_notes VALUES (100, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi', '{"blob": "' || repeat('x', 5 * 1024 * 1024) || '"}');
INSERT INTO id_notes VALUES (101, 'after 5 MB, bemi');
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi', '{"blob": "' || repeat('x', 5 * 1024 * 1024) || '"}');
INSERT INTO id_notes VALUES (102, 'after 5 MB, _bemi');
COMMIT;
-- 11. Invalid UTF-8 (the database encoding), with either prefix, as text inside a string and as
-- a NUL byte.
BEGIN;
INSERT INTO id_notes VALUES (110, 'before');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi',
  convert_to('{"a": "', 'UTF8') || '\xc328fffe'::bytea || convert_to('"}', 'UTF8'));
INSERT INTO id_notes VALUES (111, 'after invalid UTF-8, bemi');
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi',
  convert_to('{"a": "', 'UTF8') || '\xc328fffe'::bytea || convert_to('"}', 'UTF8'));
INSERT INTO id_notes VALUES (112, 'after invalid UTF-8, _bemi');
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi',
  convert_to('{"a": "b"}', 'UTF8') || '\x00'::bytea || convert_to('{"_bemi": 1}', 'UTF8'));
INSERT INTO id_notes VALUES (113, 'after a NUL byte');
COMMIT;
-- 12. A message inside a savepoint that is then released: still no identity but the writer's.
BEGIN;
INSERT INTO id_notes VALUES (120, 'before');
SAVEPOINT s;
SELECT 'msg' FROM pg_logical_emit_message(true, 'bemi', '{"_bemi": {"role": "postgres"}}');
INSERT INTO id_notes VALUES (121, 'after, in a savepoint');
RELEASE s;
INSERT INTO id_notes VALUES (122, 'after the savepoint');
COMMIT;
RESET ROLE;

SELECT bemi_wait();
-- Every row: the identity is mallory's (with her application_name), the superuser's only for row 0.
-- What the messages could set is the application context, or a note saying why not.
SELECT (after->>'id')::int AS row,
       replace(context->'_bemi'->>'role', session_user, '<superuser>') AS role,
       context->'_bemi'->>'application_name' AS application_name,
       context - '_bemi' AS application_context
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'id_notes' ORDER BY 1;
-- Nothing stored is invalid in the database encoding (so the trail dumps and restores):
-- convert_from checks every byte.
SELECT current_setting('server_encoding') AS encoding, count(*) AS changes
  FROM bemi.changes
 WHERE "table" = 'id_notes' AND convert_from(convert_to(context::text, 'UTF8'), 'UTF8') IS NOT NULL;

-- Rows written by CREATE TABLE AS and SELECT INTO (no executor write of their own: the utility
-- hook emits the message for them) carry the writer's identity too.
CREATE TABLE id_ctas AS SELECT 1 AS id;
SELECT 2 AS id INTO id_select_into;
SELECT bemi_wait();
SELECT "table", operation, replace(context->'_bemi'->>'role', session_user, '<superuser>') AS role
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" IN ('id_ctas', 'id_select_into') ORDER BY 1;
DROP TABLE id_ctas, id_select_into;

-- A session context set in a transaction that is rolled back does not survive it, whether the
-- rollback is asked for, follows an error, or ends a transaction whose savepoints were released.
SELECT bemi_set_context('{"session": "before"}', false);
BEGIN;
SELECT bemi_set_context('{"session": "rolled back"}', false);
ROLLBACK;
SELECT bemi_context();
BEGIN;
SAVEPOINT a;
SELECT bemi_set_context('{"session": "released, then rolled back"}', false);
RELEASE a;
ROLLBACK;
SELECT bemi_context();
BEGIN;
SELECT bemi_set_context('{"session": "failed"}', false);
SELECT 1 / 0;
ROLLBACK;
SELECT bemi_context();
DO $$BEGIN PERFORM bemi_set_context('{"session": "failed alone"}', false); RAISE EXCEPTION 'fails after setting'; END$$;
SELECT bemi_context();
-- The writes that follow carry the restored context; a committed one stays.
INSERT INTO id_notes VALUES (200, 'after the rollbacks');
BEGIN;
SELECT bemi_set_context('{"session": "committed"}', false);
COMMIT;
INSERT INTO id_notes VALUES (201, 'after the commit');
SELECT bemi_set_context(NULL, false);
SELECT bemi_wait();
SELECT (after->>'id')::int AS row, context - '_bemi' AS context
  FROM bemi.changes WHERE "table" = 'id_notes' AND (after->>'id')::int >= 200 ORDER BY 1;

DROP TABLE id_notes;
DROP ROLE mallory;
