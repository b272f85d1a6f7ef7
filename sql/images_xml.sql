-- An xml column's image is to_jsonb's: the document's text (an XML declaration is not kept, by
-- either). On its own because some builds of PostgreSQL (the PyPI wheels' 16 and 18) have no
-- libxml and refuse any xml value; test/run-all runs this file only where the server has it.
CREATE TABLE image_xml (id int PRIMARY KEY, x xml);
INSERT INTO image_xml VALUES (1, '<a>x</a>'), (2, '<?xml version="1.0"?><b lang="é">y &amp; z</b>');
SELECT bemi_wait();
SELECT c.operation, c.after, c.after = to_jsonb(r) AS after_is_to_jsonb
  FROM bemi.changes c JOIN image_xml r ON r.id = (c.after->>'id')::int
 WHERE c."table" = 'image_xml' ORDER BY c.id;
UPDATE image_xml SET x = '<a>changed</a>' WHERE id = 1;
SELECT bemi_wait();
SELECT c.operation, c.before, c.after, c.after = to_jsonb(r) AS after_is_to_jsonb
  FROM bemi.changes c JOIN image_xml r ON r.id = (c.after->>'id')::int
 WHERE c."table" = 'image_xml' AND c.operation = 'UPDATE';
DROP TABLE image_xml;
