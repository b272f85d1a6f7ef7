-- The C++/PostgreSQL error boundary: both directions surface as clean SQL errors that keep their
-- SQLSTATE, detail and hint, and the backend stays usable afterwards. The test entry point is in
-- the library but installed in no database: the test declares it for itself.
CREATE SCHEMA bemi_boundary;
CREATE FUNCTION bemi_boundary.test(kind text) RETURNS text
    AS '$libdir/bemi', 'bemi_boundary_test' LANGUAGE C VOLATILE STRICT;
SELECT bemi_boundary.test('ok');

-- PostgreSQL -> C++: a C++ exception thrown inside a SQL function (C++ objects alive at the throw).
SELECT bemi_boundary.test('cxx');
SELECT 1 AS still_usable;

-- One of our errors keeps its SQLSTATE, detail and hint.
SELECT bemi_boundary.test('bemi');
DO $$
BEGIN
  PERFORM bemi_boundary.test('bemi');
EXCEPTION WHEN invalid_parameter_value THEN
  RAISE NOTICE 'caught SQLSTATE %', SQLSTATE;
END $$;

-- C++ -> PostgreSQL: an ERROR raised by PostgreSQL code under C++ frames is re-raised unchanged.
SELECT bemi_boundary.test('pg');
SELECT bemi_boundary.test('pg_detail');
SELECT 1 AS still_usable;

-- Both ways at once: C++ runs a query (PostgreSQL frames) whose function throws in C++, and what
-- arrives keeps SQLSTATE, detail and hint across the two crossings.
SELECT bemi_boundary.test('nested_ok');
SELECT bemi_boundary.test('nested_bemi');
SELECT bemi_boundary.test('nested_pg');
SELECT 1 AS still_usable;

-- What arrives, as a caller sees it: SQLSTATE, message, detail, hint.
CREATE FUNCTION bemi_boundary.caught(kind text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  state text; message text; detail text; hint text;
BEGIN
  PERFORM bemi_boundary.test(kind);
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                          detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
  RETURN format('%s | %s | %s | %s', state, message, detail, hint);
END $$;
SELECT kind, bemi_boundary.caught(kind)
  FROM unnest(ARRAY['ok', 'cxx', 'bemi', 'pg', 'pg_detail', 'nested_ok', 'nested_bemi', 'nested_pg', 'nope']) AS kind;

-- Inside a transaction, the error aborts it like any other; a savepoint recovers.
BEGIN;
SAVEPOINT s;
SELECT bemi_boundary.test('cxx');
ROLLBACK TO SAVEPOINT s;
SELECT bemi_boundary.test('ok');
COMMIT;

DROP SCHEMA bemi_boundary CASCADE;
