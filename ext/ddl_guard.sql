------------------------------------------------------------------------------------------------
-- DDL that takes changes out of the trail (src/context/ddl_guard.cpp writes these rows from the
-- backend that runs the ALTER, in its transaction, as the extension's owner).
------------------------------------------------------------------------------------------------
COMMENT ON TABLE bemi.gaps IS
    'Changes bemi could not record: a lost capture slot, or DDL that took a table out of capture or rewrote its values';
COMMENT ON COLUMN bemi.gaps.relation IS
    'The table the gap concerns (schema-qualified, as named when the gap was recorded); NULL for a lost slot';
COMMENT ON COLUMN bemi.gaps.table_oid IS 'That table''s OID';
COMMENT ON COLUMN bemi.gaps.role IS 'The role that ran the statement (current_user)';
COMMENT ON COLUMN bemi.gaps.statement IS 'The statement, cut at 2000 bytes';
