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

-- Reads the trail with the caller's rights: for bemi_reader (who may read all of it) and superusers.
CREATE FUNCTION @extschema@.bemi_verify(since timestamptz DEFAULT '-infinity', until timestamptz DEFAULT 'infinity')
    RETURNS TABLE (id bigint, reason text, detail text)
    AS 'MODULE_PATHNAME', 'bemi_verify' LANGUAGE C STABLE STRICT PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.bemi_verify(timestamptz, timestamptz) IS
    'Check the hash chain over the changes committed in [since, until]: no row if intact, else the first change altered, removed, inserted or reordered';

-- The chain's last link: publish it (with its id) where the server's superusers cannot rewrite it;
-- a later bemi_verify() plus `hash` still being that change's hash proves nothing before it changed.
CREATE FUNCTION @extschema@.bemi_chain_head(OUT id bigint, OUT hash bytea, OUT committed_at timestamptz, OUT "position" pg_lsn)
    RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.id, c.hash, c.committed_at, c.position FROM bemi.changes c
     WHERE c.hash IS NOT NULL ORDER BY c.id DESC LIMIT 1
$$;
COMMENT ON FUNCTION @extschema@.bemi_chain_head() IS
    'The last change of the hash chain: its id, hash, commit time and position, to publish elsewhere';

REVOKE ALL ON FUNCTION @extschema@.bemi_verify(timestamptz, timestamptz), @extschema@.bemi_chain_head() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_verify(timestamptz, timestamptz), @extschema@.bemi_chain_head() TO bemi_reader;
