-- Reverting: one change, one transaction, one context value, a table back to a moment; conflicts,
-- force, dry runs, roll-forward. Reverts are ordinary writes: recorded, with a context that says
-- what they revert.
SET TimeZone = 'UTC';
SET DateStyle = ISO;
\set SHOW_CONTEXT never
-- Shows an expected error with its detail and hint; change and transaction ids, which depend on
-- what ran before, are masked.
CREATE FUNCTION rv_expect_error(statement text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    state text; message text; detail text; hint text;
BEGIN
    EXECUTE statement;
    RAISE NOTICE 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL,
                            hint = PG_EXCEPTION_HINT;
    RAISE NOTICE '%', regexp_replace(concat_ws(E'\n', state || ': ' || message, 'DETAIL: ' || nullif(detail, ''),
                                               'HINT: ' || nullif(hint, '')),
                                     '(change |transaction |[{])[0-9]+', '\1#', 'g');
END $$;
CREATE TABLE rv_todo (id serial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false);
INSERT INTO rv_todo (task) VALUES ('Sleep'), ('Eat'), ('Repeat');
SELECT bemi_wait();
SELECT clock_timestamp() AS t1 \gset

-- One change. A dry run shows the SQL and its parameters, and changes nothing.
UPDATE rv_todo SET done = true WHERE id = 1;
SELECT bemi_wait();
SELECT id AS change1 FROM bemi_row_history('rv_todo', 1) WHERE operation = 'UPDATE' \gset
SELECT step, "table", primary_key, action, statement, image, key_image, rows
  FROM bemi_revert_change(:change1, dry_run => true);
SELECT * FROM rv_todo WHERE id = 1;
SELECT action, rows FROM bemi_revert_change(:change1);
SELECT * FROM rv_todo WHERE id = 1;
SELECT bemi_wait();
SELECT operation, diff, context->'bemi_revert' = jsonb_build_object('change_id', :change1) AS says_what_it_reverts
  FROM bemi_row_history('rv_todo', 1) LIMIT 1;

-- One transaction. The revert's writes carry the caller's context and the marker.
BEGIN;
SELECT bemi_set_context('{"request_id": "bad-import"}');
INSERT INTO rv_todo (task) VALUES ('Spam 1'), ('Spam 2');
DELETE FROM rv_todo WHERE id = 2;
UPDATE rv_todo SET task = 'Repeat!' WHERE id = 3;
COMMIT;
SELECT bemi_wait();
SELECT transaction_id AS txn FROM bemi_row_history('rv_todo', 3) LIMIT 1 \gset
BEGIN;
SELECT bemi_set_context('{"ticket": "OPS-7"}');
SELECT step, action, primary_key, cardinality(reverts) AS reverts, rows FROM bemi_revert_transaction(:txn);
COMMIT;
SELECT * FROM rv_todo ORDER BY id;
SELECT bemi_wait();
SELECT "table", operation, primary_key, context - '_bemi' - 'bemi_revert' AS caller_context,
       context->'bemi_revert' = jsonb_build_object('transaction_id', :txn) AS marked
  FROM bemi_table_history('rv_todo') LIMIT 4;
SELECT transaction_id AS revert_txn FROM bemi_row_history('rv_todo', 3) LIMIT 1 \gset

-- Roll-forward re-applies what the revert undid (it reverts the revert).
SELECT step, action, primary_key, rows FROM bemi_roll_forward(:revert_txn);
SELECT * FROM rv_todo ORDER BY id;
SELECT rv_expect_error(format('SELECT bemi_roll_forward(%s)', :txn));

-- Conflicts: a later change outside the reverted set touched the same row.
SELECT bemi_wait();
SELECT transaction_id AS forward_txn FROM bemi_row_history('rv_todo', 3) LIMIT 1 \gset
UPDATE rv_todo SET done = true WHERE id = 3;
SELECT bemi_wait();
SELECT rv_expect_error(format('SELECT bemi_revert_transaction(%s)', :forward_txn));
-- force => true overwrites: the columns the set changed go back, others keep later values.
SELECT action, primary_key, rows FROM bemi_revert_transaction(:forward_txn, force => true) ORDER BY step;
SELECT * FROM rv_todo ORDER BY id;

-- Every change of one context value: one HTTP request, across transactions.
BEGIN;
SELECT bemi_set_context('{"request_id": "req-42", "user_id": 9}');
UPDATE rv_todo SET task = 'Sleep more' WHERE id = 1;
COMMIT;
BEGIN;
SELECT bemi_set_context('{"request_id": "req-42", "user_id": 9}');
INSERT INTO rv_todo (task) VALUES ('Nap');
COMMIT;
SELECT bemi_wait();
SELECT action, primary_key, rows FROM bemi_revert_context('{"request_id": "req-42"}');
SELECT * FROM rv_todo ORDER BY id;

-- A whole table back to a moment.
SELECT * FROM bemi_as_of(NULL::rv_todo, :'t1') ORDER BY id;
SELECT count(*) AS statements FROM bemi_revert_table('rv_todo', :'t1');
SELECT * FROM rv_todo ORDER BY id;
SELECT bemi_wait();
SELECT count(*) AS same_as_then FROM bemi_as_of(NULL::rv_todo, :'t1') old FULL JOIN rv_todo cur USING (id)
 WHERE old IS NOT DISTINCT FROM cur;

-- Columns added and dropped since the reverted change: the ones that still exist are restored,
-- a dropped one is skipped, an added one keeps its default (re-inserted row) or its value.
-- (force: the later UPDATE of priority touched row 1.)
DELETE FROM rv_todo WHERE id = 2;
UPDATE rv_todo SET task = 'Sleep!', done = true WHERE id = 1;
SELECT bemi_wait();
SELECT clock_timestamp() AS t2 \gset
ALTER TABLE rv_todo ADD COLUMN priority int NOT NULL DEFAULT 3;
ALTER TABLE rv_todo DROP COLUMN done;
UPDATE rv_todo SET priority = 1;
SELECT bemi_wait();
SELECT action, primary_key, statement FROM bemi_revert_changes(
    ARRAY(SELECT id FROM bemi_table_history('rv_todo', '-infinity', :'t2') WHERE operation <> 'CREATE' ORDER BY id DESC LIMIT 2),
    force => true);
SELECT * FROM rv_todo ORDER BY id;

-- Reverts run as the caller: reading the trail needs SELECT, writing needs the DML rights.
CREATE ROLE rv_reader;
GRANT SELECT ON rv_todo TO rv_reader;
SET ROLE rv_reader;
SELECT count(*) AS dry_run_ok FROM bemi_revert_table('rv_todo', :'t2', dry_run => true);
SELECT * FROM bemi_revert_table('rv_todo', :'t2');
RESET ROLE;
REVOKE ALL ON rv_todo FROM rv_reader;
DROP ROLE rv_reader;

-- Bad input.
SELECT * FROM bemi_revert_change(-1);
SELECT * FROM bemi_revert_changes(NULL);
SELECT * FROM bemi_revert_transaction(-1);
SELECT * FROM bemi_revert_context('{}');
SELECT * FROM bemi_revert_context('{"request_id": "never"}');
SELECT * FROM bemi_revert_table('rv_todo', '9999-01-01 00:00:00+00');
TRUNCATE rv_todo;
SELECT bemi_wait();
SELECT rv_expect_error('SELECT bemi_revert_changes(ARRAY(SELECT id FROM bemi_table_truncations(''rv_todo'')))');
DROP FUNCTION rv_expect_error(text);
