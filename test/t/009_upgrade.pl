# In-place upgrades with the new library: a database still on 0.1.0's SQL keeps capturing
# (without table_oid, and says what to run), ALTER EXTENSION bemi UPDATE keeps the trail as
# written (0.1.0 -> 0.2.0 -> 0.3.0 -> 0.4.0 -> 0.5.0), capture goes on exactly once, the history functions read old
# and new changes, and the upgraded schemas (from 0.1.0, and from a database created on 0.2.0)
# are a fresh install's, bound to nothing outside pg_catalog and bemi's.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('upgrade', conf => q{
log_statement = none
});

# Ground truth, kept here as the test writes: one "pk|operation|context" line per change of orders.
my @truth;

# 1. A database on 0.1.0, as users installed it. A role that may create in public plants
# look-alikes of what the upgrade script calls, hoping the superuser running it calls one.
$node->safe_psql('postgres', q{
	CREATE ROLE planter LOGIN;
	CREATE ROLE clerk LOGIN;
	CREATE DATABASE shop OWNER planter;
});
$node->safe_psql('shop', q{
	CREATE EXTENSION bemi VERSION '0.1.0';
	CREATE TABLE orders (id int PRIMARY KEY, amount int);
	CREATE TABLE gone (id int PRIMARY KEY);
	GRANT SELECT ON orders TO clerk;
	BEGIN;
	SELECT bemi_set_context('{"request": "r1"}');
	INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 5) g;
	COMMIT;
	BEGIN;
	SELECT bemi_set_context('{"request": "r2"}');
	UPDATE orders SET amount = 0 WHERE id <= 2;
	DELETE FROM orders WHERE id = 5;
	INSERT INTO gone VALUES (1);
	COMMIT;
});
push @truth, map { "$_|CREATE|{\"request\": \"r1\"}" } 1 .. 5;
push @truth, "1|UPDATE|{\"request\": \"r2\"}", "2|UPDATE|{\"request\": \"r2\"}", "5|DELETE|{\"request\": \"r2\"}";
is($node->safe_psql('shop', q{SELECT extversion FROM pg_extension WHERE extname = 'bemi'}), '0.1.0',
	'installed as 0.1.0');

# 2. The new library on the old SQL: capture runs, without table_oid, and the log says what to run.
wait_bemi($node, 'shop');
my $trail_sql = q{SELECT string_agg(concat_ws('|', primary_key, operation, (context - '_bemi')::text), E'\n' ORDER BY id)
                    FROM bemi.changes WHERE "table" = 'orders'};
is($node->safe_psql('shop', $trail_sql), join("\n", @truth), 'captured on 0.1.0 SQL: every change once, with its context');
ok($node->log_contains(qr/SQL of extension bemi in database "shop" is older than its library.*\n.*\n.*ALTER EXTENSION bemi UPDATE/),
	'the log names the command to run');
is($node->safe_psql('shop', 'SELECT worker_state, last_error IS NULL FROM bemi_status()'), 'running|t',
	'the worker runs, no error');
# The DDL guard of the new library records a gap on the old bemi.gaps, with the facts in the reason.
$node->safe_psql('shop', 'CREATE TABLE scratch (id int PRIMARY KEY); ALTER TABLE scratch SET UNLOGGED');
like($node->safe_psql('shop', q{SELECT reason FROM bemi.gaps ORDER BY id DESC LIMIT 1}),
	qr/table public\.scratch.*statement: ALTER TABLE scratch SET UNLOGGED/, 'the DDL guard writes a gap 0.1.0 can hold');
$node->safe_psql('shop', 'DROP TABLE scratch; DROP TABLE gone');

# Everything as written before the update, column by column.
my $all_sql = q{SELECT string_agg(concat_ws('|', id, primary_key, "before", "after", context, database, schema,
                    "table", operation, committed_at, transaction_id, position, created_at), E'\n' ORDER BY id)
                  FROM bemi.changes};
my $before = $node->safe_psql('shop', $all_sql);
my $gaps_before = $node->safe_psql('shop', q{SELECT string_agg(concat_ws('|', id, from_lsn, to_lsn, reason), ',') FROM bemi.gaps});

# 3. The planted look-alikes, then the update. (The superuser makes their log table: under 0.1.0
# an ordinary role's CREATE TABLE fails in bemi's event trigger, one of the bugs 0.2.0 fixes.)
$node->safe_psql('shop', q{
	CREATE TABLE public.pwned (who text, what text);
	GRANT ALL ON public.pwned TO PUBLIC;
	SET ROLE planter;
	CREATE FUNCTION public.pwn(what text) RETURNS void LANGUAGE sql AS $$ INSERT INTO public.pwned VALUES (current_user, what) $$;
	CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz
	    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('clock_timestamp'); RETURN pg_catalog.now(); END$$;
	CREATE FUNCTION public.format(text, regclass) RETURNS text
	    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('format'); RETURN ''; END$$;
	CREATE FUNCTION public.pwn_eq(name, text) RETURNS boolean
	    LANGUAGE plpgsql AS $$BEGIN PERFORM public.pwn('= (name, text)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END$$;
	CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.pwn_eq);
});
$node->safe_psql('shop', q{ALTER EXTENSION bemi UPDATE TO '0.2.0'});
is($node->safe_psql('shop', q{SELECT extversion FROM pg_extension WHERE extname = 'bemi'}), '0.2.0', 'updated to 0.2.0');
is($node->safe_psql('shop', 'SELECT count(*) FROM public.pwned'), '0', 'no look-alike ran during the update');

# 4. The trail is intact; old changes of tables that exist got their table's OID, the others none.
is($node->safe_psql('shop', $all_sql), $before, 'every change as it was, column by column');
is($node->safe_psql('shop', q{SELECT string_agg(concat_ws('|', id, from_lsn, to_lsn, reason), ',') FROM bemi.gaps}),
	$gaps_before, 'the gaps as they were');
is($node->safe_psql('shop', q{
	SELECT count(*) FILTER (WHERE "table" = 'orders' AND table_oid = 'orders'::regclass),
	       count(*) FILTER (WHERE "table" = 'gone' AND table_oid IS NULL), count(*) FROM bemi.changes}),
	'8|1|9', 'old changes of orders carry its OID; those of a dropped table go by name');

# 5. Capture goes on, exactly once, now with table_oid.
$node->safe_psql('shop', q{
	BEGIN;
	SELECT bemi_set_context('{"request": "r3"}');
	UPDATE orders SET amount = 99 WHERE id = 1;
	INSERT INTO orders VALUES (6, 60);
	COMMIT;
});
push @truth, "1|UPDATE|{\"request\": \"r3\"}", "6|CREATE|{\"request\": \"r3\"}";
wait_bemi($node, 'shop');
is($node->safe_psql('shop', $trail_sql), join("\n", @truth), 'after the update: every change once, with its context');
is($node->safe_psql('shop', q{SELECT count(*) FROM bemi.changes WHERE id > 9 AND table_oid = 'orders'::regclass}), '2',
	'new changes carry the table OID');

# 6. History on old and new changes, as an ordinary role allowed to read orders and not more.
is($node->safe_psql('shop', q{SET ROLE clerk;
	SELECT string_agg(operation || ':' || (context->>'request'), ',') FROM bemi_row_history('orders', 1)}),
	'UPDATE:r3,UPDATE:r2,CREATE:r1', 'row history spans the update');
# Old changes are bound to their table by the OID the update filled in: a new table that takes
# the old name (its owner may read it) shows none of them.
$node->safe_psql('shop', 'ALTER TABLE orders RENAME TO orders_renamed');
$node->safe_psql('shop', 'SET ROLE planter; CREATE TABLE public.orders (id int PRIMARY KEY)');
is($node->safe_psql('shop', q{SET ROLE planter;
	SELECT count(*) FROM bemi_row_history('orders', 1) UNION ALL SELECT count(*) FROM bemi_table_history('orders')}),
	"0\n0", 'a new table under the old name reads none of the old changes');
is($node->safe_psql('shop', q{SET ROLE clerk;
	SELECT count(*) FROM bemi_context_history('{"request": "r2"}')}), '3',
	'context history: the changes of orders, not the dropped table\'s');
my ($ret, $out, $err) = $node->psql('shop', q{SET ROLE planter; SELECT * FROM bemi_row_history('orders_renamed', 1)});
like($err, qr/permission denied|may not read|cannot read/i, 'a role without SELECT on the table reads nothing');

# 7. On to 0.3.0 (the look-alikes still planted): the test-only bemi._boundary_test is gone, the
# history functions read through their new definitions, time travel matches rows by the plugin's
# own key rule. A database created on 0.2.0 takes the same step.
$node->safe_psql('shop', q{ALTER EXTENSION bemi UPDATE TO '0.3.0'});
is($node->safe_psql('shop', q{SELECT extversion FROM pg_extension WHERE extname = 'bemi'}), '0.3.0', 'updated to 0.3.0');
# (History is found by the name a change was recorded under: orders gets its name back.)
$node->safe_psql('shop', 'DROP TABLE public.orders; ALTER TABLE orders_renamed RENAME TO orders');
is($node->safe_psql('shop', 'SELECT count(*) FROM public.pwned'), '0', 'no look-alike ran during the update to 0.3.0');
is($node->safe_psql('shop', q{SELECT to_regprocedure('bemi._boundary_test(text)') IS NULL}), 't',
	'the boundary test function is no longer installed');
is($node->safe_psql('shop', q{SET ROLE clerk;
	SELECT string_agg(operation || ':' || (context->>'request'), ',') FROM bemi_row_history('orders', 1)}),
	'UPDATE:r3,UPDATE:r2,CREATE:r1', 'row history after the update to 0.3.0');
is($node->safe_psql('shop', q{SET ROLE clerk;
	SELECT string_agg(id || ':' || amount, ',' ORDER BY id)
	  FROM bemi_as_of(NULL::orders, (SELECT min(committed_at) - interval '1 microsecond'
	                                   FROM bemi_context_history('{"request": "r2"}')))}),
	'1:10,2:20,3:30,4:40,5:50', 'time travel after the update to 0.3.0: the table before r2');
$node->safe_psql('postgres', 'CREATE DATABASE direct');
$node->safe_psql('direct', q{CREATE EXTENSION bemi VERSION '0.2.0'});
$node->safe_psql('direct', q{ALTER EXTENSION bemi UPDATE TO '0.3.0'});
is($node->safe_psql('direct', q{SELECT extversion FROM pg_extension WHERE extname = 'bemi'}), '0.3.0',
	'a database created on 0.2.0 updated to 0.3.0');

# 7b. On to 0.4.0 (the look-alikes still planted): tracking rules. The trail is kept, bemi.rules
# starts empty, and a rule made after the update is in force from then on, also in the trail.
my $trail_before_rules = $node->safe_psql('shop', $all_sql);
for my $db ('shop', 'direct') {
	$node->safe_psql($db, q{ALTER EXTENSION bemi UPDATE TO '0.4.0'});
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'bemi'}), '0.4.0',
		"$db updated to 0.4.0");
}
is($node->safe_psql('shop', 'SELECT count(*) FROM public.pwned'), '0', 'no look-alike ran during the update to 0.4.0');
like($node->safe_psql('shop', $all_sql), qr/^\Q$trail_before_rules\E/, 'the trail is kept by the update to 0.4.0');
is($node->safe_psql('shop', 'SELECT count(*) FROM bemi.rules'), '0', 'no rule after the update');
my $last_id = $node->safe_psql('shop', 'SELECT max(id) FROM bemi.changes');
$node->safe_psql('shop', q{
	ALTER TABLE orders REPLICA IDENTITY FULL;
	SELECT bemi_ignore('public.orders', '{amount}');
	UPDATE orders SET amount = amount + 1 WHERE id = 1;
	UPDATE orders SET id = 10 WHERE id = 2;
});
wait_bemi($node, 'shop');
is($node->safe_psql('shop', qq{SELECT string_agg(schema || '.' || "table" || ':' || operation, ',' ORDER BY id)
                                FROM bemi.changes WHERE id > $last_id}),
	'bemi.rules:CREATE,public.orders:UPDATE',
	'after the update, the rule is recorded and applies: an UPDATE of amount only is not recorded');
$node->safe_psql('shop', 'DELETE FROM bemi.rules; UPDATE orders SET id = 2 WHERE id = 10');

# 7c. On to 0.5.0 (the look-alikes still planted): the trail is protected (issue 15; bemi.so), the
# trail is kept, and the protection holds in the upgraded database.
my $trail_before_protect = $node->safe_psql('shop', $all_sql);
for my $db ('shop', 'direct') {
	$node->safe_psql($db, 'ALTER EXTENSION bemi UPDATE');
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'bemi'}), '0.5.0',
		"$db updated to 0.5.0");
}
is($node->safe_psql('shop', 'SELECT count(*) FROM public.pwned'), '0', 'no look-alike ran during the update to 0.5.0');
like($node->safe_psql('shop', $all_sql), qr/^\Q$trail_before_protect\E/, 'the trail is kept by the update to 0.5.0');
my ($rc, $out, $err) = $node->psql('shop', 'DELETE FROM bemi.changes');
like($err, qr/refused: it is bemi's audit trail/, 'after the update to 0.5.0, the trail cannot be edited');
# Contexts are kept once per transaction from 0.5.0 (bemi.contexts): the update copied the old
# ones there, so context history still finds changes recorded before it, as it did before.
is($node->safe_psql('shop', q{SET ROLE clerk;
	SELECT count(*) FROM bemi_context_history('{"request": "r2"}')}), '3',
	'after the update to 0.5.0, context history finds the changes recorded before it');
is($node->safe_psql('shop', q{SELECT count(*) FROM bemi.contexts WHERE context @> '{"request": "r2"}'}), '1',
	'the update copied each transaction\'s context once');

# 8. The upgraded schemas are a fresh install's: every member of the extension with its definition,
# ACL and comment; the tables' columns, defaults, constraints, indexes; every dependency.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION bemi');
my $schema_sql = q{
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'bemi'),
members AS (
	SELECT d.classid, d.objid FROM pg_depend d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e')
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
	SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0)
	       || ' comment=' || coalesce(obj_description(m.objid, (SELECT relname FROM pg_class WHERE oid = m.classid)), '-')
	  FROM members m
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure || ' acl=' || coalesce(p.proacl::text, '-') || E'\n' || pg_get_functiondef(p.oid)
	  FROM members m JOIN pg_proc p ON p.oid = m.objid WHERE m.classid = 'pg_proc'::regclass
	UNION ALL
	SELECT 'relation ' || c.oid::regclass || ' kind=' || c.relkind::text || ' acl=' || coalesce(c.relacl::text, '-')
	       || ' column ' || a.attnum || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	       || ' notnull=' || a.attnotnull || ' identity=' || a.attidentity::text || ' collation=' || coalesce(co.collname, '-')
	       || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
	       || ' comment=' || coalesce(col_description(c.oid, a.attnum), '-')
	  FROM members m JOIN pg_class c ON c.oid = m.objid AND m.classid = 'pg_class'::regclass
	  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	UNION ALL
	SELECT 'constraint ' || co.conrelid::regclass || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
	  FROM members m JOIN pg_constraint co ON co.conrelid = m.objid AND m.classid = 'pg_class'::regclass
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid)
	  FROM members m JOIN pg_index i ON i.indrelid = m.objid AND m.classid = 'pg_class'::regclass
	UNION ALL
	SELECT 'dependency ' || pg_describe_object(d.classid, d.objid, 0) || ' -> '
	       || pg_describe_object(d.refclassid, d.refobjid, 0) || ' ' || d.deptype::text
	  FROM members m JOIN pg_depend d ON d.classid = m.classid AND d.objid = m.objid
	 WHERE d.deptype <> 'e'
	UNION ALL
	SELECT 'config ' || c::regclass || ' ' || coalesce(x.extcondition[i], '')
	  FROM pg_extension x, unnest(x.extconfig) WITH ORDINALITY u(c, i) WHERE x.extname = 'bemi'
	UNION ALL
	SELECT 'event trigger ' || evtname || ' ' || evtevent || ' ' || evtfoid::regprocedure || ' ' || evttags::text
	  FROM pg_event_trigger
	UNION ALL
	SELECT 'schema bemi acl=' || nspacl::text FROM pg_namespace WHERE nspname = 'bemi'
) lines(line)
};
my $fresh = $node->safe_psql('fresh', $schema_sql);
ok(length($fresh) > 10000, 'the schema description is not empty');
for my $db ('shop', 'direct') {
	my $upgraded = $node->safe_psql($db, $schema_sql);
	is($upgraded, $fresh, "the upgraded schema ($db) is a fresh 0.5.0 install's");
	if ($upgraded ne $fresh) {
		my %f = map { $_ => 1 } split /\n/, $fresh;
		my %u = map { $_ => 1 } split /\n/, $upgraded;
		diag("only upgraded: $_") for grep { !$f{$_} } split /\n/, $upgraded;
		diag("only fresh: $_") for grep { !$u{$_} } split /\n/, $fresh;
	}
}

# 9. The upgraded database is bound to nothing outside pg_catalog and bemi's own (security_names).
is($node->safe_psql('shop', q{
	SELECT string_agg(pg_describe_object(d.classid, d.objid, 0) || ' -> ' || pg_describe_object(d.refclassid, d.refobjid, 0), ', ')
	  FROM pg_depend d
	  JOIN pg_depend e ON e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e'
	                  AND e.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bemi')
	 WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass)
	   AND NOT EXISTS (SELECT FROM pg_depend m WHERE m.classid = d.refclassid AND m.objid = d.refobjid
	                      AND m.deptype = 'e' AND m.refobjid = e.refobjid)
	   AND coalesce((SELECT pronamespace FROM pg_proc WHERE d.refclassid = 'pg_proc'::regclass AND oid = d.refobjid),
	                (SELECT oprnamespace FROM pg_operator WHERE d.refclassid = 'pg_operator'::regclass AND oid = d.refobjid),
	                (SELECT typnamespace FROM pg_type WHERE d.refclassid = 'pg_type'::regclass AND oid = d.refobjid))
	       NOT IN ('pg_catalog'::regnamespace, 'bemi'::regnamespace)}), '',
	'nothing of bemi\'s is bound to an object outside pg_catalog and bemi');
is($node->safe_psql('shop', 'SELECT count(*) FROM public.pwned'), '0', 'no look-alike ever ran');

$node->stop;
done_testing();
