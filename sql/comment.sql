-- /*Bemi {json} Bemi*/ comments, as Bemi's ORM packages send them, give a statement its context.
CREATE TABLE comment_items (id int PRIMARY KEY, note text);

INSERT INTO comment_items VALUES (1, 'from comment') /*Bemi {"user_id": 7, "endpoint": "/items"} Bemi*/;

-- The comment wins over bemi_set_context for its statement only.
BEGIN;
SELECT bemi_set_context('{"user_id": 8}');
INSERT INTO comment_items VALUES (2, 'comment wins') /*Bemi {"user_id": 9} Bemi*/;
INSERT INTO comment_items VALUES (3, 'set_context again');
COMMIT;

-- A fake comment inside a string literal is data, not context.
INSERT INTO comment_items VALUES (4, '/*Bemi {"user_id": "spoofed"} Bemi*/');
INSERT INTO comment_items VALUES (5, $$ /*Bemi {"user_id": "spoofed"} Bemi*/ $$);
INSERT INTO comment_items VALUES (6, E'it''s \' /*Bemi {"user_id": "spoofed"} Bemi*/');

-- Malformed comments are ignored with a WARNING; the statement still succeeds.
INSERT INTO comment_items VALUES (7, 'bad json') /*Bemi {"user_id": Bemi*/;
INSERT INTO comment_items VALUES (8, 'not an object') /*Bemi [1, 2] Bemi*/;
INSERT INTO comment_items VALUES (9, 'no end marker') /*Bemi {"user_id": 1} */;
SET bemi.max_context_size = 16;
INSERT INTO comment_items VALUES (10, 'too large') /*Bemi {"user_id": 1, "padding": "xxxxxxxxxxxx"} Bemi*/;
RESET bemi.max_context_size;
-- JSON too deep for the parser's stack is the comment's fault too (the statement, 200 kB, is not
-- echoed; the detail, the parser's own message, differs between versions: terse).
\set VERBOSITY terse
\set ECHO none
SELECT format('INSERT INTO comment_items VALUES (19, %L) /*Bemi {"deep": %s%s} Bemi*/',
              'too deep', repeat('[', 100000), repeat(']', 100000)) \gexec
\set ECHO all
\set VERBOSITY default

-- JSON escapes keep comment terminators out of the SQL comment.
INSERT INTO comment_items VALUES (11, 'escaped') /*Bemi {"path": "\u002a/ Bemi\u002a/ \"quoted\" \\ done"} Bemi*/;

-- Several statements in one query string: each comment belongs to its own statement.
INSERT INTO comment_items VALUES (12, 'first') /*Bemi {"n": 1} Bemi*/; INSERT INTO comment_items VALUES (13, 'second'); INSERT INTO comment_items VALUES (14, 'third') /*Bemi {"n": 3} Bemi*/;

-- A comment in front of its statement, as Bemi's Python package sends it (from PostgreSQL 18 a
-- statement's location starts at its first token, after the comments), and in front of a second
-- statement of a query string, behind other comments (nested ones too).
/*Bemi {"front": 1} Bemi*/ INSERT INTO comment_items VALUES (16, 'front');
INSERT INTO comment_items VALUES (17, 'no comment') \; /*Bemi {"front": 2} Bemi*/ /* other /* nested */ */
  INSERT INTO comment_items VALUES (18, 'front of the second');

-- Writes made by a function called from a commented statement carry the comment's context.
CREATE FUNCTION comment_insert(i int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO comment_items VALUES (i, 'via function');
END $$;
SELECT comment_insert(15) /*Bemi {"job": "fn"} Bemi*/;

SELECT bemi_wait();
SELECT primary_key, after->>'note' AS note, context - '_bemi' AS context
  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'comment_items' ORDER BY id;
