-- bemi._ingest_rows and bemi._ingest (issue 16): on a destination, the rows a source's worker
-- sends with their jsonb in PostgreSQL's own format. What it takes back exactly, what it refuses
-- with a clear error, and that nothing it is sent is trusted: a fuzz of broken documents must
-- never be taken unless it reads back as itself. Who may call it. bemi._ingest's own write.
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
-- A field: its length and bytes (NULL: -1); a row of the worker's 14 columns; a batch.
CREATE FUNCTION pg_temp.f(b bytea) RETURNS bytea LANGUAGE sql
    AS $$ SELECT CASE WHEN b IS NULL THEN '\xffffffff'::bytea ELSE int4send(length(b)) || b END $$;
CREATE FUNCTION pg_temp.r(after bytea, id bigint DEFAULT 1, pk text DEFAULT '1', tbl bytea DEFAULT textsend('ingest_probe'),
                          committed bytea DEFAULT timestamptz_send('2026-12-01 12:00:00+00'), ncols int DEFAULT 14)
    RETURNS bytea LANGUAGE sql AS $$
    SELECT int2send(ncols::int2) || pg_temp.f(int8send(id)) || pg_temp.f(textsend(pk))
        || pg_temp.f(bemi._jsonb_internal('{}')) || pg_temp.f(after) || pg_temp.f(bemi._jsonb_internal('{"user_id": 1}'))
        || pg_temp.f(textsend('db')) || pg_temp.f(textsend('public')) || pg_temp.f(tbl) || pg_temp.f(textsend('CREATE'))
        || pg_temp.f(committed) || pg_temp.f(int8send(7)) || pg_temp.f(pg_lsn_send('0/16B3748'))
        || pg_temp.f(textsend('7412345678901234567')) || pg_temp.f(timestamptz_send('2026-12-01 12:00:01+00'))
$$;
CREATE FUNCTION pg_temp.batch(VARIADIC rows bytea[]) RETURNS bytea LANGUAGE sql AS $$
    SELECT '\x5047434f50590aff0d0a00'::bytea || int4send(0) || int4send(0)
        || coalesce((SELECT string_agg(x, ''::bytea) FROM unnest(rows) x), '') || int2send(-1::int2)
$$;
CREATE TEMP TABLE corpus (n serial, doc jsonb);
INSERT INTO corpus (doc) VALUES
    ('{}'), ('[]'), ('1'), ('"a string"'), ('null'), ('true'), ('false'), ('-0.0'), ('0'),
    ('{"id": 1, "email": "ann@example.com", "admin": false, "score": 12.50, "tags": ["a", "b"], "parent": null}'),
    ('{"a": {"b": {"c": {"d": [1, [2, [3, [4, {}]]]]}}}, "": ""}'),
    ('["é ünïcödé", "tab\tnew\nline", "quote\" back\\slash", "\u0001"]'),
    ('[1e100, -1e-100, 12345678901234567890.0123456789, 0.5, -7, 10000, 99990000]'),
    ((SELECT jsonb_agg(i) FROM generate_series(1, 70) i)),
    ((SELECT jsonb_object_agg('key' || i, repeat('v', i)) FROM generate_series(1, 70) i)),
    ((SELECT jsonb_object_agg(repeat('k', i), i * 1.5) FROM generate_series(1, 40) i));

-- 1. What is sent comes back as it was, row by row, NULL primary key included.
SELECT count(*) AS documents, bool_and(back = doc AND back::text = doc::text) AS all_equal
  FROM corpus, LATERAL (SELECT "after" AS back FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(bemi._jsonb_internal(doc))))) b;
SELECT id, primary_key, "before", "after", context, database, schema, "table", operation, committed_at,
       transaction_id, "position", source_system_id, created_at
  FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{"id": 1}')),
                                       pg_temp.r(bemi._jsonb_internal('{"id": 2}'), id => 2, pk => NULL)));
SELECT count(*) AS no_rows FROM bemi._ingest_rows(pg_temp.batch(VARIADIC '{}'::bytea[]));

-- 2. A broken batch is refused, saying why and where.
\set VERBOSITY default
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows('\x00')$$) AS too_short;
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows(overlay(pg_temp.batch(VARIADIC '{}'::bytea[]) placing '\x58' from 1))$$) AS no_signature;
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'))) || '\x00')$$) AS past_trailer;
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows(substr(pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'))), 1, 60))$$) AS cut_short;
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'), ncols => 13)))$$) AS columns;
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'), tbl => '\x610062')))$$) AS nul_in_text;
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'), committed => int8send(9223372036854775000))))$$) AS time_range;
-- Documents: a count past the data, keys out of order (the two keys of {"a": 1, "b": 2} swapped),
-- data past the last entry, a NaN, a digit of 10000, a zero digit at the end, a boolean with
-- data, a scalar container inside an array (the byte layouts: the hex below).
SELECT pg_temp.try(format($$SELECT * FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(%L)))$$, b)) AS refused
  FROM (VALUES
    (overlay(bemi._jsonb_internal('{"a": 1}') placing '\xff0000' from 1)),
    (overlay(bemi._jsonb_internal('{"a": 1, "b": 2}') placing '\x6261' from 21)),
    (bemi._jsonb_internal('[1]') || '\x00'::bytea),
    (overlay(bemi._jsonb_internal('[1]') placing '\x00c0' from 13)),
    (overlay(bemi._jsonb_internal('[1]') placing '\x1027' from 15)),
    (overlay(bemi._jsonb_internal('[10000]') placing '\x0000' from 15)),
    (overlay(bemi._jsonb_internal('[true]') placing '\x010000b0' from 5) || '\x00'::bytea),
    (overlay(bemi._jsonb_internal('[[1]]') placing '\x01000050' from 9))
  ) v(b);
SELECT encode(bemi._jsonb_internal('[1]'), 'hex') AS one, encode(bemi._jsonb_internal('[10000]'), 'hex') AS ten_thousand,
       encode(bemi._jsonb_internal('{"a": 1, "b": 2}'), 'hex') AS two_keys;
\set VERBOSITY terse

-- 3. A fuzz: documents with bytes changed, cut or stretched. Whatever is taken must read back as
-- itself (its text gives the same document, hashes the same, contains itself) and the server
-- must not fall over; the rest is refused as invalid (22P03) or, for a string's bytes, as not in
-- the database's encoding (22021).
SELECT setseed(0.25);
CREATE TEMP TABLE fuzz (taken boolean, sound boolean, state text);
DO $$
DECLARE
    b bytea;
    doc jsonb;
    back jsonb;
    pos int;
BEGIN
    FOR i IN 1..4000 LOOP
        SELECT bemi._jsonb_internal(c.doc) INTO b FROM corpus c WHERE c.n = 1 + (i % (SELECT count(*) FROM corpus));
        CASE i % 4
            WHEN 0 THEN b := set_byte(b, floor(random() * length(b))::int, floor(random() * 256)::int);
            WHEN 1 THEN FOR k IN 1..3 LOOP
                            b := set_byte(b, floor(random() * length(b))::int, floor(random() * 256)::int);
                        END LOOP;
            WHEN 2 THEN b := substr(b, 1, floor(random() * length(b))::int);
            ELSE pos := 4 * floor(random() * (length(b) / 4))::int;
                 b := overlay(b placing int4send(floor(random() * 2147483647)::int) from pos + 1);
        END CASE;
        BEGIN
            SELECT "after" INTO back FROM bemi._ingest_rows(pg_temp.batch(pg_temp.r(b)));
            INSERT INTO fuzz VALUES (true,
                back = back::text::jsonb AND back @> back AND jsonb_hash_extended(back, 1) = jsonb_hash_extended(back::text::jsonb, 1)
                AND length(jsonb_pretty(back)) > 0, NULL);
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO fuzz VALUES (false, NULL, SQLSTATE);
        END;
    END LOOP;
END $$;
SELECT count(*) FILTER (WHERE taken) > 0 AS some_taken, count(*) FILTER (WHERE NOT taken) > 1000 AS most_refused,
       count(*) FILTER (WHERE taken AND NOT sound) AS taken_unsound,
       count(*) FILTER (WHERE NOT taken AND state NOT IN ('22P03', '22021')) AS other_errors
  FROM fuzz;

-- 4. Only bemi_ingest may call it; what it returns goes through the caller's own INSERT, under the
-- trail's protection (a plain INSERT of a bemi_ingest member).
CREATE ROLE ingest_outsider;
CREATE ROLE ingest_member IN ROLE bemi_ingest;
SET ROLE ingest_outsider;
SELECT pg_temp.try($$SELECT * FROM bemi._ingest_rows(pg_temp.batch(VARIADIC '{}'::bytea[]))$$) AS outsider,
       pg_temp.try($$SELECT bemi._jsonb_internal('{}')$$) AS outsider_internal;
RESET ROLE;
CREATE TEMP TABLE ingest_batch AS
    SELECT pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{"id": 1, "note": "ingested"}'), id => 9000000000000)) AS b;
GRANT SELECT ON ingest_batch TO ingest_member;
BEGIN;
SET LOCAL ROLE ingest_member;
INSERT INTO bemi.changes (id, primary_key, "before", "after", context, database, schema, "table", operation, committed_at,
                          transaction_id, position, source_system_id, created_at) OVERRIDING SYSTEM VALUE
SELECT r.* FROM ingest_batch, bemi._ingest_rows(b) r;
RESET ROLE;
SELECT "after", "table", source_system_id FROM bemi.changes WHERE "table" = 'ingest_probe' AND source_system_id IS NOT NULL;
ROLLBACK;
DROP TABLE ingest_batch;
DROP ROLE ingest_outsider, ingest_member;

-- 5. bemi._ingest, the worker's way in: the rows land in bemi.changes as given, written by the
-- table-level batch insert with their index entries (found through the id and context indexes)
-- and under the table's constraints (a repeated id, a NULL id refused); a refused batch leaves
-- nothing; each row to its partition. Only a bemi_ingest member: not an outsider, not a superuser
-- outside it, not in a read-only transaction. With a trigger on bemi.changes the rows go by INSERT
-- instead, and the trigger sees them.
CREATE ROLE ingest_outsider;
CREATE ROLE ingest_member IN ROLE bemi_ingest;
CREATE TEMP TABLE ingest_batches (name text, b bytea);
INSERT INTO ingest_batches VALUES
    ('three', pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{"id": 1, "note": "one"}'), id => 9000000000001),
                            pg_temp.r(bemi._jsonb_internal('{"id": 2, "note": "two"}'), id => 9000000000002, pk => NULL),
                            pg_temp.r(bemi._jsonb_internal((SELECT doc FROM corpus WHERE n = 15)), id => 9000000000003))),
    ('repeated_id', pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'), id => 9000000000004),
                                  pg_temp.r(bemi._jsonb_internal('{}'), id => 9000000000001))),
    ('null_id', pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'), id => 9000000000005),
                              pg_temp.r(bemi._jsonb_internal('{}'), id => NULL))),
    ('broken_second', pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'), id => 9000000000006),
                                    pg_temp.r('\x0100000001', id => 9000000000007))),
    ('trigger', pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{"via": "insert"}'), id => 9000000000008))),
    ('later_day', pg_temp.batch(pg_temp.r(bemi._jsonb_internal('{}'), id => 9000000000009,
                                          committed => timestamptz_send('2026-12-03 08:00:00+00'))));
GRANT SELECT ON ingest_batches TO ingest_outsider, ingest_member;
SET ROLE ingest_outsider;
SELECT pg_temp.try($$SELECT bemi._ingest(b) FROM ingest_batches WHERE name = 'three'$$) AS outsider;
RESET ROLE;
SELECT pg_temp.try($$SELECT bemi._ingest(b) FROM ingest_batches WHERE name = 'three'$$) AS superuser;
BEGIN READ ONLY;
SET LOCAL ROLE ingest_member;
SELECT pg_temp.try($$SELECT bemi._ingest(b) FROM ingest_batches WHERE name = 'three'$$) AS read_only;
ROLLBACK;
BEGIN;
SET LOCAL ROLE ingest_member;
SELECT bemi._ingest(b) AS written FROM ingest_batches WHERE name = 'three';
SELECT bemi._ingest(pg_temp.batch(VARIADIC '{}'::bytea[])) AS written_of_none;
SELECT pg_temp.try($$SELECT bemi._ingest(b) FROM ingest_batches WHERE name = 'repeated_id'$$) AS repeated_id;
SELECT pg_temp.try($$SELECT bemi._ingest(b) FROM ingest_batches WHERE name = 'null_id'$$) AS null_id;
SELECT pg_temp.try($$SELECT bemi._ingest(b) FROM ingest_batches WHERE name = 'broken_second'$$) AS broken_second;
RESET ROLE;
SELECT (SELECT count(*) FROM ingest_batches, bemi._ingest_rows(b) r
          JOIN bemi.changes c ON c.id = r.id
         WHERE name = 'three' AND (c.primary_key, c."before", c."after", c.context, c.database, c.schema, c."table",
                                   c.operation, c.committed_at, c.transaction_id, c."position", c.source_system_id,
                                   c.created_at)
                                  IS NOT DISTINCT FROM
                                  (r.primary_key, r."before", r."after", r.context, r.database, r.schema, r."table",
                                   r.operation, r.committed_at, r.transaction_id, r."position", r.source_system_id,
                                   r.created_at)) AS as_sent,
       (SELECT count(*) FROM bemi.changes WHERE id > 9000000000000) AS rows_in_trail;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM bemi.changes WHERE id = 9000000000002;
SELECT id, primary_key, "after" ->> 'note' AS note FROM bemi.changes WHERE id = 9000000000002;
RESET enable_bitmapscan;
SELECT count(*) AS by_context FROM bemi.changes WHERE context @> '{"user_id": 1}' AND id > 9000000000000;
ROLLBACK;
-- A partitioned trail (retention made a partition for the day the batch's first rows were
-- committed): each row is routed to its partition, the others to the default one.
BEGIN;
SELECT bemi._make_partition('2026-12-01 00:00+00', '2026-12-02 00:00+00') IS NOT NULL AS partition_made;
SET LOCAL ROLE ingest_member;
SELECT bemi._ingest(b) AS written FROM ingest_batches WHERE name = 'three';
SELECT bemi._ingest(b) AS written FROM ingest_batches WHERE name = 'later_day';
RESET ROLE;
SELECT tableoid::regclass AS partition, count(*) FROM bemi.changes WHERE id > 9000000000000 GROUP BY 1 ORDER BY 1;
ROLLBACK;
CREATE FUNCTION public.ingest_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'the trigger saw change %', NEW.id;
    RETURN NEW;
END
$$;
BEGIN;
CREATE TRIGGER ingest_seen BEFORE INSERT ON bemi.changes FOR EACH ROW EXECUTE FUNCTION public.ingest_seen();
SET LOCAL ROLE ingest_member;
SELECT bemi._ingest(b) AS written FROM ingest_batches WHERE name = 'trigger';
RESET ROLE;
SELECT "after" FROM bemi.changes WHERE id = 9000000000008;
ROLLBACK;
DROP FUNCTION public.ingest_seen();
-- Without INSERT on bemi.changes (the grant taken back) the rows go by INSERT, which refuses them.
BEGIN;
REVOKE INSERT ON bemi.changes FROM bemi_ingest;
SET LOCAL ROLE ingest_member;
SELECT pg_temp.try($$SELECT bemi._ingest(b) FROM ingest_batches WHERE name = 'three'$$) AS without_insert;
ROLLBACK;
DROP TABLE ingest_batches;
DROP ROLE ingest_outsider, ingest_member;
