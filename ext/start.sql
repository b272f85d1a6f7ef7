------------------------------------------------------------------------------------------------
-- Start capture: this must stay the last statement of the script.
------------------------------------------------------------------------------------------------
-- Starts this database's worker while CREATE EXTENSION is still open: the worker's slot becomes
-- consistent as this transaction commits, so no write after it is missed.
CREATE FUNCTION bemi._start_worker() RETURNS void
    AS 'MODULE_PATHNAME', 'bemi_start_worker' LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION bemi._start_worker() FROM PUBLIC;
SELECT bemi._start_worker();
