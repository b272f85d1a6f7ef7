-- Time travel: a table, or one row, as it was at a moment, as rows of the table's own type.
SET TimeZone = 'UTC';
SET DateStyle = ISO;
\set SHOW_CONTEXT never
CREATE TABLE tt_todo (id serial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false);
INSERT INTO tt_todo (task) VALUES ('Sleep'), ('Eat'), ('Repeat');
SELECT bemi_wait();
SELECT clock_timestamp() AS t1 \gset
UPDATE tt_todo SET done = true WHERE id = 1;
DELETE FROM tt_todo WHERE id = 2;
INSERT INTO tt_todo (task) VALUES ('Code');
SELECT bemi_wait();
SELECT clock_timestamp() AS t2 \gset
-- Row 3 was never changed after t1: it is as it is now. Row 1 is undone, row 2 comes back,
-- row 4 did not exist yet.
SELECT * FROM tt_todo ORDER BY id;
SELECT * FROM bemi_as_of(NULL::tt_todo, :'t1') ORDER BY id;
SELECT * FROM bemi_as_of(NULL::tt_todo, :'t2') ORDER BY id;
-- One row; NULL when it did not exist at that moment.
SELECT bemi_row_as_of(NULL::tt_todo, 1, :'t1') AS row1, bemi_row_as_of(NULL::tt_todo, 2, :'t1') AS row2,
       bemi_row_as_of(NULL::tt_todo, 3, :'t1') AS row3, bemi_row_as_of(NULL::tt_todo, 4, :'t1') AS row4,
       bemi_row_as_of(NULL::tt_todo, 4, :'t2') AS row4_later;
-- It composes like any set of rows: what changed since t1?
SELECT id, old.done AS done_then, cur.done AS done_now
  FROM bemi_as_of(NULL::tt_todo, :'t1') old FULL JOIN tt_todo cur USING (id)
 WHERE old IS DISTINCT FROM cur ORDER BY 1;

-- Columns added or dropped since: rows come back in the table's current shape. A dropped
-- column's old values are left out; an added column reads as NULL where the first image after
-- the moment predates it, and as the value that image holds otherwise (here the default).
ALTER TABLE tt_todo ADD COLUMN priority int DEFAULT 3;
UPDATE tt_todo SET priority = 1 WHERE id = 3;
ALTER TABLE tt_todo DROP COLUMN done;
SELECT bemi_wait();
SELECT * FROM bemi_as_of(NULL::tt_todo, :'t1') ORDER BY id;
-- A column whose type changed so that an old value no longer converts: read as NULL, with a WARNING
-- (sql/ddl_time_travel.sql maps images across every kind of schema change).
CREATE TABLE tt_codes (id int PRIMARY KEY, code text);
INSERT INTO tt_codes VALUES (1, 'A1');
SELECT bemi_wait();
SELECT clock_timestamp() AS t3 \gset
UPDATE tt_codes SET code = '42';
ALTER TABLE tt_codes ALTER COLUMN code TYPE int USING code::int;
SELECT bemi_wait();
SELECT * FROM bemi_as_of(NULL::tt_codes, :'t3');
SELECT bemi_row_as_of(NULL::tt_codes, 1, :'t3');

-- Composite keys.
CREATE TABLE tt_members (org_id int, user_id int, role text, PRIMARY KEY (org_id, user_id));
INSERT INTO tt_members VALUES (3, 14, 'member'), (3, 15, 'member');
SELECT bemi_wait();
SELECT clock_timestamp() AS t4 \gset
UPDATE tt_members SET role = 'admin' WHERE user_id = 14;
SELECT bemi_wait();
SELECT * FROM bemi_as_of(NULL::tt_members, :'t4') ORDER BY user_id;
SELECT bemi_row_as_of(NULL::tt_members, ARRAY[3, 14], :'t4'), bemi_row_as_of(NULL::tt_members, '[3, 15]'::text, :'t4');

-- A TRUNCATE after the moment: the current rows say nothing about it, so the state is replayed
-- from the trail. That works here because the table was created after tracking began.
TRUNCATE tt_members;
INSERT INTO tt_members VALUES (4, 1, 'owner');
SELECT bemi_wait();
SELECT * FROM bemi_as_of(NULL::tt_members, :'t4') ORDER BY user_id;
SELECT * FROM bemi_as_of(NULL::tt_members, now()) ORDER BY user_id;
SELECT bemi_row_as_of(NULL::tt_members, ARRAY[3, 14], :'t4');

-- Bad input: each a clear error.
SELECT bemi_tracking_started_at() < :'t1'::timestamptz AS tracking_began_before;
\set VERBOSITY terse
SELECT * FROM bemi_as_of(NULL::tt_todo, '2000-01-01 00:00:00+00');
\set VERBOSITY default
SELECT * FROM bemi_as_of(NULL::tt_todo, '9999-01-01 00:00:00+00');
SELECT * FROM bemi_as_of(NULL::tt_todo, NULL);
SELECT * FROM bemi_as_of(NULL::int, now());
SELECT bemi_row_as_of(NULL::tt_todo, NULL::int, now());
CREATE TABLE tt_nokey (sensor text, value float8);
SELECT * FROM bemi_as_of(NULL::tt_nokey, now());
CREATE ROLE tt_nobody;
SET ROLE tt_nobody;
SELECT * FROM bemi_as_of(NULL::tt_todo, now());
RESET ROLE;
DROP ROLE tt_nobody;
