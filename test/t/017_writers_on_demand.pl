# Writer processes (bemi.writers) start with a backlog and leave once idle: a database that only
# sees a steady trickle holds no worker slot but its worker's. Across their comings and goings the
# trail stays whole: every change once, the hash chain unbroken (the head passes from the worker
# to the writers and back).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('writers', conf => "bemi.writers = 2\nbemi.batch_size = 500\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE TABLE t (id int PRIMARY KEY, v int);
	INSERT INTO t VALUES (0, 0);
});
wait_bemi($node);
my $writers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bemi writer'};
is($node->safe_psql('postgres', $writers), '0', 'no writer while the worker keeps up by itself');

my $next = 1;
for my $round (1 .. 2) {
	# A backlog, held back until the writers have started for it.
	my $hold = $node->background_psql('postgres');
	$hold->query_safe('BEGIN');
	$hold->query_safe('LOCK TABLE bemi.changes IN EXCLUSIVE MODE');
	my $to = $next + 4999;
	$node->safe_psql('postgres', "INSERT INTO t SELECT g, 0 FROM generate_series($next, $to) g");
	$node->safe_psql('postgres', "UPDATE t SET v = 1 WHERE id BETWEEN $next AND $to AND id % 2 = 0");
	$next = $to + 1;
	ok($node->poll_query_until('postgres', "SELECT ($writers) = 2"), "round $round: a backlog starts two writers");
	$hold->query_safe('ROLLBACK');
	$hold->quit;
	wait_bemi($node);
	# A trickle meanwhile: small batches, which the worker writes itself in the writers' order.
	$node->safe_psql('postgres', "UPDATE t SET v = v + 1 WHERE id = 0") for 1 .. 3;
	ok($node->poll_query_until('postgres', "SELECT ($writers) = 0"), "round $round: idle, the writers leave");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bemi worker'}),
		'1', "round $round: the worker stays");
	# The worker alone again, on the chain the writers left.
	$node->safe_psql('postgres', "UPDATE t SET v = v + 1 WHERE id = 0");
	wait_bemi($node);
}

my $rows = $next - 1;
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE operation = 'CREATE'), count(DISTINCT primary_key) FILTER (WHERE operation = 'CREATE'),
	       count(*) FILTER (WHERE operation = 'UPDATE')
	  FROM bemi.changes WHERE "table" = 't'}), join('|', $rows + 1, $rows + 1, $rows / 2 + 8),
	'every change recorded once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bemi_verify()'), '0', 'the hash chain is whole');
unlike(slurp_file($node->logfile), qr/exited with exit code 1|bemi: a writer/, 'the writers left quietly');

$node->stop;

# No free slot for writers (max_worker_processes: the logical replication launcher, bemi's launcher
# and worker): a backlog of many full batches is written by the worker itself, with one warning,
# not one per batch (the next start waits a minute).
my $tight = bemi_node('tight', conf => "bemi.writers = 2\nbemi.batch_size = 500\nmax_worker_processes = 3\n");
$tight->safe_psql('postgres', 'CREATE EXTENSION bemi; CREATE TABLE t (id int PRIMARY KEY)');
wait_bemi($tight);
$tight->safe_psql('postgres', 'INSERT INTO t SELECT g FROM generate_series(1, 10000) g');
wait_bemi($tight);
is($tight->safe_psql('postgres', q{SELECT count(*), count(DISTINCT primary_key) FROM bemi.changes WHERE "table" = 't' AND operation = 'CREATE'}),
	'10000|10000', 'no writer could start: the worker wrote the backlog itself');
my @warned = slurp_file($tight->logfile) =~ /could start only 0 of 2 writer processes/g;
is(scalar @warned, 1, 'one warning for the backlog\'s twenty full batches');
is($tight->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bemi writer'}), '0',
	'and no writer');
$tight->stop;
done_testing();
