-- bemi 0.4.0 -> 0.5.0. Run by ALTER EXTENSION bemi UPDATE, as the extension's owner (a
-- superuser), in every database that has bemi. Released: never edit this file once 0.5.0 is
-- released; a later change is a new step bemi--0.5.0--B.sql, even one that changes no SQL.
-- It brings a 0.4.0 database to exactly the schema of a fresh 0.5.0 install and keeps the trail.
-- 0.5.0 (issue 15, in progress): the trail cannot be dropped or edited silently. That protection
-- lives in bemi.so (src/context/protect.cpp, the settings bemi.allow_drop and
-- bemi.allow_trail_changes) and changes no SQL. Later parts of issue 15 add their SQL here,
-- additively, each in its own section.
\echo Use "ALTER EXTENSION bemi UPDATE TO '0.5.0'" to load this file. \quit

-- The same rule as the install script: names resolve only in pg_catalog (docs/security.md, "Names").
SET LOCAL search_path = pg_catalog, pg_temp;

-- Two new operations: DDL (a schema change on a recorded table) and SNAPSHOT (a row that existed
-- when bemi_snapshot() read its table). The constraint is checked again over the trail.
ALTER TABLE bemi.changes DROP CONSTRAINT changes_operation_check,
    ADD CONSTRAINT changes_operation_check
        CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'DDL', 'SNAPSHOT'));
