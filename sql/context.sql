-- bemi_set_context / bemi_context: transaction-local by default, session-wide on request.
SELECT bemi_context() IS NULL AS no_context_yet;

BEGIN;
SELECT bemi_set_context('{"user_id": 1, "endpoint": "/a"}');
SELECT bemi_context();
COMMIT;
-- Transaction-local: gone after COMMIT (safe behind transaction-pooling PgBouncer).
SELECT bemi_context() IS NULL AS cleared_at_commit;

-- Session-wide when asked.
SELECT bemi_set_context('{"worker": "nightly"}', false);
SELECT bemi_context();
-- A local context overrides the session one inside a transaction, then the session one returns.
BEGIN;
SELECT bemi_set_context('{"request_id": "r-1"}');
SELECT bemi_context();
ROLLBACK;
SELECT bemi_context();
-- NULL clears.
SELECT bemi_set_context(NULL, false);
SELECT bemi_context() IS NULL AS cleared;

-- Local outside a transaction block has no effect: a WARNING says so.
SELECT bemi_set_context('{"lost": true}');
SELECT bemi_context() IS NULL AS still_cleared;
-- ... unless something is written in the same statement, as a function may do: no warning.
CREATE TABLE context_fn_items (id int PRIMARY KEY);
CREATE FUNCTION context_fn_write() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM bemi_set_context('{"job": "fn"}');
  INSERT INTO context_fn_items VALUES (1);
END $$;
SELECT context_fn_write();
SELECT bemi_wait();
SELECT context - '_bemi' AS context FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'context_fn_items';

-- Bad input is refused with a clear error and no side effect.
BEGIN;
SELECT bemi_set_context('{"keep": 1}');
SAVEPOINT s;
SELECT bemi_set_context('[1, 2, 3]');
ROLLBACK TO SAVEPOINT s;
SELECT bemi_set_context('"a string"');
ROLLBACK TO SAVEPOINT s;
SELECT bemi_set_context('42');
ROLLBACK TO SAVEPOINT s;
-- The refusal shows the value, clipped to 1000 bytes.
DO $$
DECLARE
  detail text;
BEGIN
  PERFORM bemi_set_context(to_jsonb(repeat('x', 5000)));
EXCEPTION WHEN invalid_parameter_value THEN
  GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
  RAISE NOTICE 'detail: % bytes: %', octet_length(detail), left(detail, 8) || '...' || right(detail, 8);
END $$;
SELECT bemi_context() AS unchanged;
COMMIT;

SET bemi.max_context_size = 64;
BEGIN;
SELECT bemi_set_context(jsonb_build_object('blob', repeat('x', 100)));
ROLLBACK;
RESET bemi.max_context_size;
-- The default limit is 1 MB.
SHOW bemi.max_context_size;
BEGIN;
SELECT bemi_set_context(jsonb_build_object('blob', repeat('x', 2 * 1024 * 1024)));
ROLLBACK;

-- A context set inside a savepoint that is rolled back does not survive it.
BEGIN;
SELECT bemi_set_context('{"step": "outer"}');
SAVEPOINT inner_work;
SELECT bemi_set_context('{"step": "inner"}');
SELECT bemi_context();
ROLLBACK TO SAVEPOINT inner_work;
SELECT bemi_context() AS after_rollback_to_savepoint;
SAVEPOINT kept;
SELECT bemi_set_context('{"step": "released"}');
RELEASE SAVEPOINT kept;
SELECT bemi_context() AS after_release;
COMMIT;

-- Settings live under a reserved prefix.
SET bemi.no_such_setting = 1;

-- bemi_context() returns a copy: a context set later in the same statement does not change it.
SELECT bemi_set_context('{"n": 1}', false);
SELECT bemi_context() AS before_set, bemi_set_context('{"n": 2}', false) AS set;
SELECT bemi_context() AS after_set;
SELECT bemi_set_context(NULL, false);
