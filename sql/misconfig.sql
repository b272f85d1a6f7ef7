-- A server that cannot capture is told which setting to change.
-- (wal_level and shared_preload_libraries need a restart: test/t/002_misconfigured.pl.)
SET bemi.allow_drop = on;
DROP EXTENSION bemi;
-- (18 adds where in the install script the error came from: not shown, it moves with the script.)
\set SHOW_CONTEXT never
SET output_plugin_libraries = pgoutput, test_decoding;
CREATE EXTENSION bemi;
RESET output_plugin_libraries;
\set SHOW_CONTEXT errors
CREATE EXTENSION bemi;
-- Capture works again straight away.
CREATE TABLE misconfig_items (id int PRIMARY KEY);
INSERT INTO misconfig_items VALUES (1);
SELECT bemi_wait();
SELECT "table", operation, after FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'misconfig_items';
