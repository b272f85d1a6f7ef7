------------------------------------------------------------------------------------------------
-- Tamper evidence: the hash chain over bemi.changes
------------------------------------------------------------------------------------------------
-- The worker chains every change it writes (bemi.changes.hash and previous_id; how: include/
-- bemi/chain.hpp). bemi_verify() checks the chain, bemi_chain_head() gives its last link, to be
-- published where whoever could rewrite the trail cannot (docs/guarantees.md, "Tamper evidence").

-- Where retention cut the chain: change id's predecessor previous_id was dropped with an old
-- partition (or deleted from bemi.changes_default), and previous_hash was its hash. bemi_verify
-- links id to previous_hash there. Written by retention only (src/context/protect.cpp).
CREATE TABLE bemi.chain_anchors (
    id            bigint PRIMARY KEY,
    previous_id   bigint NOT NULL,
    previous_hash bytea NOT NULL,
    cut_at        timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON bemi.chain_anchors FROM PUBLIC;
GRANT SELECT ON bemi.chain_anchors TO bemi_reader;
SELECT pg_catalog.pg_extension_config_dump('bemi.chain_anchors', '');

-- Before retention takes changes out of the trail (a partition dropped, or the oldest changes of
-- bemi.changes_default deleted: those with id <= upto committed before cutoff): an anchor for
-- every change that stays and whose previous change goes, with that change's id and hash, so that
-- bemi_verify still checks what remains. The changes that go are an id range [lo, hi] but for a
-- few that interleave with the partitions around them (commit times are not quite in id order):
-- the ones that stay and can follow one of them are those with ids in (lo, the first id after hi].
-- Anchors of changes that go are deleted with them. Called by bemi._maintain_changes only.
CREATE FUNCTION bemi._cut_chain(part regclass, upto bigint DEFAULT NULL, cutoff timestamptz DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    goes text := CASE WHEN upto IS NULL THEN 'true' ELSE 'd.id <= $3 AND d.committed_at < $4' END;
    lo bigint;
    hi bigint;
    next_id bigint;
    other regclass;
BEGIN
    EXECUTE format('SELECT min(d.id), max(d.id) FROM %s d WHERE %s', part, goes) INTO lo, hi USING lo, hi, upto, cutoff;
    IF lo IS NULL THEN
        RETURN;
    END IF;
    SELECT min(c.id) INTO next_id FROM bemi.changes c WHERE c.id > hi;
    FOR other IN SELECT p.part FROM bemi._partitions() p UNION ALL SELECT 'bemi.changes_default'::regclass LOOP
        CONTINUE WHEN other = part AND upto IS NULL;
        EXECUTE format('INSERT INTO bemi.chain_anchors (id, previous_id, previous_hash)'
                       ' SELECT s.id, d.id, d.hash FROM %s s JOIN %s d ON d.id = s.previous_id'
                       ' WHERE s.id > $1 AND s.id <= $2 AND d.hash IS NOT NULL AND %s%s ON CONFLICT (id) DO NOTHING',
                       other, part, goes,
                       CASE WHEN other = part THEN ' AND NOT (s.id <= $3 AND s.committed_at < $4)' ELSE '' END)
            USING lo, coalesce(next_id, hi), upto, cutoff;
    END LOOP;
    EXECUTE format('DELETE FROM bemi.chain_anchors a USING %s d WHERE a.id = d.id AND %s', part, goes)
        USING lo, hi, upto, cutoff;
END $$;
REVOKE ALL ON FUNCTION bemi._cut_chain(regclass, bigint, timestamptz) FROM PUBLIC;

-- Reads the trail with the caller's rights: for bemi_reader (who may read all of it) and superusers.
CREATE FUNCTION @extschema@.bemi_verify(since timestamptz DEFAULT '-infinity', until timestamptz DEFAULT 'infinity')
    RETURNS TABLE (id bigint, reason text, detail text)
    AS 'MODULE_PATHNAME', 'bemi_verify' LANGUAGE C STABLE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.bemi_verify(timestamptz, timestamptz) IS
    'Check the hash chain over the changes committed in [since, until]: no row if intact, else the first change altered, removed, inserted or reordered';

-- The chain's last link: publish it (with its id) where the server's superusers cannot rewrite it;
-- a later bemi_verify() plus `hash` still being that change's hash proves nothing before it changed.
CREATE FUNCTION @extschema@.bemi_chain_head(OUT id bigint, OUT hash bytea, OUT committed_at timestamptz, OUT "position" pg_lsn)
    RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.id, c.hash, c.committed_at, c.position FROM bemi.changes c
     WHERE c.hash IS NOT NULL AND c.source_system_id IS NULL ORDER BY c.id DESC LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@.bemi_chain_head() IS
    'The last change of the hash chain: its id, hash, commit time and position, to publish elsewhere';

REVOKE ALL ON FUNCTION @extschema@.bemi_verify(timestamptz, timestamptz), @extschema@.bemi_chain_head() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_verify(timestamptz, timestamptz), @extschema@.bemi_chain_head() TO bemi_reader;
