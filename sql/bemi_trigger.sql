-- Context from Bemi's own row trigger: applications already using Bemi's ORM packages install
-- _bemi_row_trigger_func, which emits a '_bemi' logical message with the statement's comment.
CREATE TABLE trig_items (id int PRIMARY KEY, name text);
CREATE FUNCTION _bemi_row_trigger_func() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  _bemi_metadata text;
BEGIN
  SELECT split_part(split_part(current_query(), '/*Bemi ', 2), ' Bemi*/', 1) INTO _bemi_metadata;
  IF _bemi_metadata <> '' THEN
    PERFORM pg_logical_emit_message(true, '_bemi', _bemi_metadata);
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; ELSE RETURN NEW; END IF;
END $$;
CREATE TRIGGER _bemi_row_trigger BEFORE INSERT OR UPDATE OR DELETE ON trig_items
  FOR EACH ROW EXECUTE FUNCTION _bemi_row_trigger_func();

-- The trigger's message and bemi's own agree on the context.
INSERT INTO trig_items VALUES (1, 'one') /*Bemi {"user_id": 5, "endpoint": "/items"} Bemi*/;
-- A message alone (as the trigger emits it) sets the context of the changes after it.
BEGIN;
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi', '{"user_id": 6}');
UPDATE trig_items SET name = 'uno' WHERE id = 1;
COMMIT;
-- A message that is not a JSON object does not stop capture: a note says why it was not kept.
BEGIN;
SELECT 'msg' FROM pg_logical_emit_message(true, '_bemi', 'not json');
DELETE FROM trig_items WHERE id = 1;
COMMIT;
SELECT bemi_wait();
SELECT operation, context - '_bemi' AS context FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'trig_items' ORDER BY id;
