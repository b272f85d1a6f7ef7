
------------------------------------------------------------------------------------------------
-- The trail in another database (issue 16)
------------------------------------------------------------------------------------------------
-- bemi_set_destination(conninfo) makes this database's worker write its changes to another
-- PostgreSQL that has bemi (its bemi.changes, with the progress in its bemi.source_progress);
-- NULL writes them here again. Superuser only (the C function checks): the worker connects with
-- the server's own files (.pgpass, pg_service.conf) and certificates. A connection string with a
-- password is refused, so none is ever stored, logged or shown by bemi_status().
CREATE FUNCTION @extschema@.bemi_set_destination(conninfo text) RETURNS void
    AS 'MODULE_PATHNAME', 'bemi_set_destination' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.bemi_set_destination(text) IS
    'Write the trail of this database to another PostgreSQL (a libpq connection string without a password); NULL: here';
REVOKE ALL ON FUNCTION @extschema@.bemi_set_destination(text) FROM PUBLIC;

-- On a destination, the role a source's worker logs in as is granted bemi_ingest: it may append
-- changes and gaps and keep its source's progress, and nothing else (bemi.changes is otherwise
-- closed to every role but bemi's own worker: src/context/protect.cpp). Like bemi_reader, a
-- bemi_ingest that exists already must be one a superuser controls.
DO $$
DECLARE
    suspect text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'bemi_ingest') THEN
        CREATE ROLE bemi_ingest NOLOGIN;
        RETURN;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.format('%I', m.rolname), ', ' ORDER BY m.rolname) INTO suspect
      FROM pg_catalog.pg_auth_members a
      JOIN pg_catalog.pg_roles m ON m.oid OPERATOR(pg_catalog.=) a.member
      JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantor
     WHERE a.roleid OPERATOR(pg_catalog.=) 'bemi_ingest'::pg_catalog.regrole
       AND NOT m.rolsuper AND (a.admin_option OR NOT g.rolsuper);
    IF suspect IS NOT NULL OR (SELECT rolcanlogin OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'bemi_ingest') THEN
        RAISE EXCEPTION 'role bemi_ingest exists and is not under a superuser''s control'
            USING ERRCODE = 'insufficient_privilege',
            DETAIL = pg_catalog.format('bemi_ingest appends to every database''s trail. It must be NOLOGIN, and only superusers may grant it or administer it; %s.',
                                       coalesce('these roles got it or its admin option from a non-superuser: ' || suspect, 'it can log in or is a superuser')),
            HINT = 'Check who made bemi_ingest; as a superuser, REVOKE those memberships (or DROP ROLE bemi_ingest) and try again.';
    END IF;
END $$;
GRANT USAGE ON SCHEMA bemi TO bemi_ingest;
GRANT INSERT ON bemi.changes, bemi.contexts TO bemi_ingest;
GRANT USAGE ON SEQUENCE bemi.changes_id_seq TO bemi_ingest;
GRANT INSERT ON bemi.gaps TO bemi_ingest;
GRANT SELECT, INSERT, UPDATE ON bemi.source_progress TO bemi_ingest;
-- A source's progress row is its login role's: the role of another source can neither read nor
-- move it. Moved ahead, it would make that source's worker skip its changes at its next start;
-- moved elsewhere, fail. One login role per source keeps the sources apart (docs/security.md).
-- Trail readers read every row; the owner and superusers are not subject to the policies.
ALTER TABLE bemi.source_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY source_progress_own ON bemi.source_progress TO bemi_ingest
    USING (ingest_role OPERATOR(pg_catalog.=) CURRENT_USER)
    WITH CHECK (ingest_role OPERATOR(pg_catalog.=) CURRENT_USER);
CREATE POLICY source_progress_readers ON bemi.source_progress FOR SELECT TO bemi_reader USING (true);

-- On a destination: the rows of a batch a source's worker sends, with their jsonb in
-- PostgreSQL's own format, each checked before it is returned (src/fn/ingest_shim.c,
-- src/fn/jsonb_check.cpp), for INSERT INTO bemi.changes ... SELECT where bemi._ingest does not
-- write them itself; the destination parses no JSON. For bemi_ingest. bemi._jsonb_internal gives a
-- document in that format (the tests build batches with it).
CREATE FUNCTION bemi._ingest_rows(batch bytea)
    RETURNS TABLE (id bigint, primary_key text, "before" jsonb, "after" jsonb, context jsonb, database text,
                   schema text, "table" text, operation text, committed_at timestamptz, transaction_id bigint,
                   "position" pg_lsn, source_system_id text, created_at timestamptz)
    AS 'MODULE_PATHNAME', 'bemi_ingest_rows' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION bemi._ingest_rows(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi._ingest_rows(bytea) TO bemi_ingest;
-- The worker's way in: the batch written by the table-level batch insert (src/fn/ingest_shim.c),
-- for a role granted bemi_ingest only (checked inside as well: a superuser is not let through).
CREATE FUNCTION bemi._ingest(batch bytea) RETURNS bigint
    AS 'MODULE_PATHNAME', 'bemi_ingest' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION bemi._ingest(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi._ingest(bytea) TO bemi_ingest;
CREATE FUNCTION bemi._jsonb_internal(jsonb) RETURNS bytea
    AS 'MODULE_PATHNAME', 'bemi_jsonb_internal' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
REVOKE ALL ON FUNCTION bemi._jsonb_internal(jsonb) FROM PUBLIC;
