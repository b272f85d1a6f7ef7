-- bemi's MACs (signed context messages, hashed masks) are HMAC-SHA256 computed by its own code
-- (src/context/hmac.cpp: the key's blocks are hashed once per process, not once per MAC). Checked
-- here against an HMAC built from PostgreSQL's sha256() and the key file, which a superuser can
-- read: the same bytes must come out, including for values longer than a block.
CREATE FUNCTION pg_temp.hmac(key bytea, msg bytea) RETURNS bytea LANGUAGE sql AS $$
  WITH k AS (SELECT CASE WHEN length(key) > 64 THEN sha256(key) ELSE key END AS k),
       padded AS (SELECT k || decode(repeat('00', 64 - length(k)), 'hex') AS k FROM k),
       pads AS (SELECT decode(string_agg(lpad(to_hex(get_byte(k, i) # 54), 2, '0'), '' ORDER BY i), 'hex') AS inner_pad,
                       decode(string_agg(lpad(to_hex(get_byte(k, i) # 92), 2, '0'), '' ORDER BY i), 'hex') AS outer_pad
                  FROM padded, generate_series(0, 63) i)
  SELECT sha256(outer_pad || sha256(inner_pad || msg)) FROM pads
$$;
-- The reference itself, on RFC 4231's test cases 1 and 6.
SELECT encode(pg_temp.hmac(decode(repeat('0b', 20), 'hex'), 'Hi There'), 'hex')
       = 'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7' AS rfc4231_case_1,
       encode(pg_temp.hmac(decode(repeat('aa', 131), 'hex'), 'Test Using Larger Than Block-Size Key - Hash Key First'), 'hex')
       = '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54' AS rfc4231_case_6;
SELECT length(pg_read_binary_file('bemi_secret')) AS key_bytes \gset
SELECT :key_bytes AS key_bytes;

-- A signed message: "bemi:1:" || hex(HMAC(key, "bemi:1:" || xid (4 bytes, big-endian) || payload)) || ":" || payload.
CREATE TABLE hmac_notes (id int PRIMARY KEY, body text);
SELECT 'slot' FROM pg_create_logical_replication_slot('hmac_raw', 'test_decoding', true);
BEGIN;
SELECT bemi_set_context(jsonb_build_object('user_id', 1, 'note', repeat('a long context ', 10)));
INSERT INTO hmac_notes VALUES (1, 'one');
-- Ours: the slot may also hold the worker's next transaction, if it committed already.
SELECT pg_current_xact_id()::text::bigint % 4294967296 AS hmac_xid \gset
COMMIT;
WITH raw AS (SELECT data FROM pg_logical_slot_get_changes('hmac_raw', NULL, NULL, 'include-xids', '1')),
     msg AS (SELECT substring(data FROM 'content:bemi:1:([0-9a-f]{64}):') AS mac,
                    substring(data FROM 'content:bemi:1:[0-9a-f]{64}:(.*)$') AS payload
               FROM raw WHERE data LIKE 'message:%prefix: bemi,%'),
     xid AS (SELECT substring(data FROM '^BEGIN ([0-9]+)')::bigint AS xid FROM raw WHERE data = 'BEGIN ' || :hmac_xid)
SELECT length(payload) > 64 AS longer_than_a_block,
       mac = encode(pg_temp.hmac(pg_read_binary_file('bemi_secret'),
                                 convert_to('bemi:1:', 'UTF8') || decode(lpad(to_hex(xid), 8, '0'), 'hex')
                                 || convert_to(payload, 'UTF8')), 'hex') AS message_mac_matches
  FROM msg, xid;
SELECT 'dropped' FROM pg_drop_replication_slot('hmac_raw');

-- A hashed mask: hex(HMAC(HMAC(key, "bemi:mask:1:" || database OID (4 bytes)), value's text)).
CREATE TABLE hmac_users (id int PRIMARY KEY, token text);
SELECT bemi_mask('public.hmac_users', '{token}', 'hash') > 0 AS masked;
INSERT INTO hmac_users VALUES (1, 'tok-1'), (2, repeat('a token longer than one block ', 5)), (3, '');
SELECT bemi_wait();
WITH mask AS (SELECT pg_temp.hmac(pg_read_binary_file('bemi_secret'),
                                  convert_to('bemi:mask:1:', 'UTF8') || decode(lpad(to_hex(oid::bigint), 8, '0'), 'hex')) AS k
                FROM pg_database WHERE datname = current_database())
SELECT u.id, c.after->>'token' = 'hmac:' || encode(pg_temp.hmac(mask.k, convert_to(u.token, 'UTF8')), 'hex') AS hash_matches
  FROM bemi.changes c JOIN hmac_users u ON c.primary_key = u.id::text, mask
 WHERE c."table" = 'hmac_users' ORDER BY u.id;
SELECT bemi_drop_rule(id) IS NOT NULL AS dropped FROM bemi.rules WHERE target = 'public.hmac_users';
DROP TABLE hmac_users, hmac_notes;

-- SHA-256 itself, computed both ways bemi computes it (the CPU's SHA instructions where it has
-- them, portable code): sha256()'s bytes for every length up to five blocks. The library's test
-- entry is installed in no database; the fast way answers NULL on a CPU without the instructions.
CREATE FUNCTION pg_temp.bemi_sha256(data bytea, portable boolean) RETURNS bytea
    AS '$libdir/bemi', 'bemi_sha256_test' LANGUAGE C STRICT;
WITH data AS (SELECT substring(decode(repeat(md5(n::text), 20), 'hex') FROM 1 FOR n) AS d
                FROM generate_series(0, 320) n)
SELECT count(*) AS lengths,
       count(*) FILTER (WHERE pg_temp.bemi_sha256(d, true) = sha256(d)) AS portable_agrees,
       count(*) FILTER (WHERE coalesce(pg_temp.bemi_sha256(d, false) = sha256(d), true)) AS fast_agrees_or_absent
  FROM data;
