-- Decoding runs no user code. Images are built like to_jsonb, and to_jsonb calls a type's cast to
-- json; an ordinary role may write such a cast for a type it owns. Run inside the worker (a
-- superuser), mallory's casts crashed the server in a loop, copied a secret into the trail and
-- stopped capture for everybody. Now a column whose conversion would call a function that is not a
-- superuser's C code is recorded as the value's text output, and the function never runs: not in
-- the worker, not through pg_logical_slot_get_changes.
SET TimeZone = 'UTC';
CREATE ROLE mallory;
CREATE SCHEMA mallory AUTHORIZATION mallory;
-- A secret only superusers may read, and a table that everybody else keeps writing.
CREATE TABLE vault (secret text);
INSERT INTO vault VALUES ('s3cr3t-of-the-superuser');
CREATE TABLE ledger (id int PRIMARY KEY, note text);
-- A superuser decodes the same changes with the bemi plugin, in this session, at the end.
-- (Not a temporary slot: the errors shown below would drop it.)
SELECT 'init' FROM pg_create_logical_replication_slot('sec_decoding', 'bemi');
-- mallory's tables are made by the superuser and handed to her; she adds the columns herself.
-- (An ordinary role creating tables is another finding of issue 10, tested on its own.)
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['loot', 'diary', 'spied', 'chores', 'tones', 'nests', 'seasons'] LOOP
        EXECUTE format('CREATE TABLE mallory.%I (id int PRIMARY KEY)', t);
        EXECUTE format('ALTER TABLE mallory.%I OWNER TO mallory', t);
    END LOOP;
END $$;
SET ROLE mallory;
SET search_path = mallory;
ALTER TABLE loot ADD COLUMN what text;
ALTER TABLE loot ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;

-- 1. A STABLE SQL cast to json. It made the worker segfault, and the server restart, in a loop.
CREATE TYPE feeling AS ENUM ('sad', 'ok', 'happy');
CREATE FUNCTION feeling_json(feeling) RETURNS json LANGUAGE sql STABLE AS $$ SELECT '{}'::json $$;
CREATE CAST (feeling AS json) WITH FUNCTION feeling_json(feeling);
ALTER TABLE diary ADD COLUMN f feeling;
INSERT INTO diary VALUES (1, 'happy');
SELECT to_jsonb(d) AS what_to_jsonb_gives FROM diary d;
RESET ROLE;
RESET search_path;
INSERT INTO ledger VALUES (1, 'after a stable cast');
SELECT bemi_wait();
SELECT "table", after FROM bemi.changes
 WHERE operation <> 'DDL' AND ("table" = 'diary' OR after->>'note' = 'after a stable cast') ORDER BY id;

-- 2. A VOLATILE cast that reads a table mallory may not read. Run in decoding, it read it as a
-- superuser (the worker, or a superuser reading a slot) and put the secret into the image.
SET ROLE mallory;
SET search_path = mallory;
CREATE TYPE secret_mood AS ENUM ('calm', 'curious');
CREATE FUNCTION secret_mood_json(m secret_mood) RETURNS json LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s text;
BEGIN
    SELECT secret INTO s FROM public.vault;
    RAISE NOTICE 'secret_mood cast ran as %', current_user;
    RETURN json_build_object('mood', m::text, 'stolen', s);
END $$;
CREATE CAST (secret_mood AS json) WITH FUNCTION secret_mood_json(secret_mood);
-- As mallory the cast cannot read the vault.
SELECT 'calm'::secret_mood::json;
ALTER TABLE spied ADD COLUMN m secret_mood;
INSERT INTO spied VALUES (1, 'curious');
RESET ROLE;
RESET search_path;
INSERT INTO ledger VALUES (2, 'after a cast that reads');
SELECT bemi_wait();
SELECT "table", after FROM bemi.changes
 WHERE operation <> 'DDL' AND ("table" = 'spied' OR after->>'note' = 'after a cast that reads') ORDER BY id;

-- 3. A cast that writes. In the worker it failed with "output plugin used XID" on every retry,
-- and nothing more was recorded for anybody.
SET ROLE mallory;
SET search_path = mallory;
CREATE TYPE chore AS ENUM ('wash', 'dry');
CREATE FUNCTION chore_json(c chore) RETURNS json LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO mallory.loot (what) VALUES ('chore cast ran as ' || current_user);
    RETURN to_json(c::text);
END $$;
CREATE CAST (chore AS json) WITH FUNCTION chore_json(chore);
ALTER TABLE chores ADD COLUMN c chore;
INSERT INTO chores VALUES (1, 'dry');
RESET ROLE;
RESET search_path;
INSERT INTO ledger VALUES (3, 'after a cast that writes');
SELECT bemi_wait();
SELECT "table", after FROM bemi.changes
 WHERE operation <> 'DDL' AND ("table" = 'chores' OR after->>'note' = 'after a cast that writes') ORDER BY id;

-- 4. A cast to jsonb: to_jsonb does not call it, and neither does bemi.
SET ROLE mallory;
SET search_path = mallory;
CREATE TYPE tone AS ENUM ('low', 'high');
CREATE FUNCTION tone_jsonb(t tone) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO mallory.loot (what) VALUES ('tone cast ran as ' || current_user);
    RETURN jsonb_build_object('stolen', (SELECT secret FROM public.vault));
END $$;
CREATE CAST (tone AS jsonb) WITH FUNCTION tone_jsonb(tone);
ALTER TABLE tones ADD COLUMN t tone;
INSERT INTO tones VALUES (1, 'high');
SELECT to_jsonb(r.t) AS what_to_jsonb_gives FROM tones r;
RESET ROLE;
RESET search_path;
INSERT INTO ledger VALUES (4, 'after a cast to jsonb');
SELECT bemi_wait();
SELECT "table", after FROM bemi.changes
 WHERE operation <> 'DDL' AND ("table" = 'tones' OR after->>'note' = 'after a cast to jsonb') ORDER BY id;

-- Casts that are not functions of hers: WITH INOUT (to_jsonb ignores it too), and a built-in
-- polymorphic C function, which can only fail when called as a cast (to_jsonb fails on it).
-- Both columns are their text output.
SET ROLE mallory;
SET search_path = mallory;
CREATE TYPE pitch AS ENUM ('flat', 'sharp');
CREATE CAST (pitch AS json) WITH INOUT;
CREATE TYPE key AS ENUM ('minor', 'major');
CREATE CAST (key AS json) WITH FUNCTION pg_catalog.to_json(anyelement);
ALTER TABLE tones ADD COLUMN p pitch, ADD COLUMN k key;
UPDATE tones SET p = 'sharp', k = 'major';
RESET ROLE;
RESET search_path;
SELECT bemi_wait();
SELECT operation, after FROM bemi.changes WHERE "table" = 'tones' AND operation = 'UPDATE';
SET ROLE mallory;
SELECT to_jsonb(r) FROM mallory.tones r;
RESET ROLE;

-- 5. The reading cast reached through an array, a composite, a domain, an array of the domain, a
-- domain over the array and an array of the composite; and casts of mallory's own range and
-- multirange types. Each column is its text output.
SET ROLE mallory;
SET search_path = mallory;
CREATE TYPE secret_pair AS (label text, m secret_mood);
CREATE DOMAIN secret_mood_d AS secret_mood;
CREATE TYPE secret_range AS RANGE (subtype = secret_mood);
CREATE FUNCTION secret_range_json(r secret_range) RETURNS json LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE NOTICE 'secret_range cast ran as %', current_user;
    RETURN json_build_object('stolen', (SELECT secret FROM public.vault));
END $$;
CREATE CAST (secret_range AS json) WITH FUNCTION secret_range_json(secret_range);
CREATE FUNCTION secret_multirange_json(r secret_multirange) RETURNS json LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE NOTICE 'secret_multirange cast ran as %', current_user;
    RETURN json_build_object('stolen', (SELECT secret FROM public.vault));
END $$;
CREATE CAST (secret_multirange AS json) WITH FUNCTION secret_multirange_json(secret_multirange);
CREATE DOMAIN secret_moods AS secret_mood[];
ALTER TABLE nests ADD COLUMN arr secret_mood[], ADD COLUMN pair secret_pair, ADD COLUMN dom secret_mood_d,
    ADD COLUMN dom_arr secret_mood_d[], ADD COLUMN arr_dom secret_moods, ADD COLUMN pairs secret_pair[],
    ADD COLUMN rng secret_range, ADD COLUMN mrng secret_multirange;
INSERT INTO nests VALUES (1, '{calm,curious}', ROW('x', 'curious'), 'calm', '{curious,NULL}', '{calm}',
                          ARRAY[ROW('y', 'calm')::secret_pair], '[calm,curious]', '{[calm,calm], [curious,curious]}');
RESET ROLE;
RESET search_path;
INSERT INTO ledger VALUES (5, 'after nested casts');
SELECT bemi_wait();
SELECT jsonb_pretty(after) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'nests';
SELECT "table", after FROM bemi.changes WHERE after->>'note' = 'after nested casts';

-- 6. A cast created after the table already has recorded changes: the worker planned the
-- columns without a cast (an array of the type is to_jsonb's then), and the cast still must not
-- run for the next change.
SET ROLE mallory;
SET search_path = mallory;
CREATE TYPE season AS ENUM ('spring', 'autumn');
ALTER TABLE seasons ADD COLUMN s season, ADD COLUMN past season[];
INSERT INTO seasons VALUES (1, 'spring', '{spring}');
RESET ROLE;
RESET search_path;
SELECT bemi_wait();
SET ROLE mallory;
SET search_path = mallory;
CREATE FUNCTION season_json(s season) RETURNS json LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO mallory.loot (what) VALUES ('season cast ran as ' || current_user);
    RETURN json_build_object('stolen', (SELECT secret FROM public.vault));
END $$;
CREATE CAST (season AS json) WITH FUNCTION season_json(season);
UPDATE seasons SET s = 'autumn', past = past || 'autumn'::season;
RESET ROLE;
RESET search_path;
INSERT INTO ledger VALUES (6, 'after a late cast');
SELECT bemi_wait();
SELECT "table", operation, before, after FROM bemi.changes
 WHERE operation <> 'DDL' AND ("table" = 'seasons' OR after->>'note' = 'after a late cast') ORDER BY id;

-- A composite column whose type later gains an attribute of that type: the plan is made again.
SET ROLE mallory;
SET search_path = mallory;
CREATE TYPE label AS (name text);
ALTER TABLE seasons ADD COLUMN tag label;
UPDATE seasons SET tag = ROW('plain');
RESET ROLE;
RESET search_path;
SELECT bemi_wait();
SET ROLE mallory;
SET search_path = mallory;
ALTER TYPE label ADD ATTRIBUTE s season;
UPDATE seasons SET tag = ROW('sneaky', 'spring');
RESET ROLE;
RESET search_path;
SELECT bemi_wait();
SELECT operation, after FROM bemi.changes WHERE "table" = 'seasons' AND after ? 'tag' ORDER BY id;

-- 7. A superuser's C cast is still used: an hstore column's image is to_jsonb's, through
-- hstore's own cast to json.
CREATE EXTENSION hstore;
CREATE TABLE tagged (id int PRIMARY KEY, tags hstore);
INSERT INTO tagged VALUES (1, 'a=>1, b=>"x y"');
SELECT bemi_wait();
SELECT c.after = to_jsonb(t) AS after_is_to_jsonb, c.after
  FROM bemi.changes c, tagged t WHERE c."table" = 'tagged' AND c.operation <> 'DDL';
-- The same C function owned by an ordinary role is not trusted any more, from the next change
-- on; given back to the superuser, it is used again.
ALTER FUNCTION hstore_to_json(hstore) OWNER TO mallory;
UPDATE tagged SET tags = tags || 'c=>3';
ALTER FUNCTION hstore_to_json(hstore) OWNER TO CURRENT_USER;
DELETE FROM tagged;
SELECT bemi_wait();
SELECT operation, before, after FROM bemi.changes WHERE "table" = 'tagged' AND operation <> 'DDL' ORDER BY id;

-- A superuser's cast in SQL is not C code either, and is not called: an SQL function cannot run
-- safely inside decoding (the STABLE one above crashed the worker).
CREATE TYPE grade AS ENUM ('pass', 'fail');
CREATE FUNCTION grade_json(grade) RETURNS json LANGUAGE sql STABLE AS $$ SELECT '{"graded": true}'::json $$;
CREATE CAST (grade AS json) WITH FUNCTION grade_json(grade);
CREATE TABLE graded (id int PRIMARY KEY, g grade);
INSERT INTO graded VALUES (1, 'pass');
SELECT bemi_wait();
SELECT c.after, to_jsonb(r) AS what_to_jsonb_gives FROM bemi.changes c, graded r WHERE c."table" = 'graded' AND c.operation <> 'DDL';

-- None of mallory's casts ever ran in the worker: nothing written, no secret in the trail.
SELECT count(*) AS loot FROM mallory.loot;
SELECT count(*) AS secrets_in_trail FROM bemi.changes
 WHERE "table" <> 'vault' AND (before::text LIKE '%s3cr3t%' OR after::text LIKE '%s3cr3t%');
SELECT worker_state FROM bemi_status();

-- The same changes through pg_logical_slot_get_changes in this session: no cast runs (no
-- NOTICE, nothing written), and the images are the worker's.
CREATE TEMP TABLE decoded AS
SELECT data::jsonb AS doc FROM pg_logical_slot_get_changes('sec_decoding', NULL, NULL);
SELECT doc->>'table' AS "table", doc->>'operation' AS operation, doc->'before' AS before, doc->'after' AS after
  FROM decoded WHERE doc->>'table' NOT IN ('ledger', 'loot') AND doc->>'operation' <> 'DDL' ORDER BY (doc->>'position')::pg_lsn;
SELECT count(*) AS decoded, count(c.id) AS same_as_worker
  FROM decoded d LEFT JOIN bemi.changes c
    ON c."table" = d.doc->>'table' AND c.operation = d.doc->>'operation'
   AND c.before = d.doc->'before' AND c.after = d.doc->'after';
SELECT count(*) FILTER (WHERE doc::text LIKE '%s3cr3t%') AS secrets FROM decoded;
SELECT count(*) AS loot FROM mallory.loot;

-- Plans are rebuilt after every invalidation, and the old ones freed: 200 changes of a wide
-- table, each after DDL, leave this session's plan memory small.
DO $$
BEGIN
    EXECUTE 'CREATE TABLE churn (id int PRIMARY KEY, ' ||
            (SELECT string_agg(format('c%s text', g), ', ') FROM generate_series(1, 100) g) || ')';
    FOR i IN 1..200 LOOP
        EXECUTE format('ALTER TABLE churn ALTER COLUMN c1 SET DEFAULT %L', i);
        INSERT INTO churn (id) VALUES (i);
    END LOOP;
END $$;
SELECT count(*) AS decoded FROM pg_logical_slot_get_changes('sec_decoding', NULL, NULL)
 WHERE data LIKE '%"churn"%' AND data NOT LIKE '%"operation": "DDL"%';
SELECT sum(total_bytes) < 200000 AS plan_memory_bounded
  FROM pg_backend_memory_contexts WHERE name IN ('bemi relations', 'bemi relation');
SELECT pg_drop_replication_slot('sec_decoding');

DROP TABLE decoded, tagged, graded, churn, vault, ledger;
DROP CAST (grade AS json);
DROP FUNCTION grade_json(grade);
DROP TYPE grade;
DROP EXTENSION hstore;
SET client_min_messages = warning;
DROP SCHEMA mallory CASCADE;
DROP ROLE mallory;
