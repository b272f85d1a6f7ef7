-- Time travel and history of a table whose primary key is of an ordinary role's type. bemi
-- records such a key as its text output when the type's JSON conversion would run the role's
-- code (sql/security_decoding.sql); matching the trail to rows must not run that code either,
-- least of all when a superuser reads the table as of a past moment.
SET client_min_messages = warning;
CREATE ROLE tt_owner;
CREATE SCHEMA tt AUTHORIZATION tt_owner;
RESET client_min_messages;
SET ROLE tt_owner;
CREATE TABLE tt.ran (who text);
CREATE TYPE tt.code AS ENUM ('alpha', 'beta', 'gamma');
CREATE FUNCTION tt.code_json(tt.code) RETURNS json LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO tt.ran VALUES (current_user);
    RAISE NOTICE 'cast ran as %', current_user;
    RETURN to_json('pwned'::text);
END $$;
CREATE CAST (tt.code AS json) WITH FUNCTION tt.code_json(tt.code);
CREATE TABLE tt.things (code tt.code PRIMARY KEY, n int);
CREATE TABLE tt.pairs (code tt.code, n int, PRIMARY KEY (code, n));
INSERT INTO tt.things VALUES ('alpha', 1), ('beta', 2);
INSERT INTO tt.pairs VALUES ('alpha', 1);
RESET ROLE;
SELECT bemi_wait();
SELECT now() AS before_changes \gset
SET ROLE tt_owner;
UPDATE tt.things SET n = 10 WHERE code = 'alpha';
DELETE FROM tt.things WHERE code = 'beta';
INSERT INTO tt.things VALUES ('gamma', 3);
UPDATE tt.pairs SET n = 2;
RESET ROLE;
SELECT bemi_wait();

-- The keys are the values' text; the cast never ran.
SELECT bemi_json_is_text('tt.code'), bemi_json_is_text('tt.code[]'), bemi_json_is_text('int');
SELECT "table", operation, primary_key FROM bemi.changes WHERE operation <> 'DDL' AND schema = 'tt' ORDER BY id;

-- A superuser reads them back through every path that renders a key.
SELECT operation, primary_key FROM bemi_row_history('tt.things', 'alpha'::tt.code) ORDER BY id;
SELECT * FROM bemi_as_of(NULL::tt.things, :'before_changes') ORDER BY code;
SELECT * FROM bemi_row_as_of(NULL::tt.things, 'beta'::tt.code, :'before_changes');
SELECT * FROM bemi_as_of(NULL::tt.pairs, :'before_changes');
SELECT action, primary_key FROM bemi_revert_table('tt.things', :'before_changes', dry_run => true) ORDER BY step;

-- The role's cast ran for nobody.
SELECT count(*) AS cast_ran FROM tt.ran;

SET client_min_messages = warning;
DROP SCHEMA tt CASCADE;
DROP ROLE tt_owner;
