-- The C++/PostgreSQL error boundary: both directions surface as clean SQL errors,
-- and the backend stays usable afterwards.
SELECT bemi._boundary_test('ok');

-- A C++ exception thrown inside a SQL function (C++ objects alive at the throw).
SELECT bemi._boundary_test('cxx');
SELECT 1 AS still_usable;

-- One of our errors keeps its SQLSTATE, detail and hint.
SELECT bemi._boundary_test('bemi');
DO $$
BEGIN
  PERFORM bemi._boundary_test('bemi');
EXCEPTION WHEN invalid_parameter_value THEN
  RAISE NOTICE 'caught SQLSTATE %', SQLSTATE;
END $$;

-- A PostgreSQL ERROR raised inside C++ code (division by zero) is re-raised unchanged.
SELECT bemi._boundary_test('pg');
SELECT 1 AS still_usable;

-- Inside a transaction, the error aborts it like any other; a savepoint recovers.
BEGIN;
SAVEPOINT s;
SELECT bemi._boundary_test('cxx');
ROLLBACK TO SAVEPOINT s;
SELECT bemi._boundary_test('ok');
COMMIT;

-- Ordinary roles cannot call it.
CREATE ROLE bemi_boundary_nobody;
SET ROLE bemi_boundary_nobody;
SELECT bemi._boundary_test('ok');
RESET ROLE;
DROP ROLE bemi_boundary_nobody;
