-- The bemi output plugin is usable on its own: one JSON document per change, with the fields
-- of a bemi.changes row.
SELECT 'init' FROM pg_create_logical_replication_slot('plugin_test', 'bemi');
CREATE TABLE plugin_items (id int PRIMARY KEY, name text);
BEGIN;
SELECT bemi_set_context('{"user_id": 5}');
INSERT INTO plugin_items VALUES (1, 'one');
UPDATE plugin_items SET name = 'uno';
DELETE FROM plugin_items;
COMMIT;
TRUNCATE plugin_items;
SELECT doc->>'operation' AS operation, doc->>'primary_key' AS primary_key, doc->'before' AS before,
       doc->'after' AS after, doc->'context'->'user_id' AS user_id, doc->>'schema' AS schema,
       doc->>'table' AS "table", doc->>'database' = current_database() AS database_ok,
       (doc->>'committed_at')::timestamptz IS NOT NULL AS committed_at_ok,
       (doc->>'transaction_id')::bigint > 0 AS xid_ok, (doc->>'position')::pg_lsn = lsn AS position_ok
  FROM (SELECT lsn, data::jsonb AS doc FROM pg_logical_slot_get_changes('plugin_test', NULL, NULL)) c
 WHERE doc->>'operation' <> 'DDL';
-- The keys of a document are the columns of bemi.changes (less id and created_at).
INSERT INTO plugin_items VALUES (2, 'two');
SELECT array_agg(k ORDER BY k) FROM pg_logical_slot_get_changes('plugin_test', NULL, NULL),
       jsonb_object_keys(data::jsonb) k;
-- Options are checked.
SELECT count(*) FROM pg_logical_slot_get_changes('plugin_test', NULL, NULL, 'sink', 'on');
SELECT count(*) FROM pg_logical_slot_get_changes('plugin_test', NULL, NULL, 'format', 'x');
SELECT pg_drop_replication_slot('plugin_test');
