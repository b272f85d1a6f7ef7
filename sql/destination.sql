-- The trail in another database (issue 16). bemi_set_destination(conninfo) makes the worker write
-- the changes into another PostgreSQL's bemi.changes; NULL writes them here again. Only a
-- superuser sets it, a connection string with a password is refused (and never echoed), and the
-- role a source logs in as on the destination is granted bemi_ingest, which may append to the
-- trail and nothing else. Here the destination is this very database, reached over a socket:
-- enough to see a change travel through libpq with its context and its source.

-- 1. The trail is here: no destination.
SELECT destination, destination_reachable, destination_lag_bytes FROM bemi_status();
SELECT conninfo FROM bemi.destination;

-- 2. Passwords are refused in every spelling, and the message never quotes them.
SELECT bemi_set_destination('host=trail.example dbname=audit password=hunter2');
SELECT bemi_set_destination('postgresql://bemi:hunter2@trail.example/audit');
SELECT bemi_set_destination('host=trail.example PASSWORD=hunter2');  -- not a keyword libpq knows
SELECT bemi_set_destination('host=trail.example password = ''hunter2 x''');
SELECT bemi_set_destination('host=trail.example password=');
-- A dbname that is a connection string of its own (libpq expands it), with or without a password.
SELECT bemi_set_destination('dbname=''postgresql://bemi:hunter2@trail.example/audit''');
SELECT bemi_set_destination('dbname=''host=trail.example password=hunter2''');
SELECT bemi_set_destination('host=''trail.example');  -- unterminated quote
SELECT conninfo FROM bemi.destination;
SELECT bemi_set_destination('');
SELECT bemi_set_destination('host=trail.example nosuchoption=1');
SELECT bemi_set_destination(NULL);
SELECT conninfo FROM bemi.destination;

-- 3. An ordinary role may not set it, even when granted EXECUTE, nor read or write
-- bemi.destination; nor append to the trail without bemi_ingest.
CREATE ROLE dest_mallory LOGIN;
SET ROLE dest_mallory;
SELECT bemi_set_destination('host=evil.example dbname=loot');
SELECT conninfo FROM bemi.destination;
UPDATE bemi.destination SET conninfo = 'host=evil.example';
RESET ROLE;
GRANT EXECUTE ON FUNCTION bemi_set_destination(text) TO dest_mallory;
GRANT USAGE ON SCHEMA bemi TO dest_mallory;
GRANT INSERT ON bemi.changes TO dest_mallory;
SET ROLE dest_mallory;
SELECT bemi_set_destination('host=evil.example dbname=loot');
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES ('forged', 'public', 'accounts', 'DELETE', now(), 1, '0/1');
RESET ROLE;
REVOKE ALL ON bemi.changes FROM dest_mallory;
REVOKE ALL ON SCHEMA bemi FROM dest_mallory;
REVOKE ALL ON FUNCTION bemi_set_destination(text) FROM dest_mallory;
SELECT count(*) AS forged FROM bemi.changes WHERE database = 'forged';

-- 4. bemi_ingest: what a destination grants the role a source logs in as. It appends to the
-- trail (the source's worker COPYs) and keeps its source's progress; it cannot change or remove
-- a change, nor change bemi.destination. A superuser is not bemi_ingest by its reach alone.
SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'bemi_ingest';
CREATE ROLE dest_ingest LOGIN IN ROLE bemi_ingest;
SET ROLE dest_ingest;
UPDATE bemi.changes SET context = '{}' WHERE id = (SELECT max(id) FROM bemi.changes);
DELETE FROM bemi.changes WHERE id = (SELECT max(id) FROM bemi.changes);
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES ('dest_db', 'public', 'ingest_probe', 'CREATE', now(), 1, '0/1')
ON CONFLICT DO NOTHING;
UPDATE bemi.destination SET conninfo = 'host=evil.example';
SELECT bemi_set_destination('host=evil.example dbname=loot');
RESET ROLE;
INSERT INTO bemi.changes (database, schema, "table", operation, committed_at, transaction_id, position)
VALUES ('forged', 'public', 'accounts', 'DELETE', now(), 1, '0/1');
-- A superuser who makes itself bemi_ingest may append to bemi.changes, never write a chain anchor
-- (a forged anchor would hide a removed change).
GRANT bemi_ingest TO CURRENT_USER;
INSERT INTO bemi.chain_anchors (id, previous_id, previous_hash) VALUES (1, 0, '\x00');
REVOKE bemi_ingest FROM CURRENT_USER;

-- 5. This database as its own destination, through a socket, as dest_ingest: a change travels
-- there by COPY, with its context, named by its source (this server's system identifier).
CREATE TABLE dest_items (id int PRIMARY KEY, name text);
-- Its DDL row is written here before the switch (without the wait it could be decoded after it).
SELECT bemi_wait();
SELECT bemi_set_destination(format('host=%s port=%s dbname=%s user=dest_ingest',
                                   split_part(current_setting('unix_socket_directories'), ',', 1),
                                   current_setting('port'), current_database()));
SELECT destination IS NOT NULL AS has_destination, destination !~* 'password' AS no_password FROM bemi_status();
BEGIN;
SELECT bemi_set_context('{"user_id": 42, "endpoint": "/items"}');
INSERT INTO dest_items VALUES (1, E'tab\there, newline\nthere, back\\slash');
UPDATE dest_items SET name = 'plain' WHERE id = 1;
COMMIT;
SELECT bemi_wait();
SELECT "table", operation, "after", context - '_bemi' AS context,
       source_system_id = (SELECT system_identifier::text FROM pg_control_system()) AS from_this_server,
       database = current_database() AS same_database
  FROM bemi.changes WHERE "table" = 'dest_items' AND operation <> 'DDL' ORDER BY id;
SELECT count(*) AS progress_rows,
       bool_and(txn_end_lsn <= pg_current_wal_lsn()) AS sane
  FROM bemi.source_progress WHERE source_system_id = (SELECT system_identifier::text FROM pg_control_system());
SELECT destination_reachable, destination_lag_bytes IS NOT NULL AS lag_known FROM bemi_status();
-- That progress row is dest_ingest's. The login role of another source can neither read nor move
-- it (moved ahead, this server's worker would skip its changes at its next start), nor make a row
-- in another role's name; it keeps its own.
SELECT ingest_role FROM bemi.source_progress WHERE source_system_id = (SELECT system_identifier::text FROM pg_control_system());
CREATE ROLE dest_other_source LOGIN IN ROLE bemi_ingest;
SET ROLE dest_other_source;
SELECT count(*) AS visible FROM bemi.source_progress;
WITH moved AS (UPDATE bemi.source_progress SET txn_end_lsn = 'FFFFFFFF/0' RETURNING 1) SELECT count(*) AS moved FROM moved;
INSERT INTO bemi.source_progress AS p (source_system_id, database, txn_end_lsn, txn_records, txn_complete)
SELECT system_identifier::text, current_database(), 'FFFFFFFF/0', 0, true FROM pg_control_system()
    ON CONFLICT (source_system_id, database) DO UPDATE SET txn_end_lsn = excluded.txn_end_lsn;
INSERT INTO bemi.source_progress (source_system_id, database, txn_end_lsn, txn_records, txn_complete, ingest_role)
VALUES ('1', 'in another name', '0/1', 0, true, 'dest_ingest');
INSERT INTO bemi.source_progress (source_system_id, database, txn_end_lsn, txn_records, txn_complete)
VALUES ('1', 'its own', '0/1', 0, true);
SELECT source_system_id, database, ingest_role FROM bemi.source_progress;
RESET ROLE;
SELECT database = current_database() AS this_database, txn_end_lsn <= pg_current_wal_lsn() AS unmoved, ingest_role
  FROM bemi.source_progress ORDER BY ingest_role;
SET ROLE bemi_reader;
SELECT count(*) AS readers_see FROM bemi.source_progress;
RESET ROLE;
-- The worker still writes there as dest_ingest.
INSERT INTO dest_items VALUES (3, 'after the probe');
SELECT bemi_wait();
SELECT count(*) AS arrived FROM bemi.changes WHERE "table" = 'dest_items' AND "after"->>'name' = 'after the probe';

-- 6. Back to the trail here: the next change is written by the worker itself again (no source).
SELECT bemi_set_destination(NULL);
INSERT INTO dest_items VALUES (2, 'local again');
SELECT bemi_wait();
SELECT "table", operation, "after", source_system_id FROM bemi.changes
 WHERE "table" = 'dest_items' ORDER BY id DESC LIMIT 1;
SELECT destination, destination_reachable FROM bemi_status();

-- 7. The read functions narrowed to one source (bemi.source): the changes that came through the
-- destination are this server's by system identifier; those its own worker wrote are 'local'.
SELECT h.primary_key, h.operation, c.source_system_id IS NULL AS local
  FROM bemi_table_history('dest_items') h JOIN bemi.changes c USING (id) ORDER BY id;
SET bemi.source = 'local';
SELECT primary_key, operation FROM bemi_table_history('dest_items') ORDER BY id;
SELECT count(*) FROM bemi_row_history('dest_items', '1');
SELECT set_config('bemi.source', (SELECT system_identifier::text FROM pg_control_system()), false) IS NOT NULL AS set;
SELECT primary_key, operation FROM bemi_table_history('dest_items') ORDER BY id;
SELECT count(*) FROM bemi_row_history('dest_items', '1');
SELECT count(*) FROM bemi_context_history('{"endpoint": "/items"}');
SELECT set_config('bemi.source', (SELECT system_identifier::text FROM pg_control_system()) || '/' || current_database(),
                  false) IS NOT NULL AS set;
SELECT count(*) FROM bemi_context_history('{"endpoint": "/items"}');
-- A value of no known form is refused: it would match nothing and make every read empty.
SET bemi.source = 'garbage';
SET bemi.source = 'LOCAL';
SET bemi.source = '1234/';
SET bemi.source = '1234/nosuchdb';
SELECT count(*) FROM bemi_table_history('dest_items');
SELECT count(*) FROM bemi_transactions();
RESET bemi.source;
SELECT count(*) FROM bemi_table_history('dest_items');

DROP TABLE dest_items;
DELETE FROM bemi.source_progress WHERE ingest_role = 'dest_other_source';
DROP ROLE dest_mallory;
DROP ROLE dest_ingest;
DROP ROLE dest_other_source;
