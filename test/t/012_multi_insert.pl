# The worker's batch insert (src/worker/multi_insert.cpp): one batch whose changes go to two
# partitions of bemi.changes, one of them made after the worker started (routing finds it and the
# default partition), ids drawn in the changes' order; and a trigger on bemi.changes, which the
# worker honours by writing through its SPI INSERT instead, and one on a partition only.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

# One process writing (bemi.writers = 0): section 1 holds the worker on a batch so that the next
# one gathers a and b, and the log lines counted below are one writer's. The writers' order of ids
# is tested in 003_faults.pl.
my $node = bemi_node('multi_insert', conf => "bemi.writers = 0\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE TABLE t (id int PRIMARY KEY, phase text);
	INSERT INTO t VALUES (0, 'warm-up');
});
wait_bemi($node, 'postgres', 60);

# 1. Hold the worker on a first batch (x), commit a (before moment m) and b (after it), make the
# partition [m, m + 1 day) while the worker still waits: its next batch holds a and b together.
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
$holder->query_safe('LOCK TABLE bemi.changes IN EXCLUSIVE MODE');
$node->safe_psql('postgres', q{INSERT INTO t VALUES (1, 'x')});
ok($node->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM pg_locks l JOIN bemi_status() s ON l.pid = s.worker_pid WHERE NOT l.granted}),
	'the worker waits to write its batch');
$node->safe_psql('postgres', q{INSERT INTO t SELECT g, 'a' FROM generate_series(101, 150) g});
my $m = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
$node->safe_psql('postgres', q{INSERT INTO t SELECT g, 'b' FROM generate_series(201, 250) g});
$holder->query_safe(qq{SELECT bemi._make_partition('$m', '$m'::timestamptz + interval '1 day')});
$holder->query_safe('COMMIT');
$holder->quit;
wait_bemi($node, 'postgres', 60);

is($node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT primary_key), count(DISTINCT xmin::text)
	  FROM bemi.changes WHERE "table" = 't' AND after->>'phase' IN ('a', 'b')}),
	'100|100|1', 'a and b are recorded once each, by one worker transaction');
is($node->safe_psql('postgres', q{
	SELECT after->>'phase', tableoid = 'bemi.changes_default'::regclass, count(*)
	  FROM bemi.changes WHERE "table" = 't' AND after->>'phase' IN ('a', 'b') GROUP BY 1, 2 ORDER BY 1}),
	"a|t|50\nb|f|50", 'a went to the default partition, b to the partition made meanwhile');
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE c.committed_at < p.from_time OR c.committed_at >= p.to_time)
	  FROM bemi.changes c JOIN bemi_partitions() p ON p.partition_name::regclass = c.tableoid
	 WHERE c."table" = 't' AND p.from_time IS NOT NULL}),
	'0', 'each change in a partition is within its range');
is($node->safe_psql('postgres', q{
	SELECT max(id) - min(id) + 1, bool_and(id > prev)
	  FROM (SELECT id, lag(id) OVER (ORDER BY position) AS prev FROM bemi.changes
	         WHERE "table" = 't' AND after->>'phase' IN ('a', 'b')) s}),
	'100|t', 'ids follow the changes\' order, none skipped');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM bemi.changes
	 WHERE "table" = 't' AND after->>'phase' IN ('a', 'b')
	   AND database = current_database() AND schema = 'public' AND operation = 'CREATE'
	   AND primary_key = after->>'id' AND "before" = '{}' AND context - '_bemi' = '{}'
	   AND table_oid = 't'::regclass AND transaction_id > 0 AND position > '0/0'
	   AND created_at >= committed_at}),
	'100', 'every column holds what the INSERT wrote');

unlike(slurp_file($node->logfile), qr/written through INSERT statements/, 'the batches went by table_multi_insert');

# 2. A row trigger on bemi.changes (cloned to every partition): the batch goes through the SPI
# INSERT, so the trigger sees every change.
$node->safe_psql('postgres', q{
	CREATE TABLE seen (change_id bigint);
	CREATE FUNCTION see() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN INSERT INTO public.seen VALUES (NEW.id); RETURN NEW; END $$;
	CREATE TRIGGER see AFTER INSERT ON bemi.changes FOR EACH ROW EXECUTE FUNCTION see();
	INSERT INTO t SELECT g, 'c' FROM generate_series(301, 320) g;
});
wait_bemi($node, 'postgres', 60);
is($node->safe_psql('postgres', q{
	SELECT count(*), count(s.change_id) FROM bemi.changes c LEFT JOIN seen s ON s.change_id = c.id
	 WHERE c."table" = 't' AND c.after->>'phase' = 'c'}),
	'20|20', 'with a trigger on bemi.changes, it fires for every change');
like(slurp_file($node->logfile), qr/bemi: batches of changes are written through INSERT statements/,
	'the log says the batches go through INSERT');
$node->safe_psql('postgres', q{
	DROP TRIGGER see ON bemi.changes;
	INSERT INTO t SELECT g, 'd' FROM generate_series(401, 420) g;
});
wait_bemi($node, 'postgres', 60);
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE "table" = 't' AND after->>'phase' = 'd'}),
	'20', 'and without it, batches are written as before');
like(slurp_file($node->logfile), qr/written with table_multi_insert again/, 'by table_multi_insert again');

# 3. A trigger on the partition the changes go to only: found when routing, the same fallback.
my $partition = $node->safe_psql('postgres', 'SELECT partition_name FROM bemi_partitions() WHERE from_time IS NOT NULL');
$node->safe_psql('postgres', qq{
	CREATE TRIGGER see AFTER INSERT ON $partition FOR EACH ROW EXECUTE FUNCTION see();
	INSERT INTO t SELECT g, 'e' FROM generate_series(501, 520) g;
});
wait_bemi($node, 'postgres', 60);
is($node->safe_psql('postgres', q{
	SELECT count(*), count(s.change_id) FROM bemi.changes c LEFT JOIN seen s ON s.change_id = c.id
	 WHERE c."table" = 't' AND c.after->>'phase' = 'e'}),
	'20|20', 'with a trigger on a partition, it fires for every change routed there');
my @fallbacks = slurp_file($node->logfile) =~ /written through INSERT statements/g;
is(scalar @fallbacks, 2, 'the log says so again');
is($node->safe_psql('postgres', 'SELECT last_error FROM bemi_status()'), '', 'the worker reported no error');
$node->stop;
done_testing();
