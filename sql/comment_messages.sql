-- One context message per context, not per statement: Bemi's ORM packages put the same comment on every
-- write of a request. Counted in the WAL through a test_decoding slot (superuser only).
CREATE TABLE comment_counted (id int PRIMARY KEY);
SELECT 'slot' FROM pg_create_logical_replication_slot('comment_raw', 'test_decoding', true);
BEGIN;
/*Bemi {"request": "r1"} Bemi*/ INSERT INTO comment_counted VALUES (1);
SELECT count(*) FROM comment_counted;
/*Bemi {"request": "r1"} Bemi*/ INSERT INTO comment_counted VALUES (2);
/*Bemi {"request": "r1"} Bemi*/ UPDATE comment_counted SET id = id + 10 WHERE id = 2;
/*Bemi {"request": "r2"} Bemi*/ INSERT INTO comment_counted VALUES (3);
/*Bemi {"request": "r1"} Bemi*/ INSERT INTO comment_counted VALUES (4);
SAVEPOINT s;
/*Bemi {"request": "r3"} Bemi*/ INSERT INTO comment_counted VALUES (5);
ROLLBACK TO SAVEPOINT s;
/*Bemi {"request": "r3"} Bemi*/ INSERT INTO comment_counted VALUES (6);
COMMIT;
-- The same comment in the next transaction is that transaction's context: emitted again.
/*Bemi {"request": "r3"} Bemi*/ INSERT INTO comment_counted VALUES (7);
-- r1 once for three writes (the SELECT between them changes nothing), r2, r1 again, and r3 once:
-- its first message went with the savepoint, so the write after the rollback emitted it again.
-- Then r3 for the next transaction.
SELECT substring(data FROM '"request": "(r[0-9])"') AS message
  FROM pg_logical_slot_get_changes('comment_raw', NULL, NULL)
 WHERE data LIKE 'message:%prefix: bemi,%';
SELECT 'dropped' FROM pg_drop_replication_slot('comment_raw');
SELECT bemi_wait();
SELECT primary_key, context->>'request' AS request FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'comment_counted' ORDER BY id;
DROP TABLE comment_counted;
