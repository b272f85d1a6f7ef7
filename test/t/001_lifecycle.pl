# The worker's life: it starts by itself after CREATE EXTENSION (with no gap), after a restart
# and after a crash; DROP EXTENSION stops it and drops its slot; databases are independent.
# Every check compares bemi.changes with an independent ground truth: the rows of the tables.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('lifecycle', conf => q{
max_replication_slots = 10
restart_after_crash = on
log_statement = none
});

# Every committed row of $table is in bemi.changes exactly once as a CREATE.
sub check_trail {
	my ($db, $table, $label) = @_;
	wait_bemi($node, $db, 120);
	my $rows = $node->safe_psql($db, qq{SELECT count(*) FROM $table});
	my $result = $node->safe_psql($db, qq{
		SELECT count(*), count(DISTINCT c.primary_key),
		       count(*) FILTER (WHERE c.after <> to_jsonb(t))
		  FROM bemi.changes c LEFT JOIN $table t ON t.id::text = c.primary_key
		 WHERE c."table" = '$table' AND c.operation = 'CREATE'});
	is($result, "$rows|$rows|0", "$label: all $rows rows of $table recorded exactly once");
	return $rows;
}

# 1. No start-up gap: writes right after CREATE EXTENSION, in the same session, are captured.
$node->safe_psql('postgres', 'CREATE DATABASE gap');
for my $i (1 .. 10) {
	$node->safe_psql('gap', qq{
		SET bemi.allow_drop = on;
		DROP EXTENSION IF EXISTS bemi;
		CREATE EXTENSION bemi;
		CREATE TABLE gap_$i (id int PRIMARY KEY, v text);
		INSERT INTO gap_$i VALUES (1, 'right after'), (2, 'create extension');
	});
	wait_bemi($node, 'gap', 120);
	is($node->safe_psql('gap', qq{SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'gap_$i'}),
		'2', "iteration $i: writes right after CREATE EXTENSION are captured");
}
# A writer in another session, started while CREATE EXTENSION runs, loses nothing either.
$node->safe_psql('gap', 'SET bemi.allow_drop = on; DROP EXTENSION bemi; CREATE TABLE gap_writer (id serial PRIMARY KEY, v int)');
my $writer = $node->background_psql('gap');
$node->safe_psql('gap', 'CREATE EXTENSION bemi');
$writer->query_safe('INSERT INTO gap_writer (v) SELECT 1');
$writer->quit;
check_trail('gap', 'gap_writer', 'concurrent writer after CREATE EXTENSION');

# 2. Two databases are tracked independently, each with its own worker and slot.
$node->safe_psql('postgres', 'CREATE DATABASE app1');
$node->safe_psql('postgres', 'CREATE DATABASE app2');
for my $db ('app1', 'app2') {
	$node->safe_psql($db, q{
		CREATE EXTENSION bemi;
		CREATE TABLE items (id serial PRIMARY KEY, db text DEFAULT current_database(), n int);
	});
}
$node->safe_psql('app1', 'INSERT INTO items (n) SELECT generate_series(1, 100)');
$node->safe_psql('app2', 'INSERT INTO items (n) SELECT generate_series(1, 7)');
check_trail('app1', 'items', 'app1');
check_trail('app2', 'items', 'app2');
is($node->safe_psql('app2', q{SELECT count(*) FROM bemi.changes WHERE after->>'db' <> 'app2'}), '0',
	'app2 records only its own changes');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_replication_slots WHERE plugin = 'bemi' AND active}),
	'3', 'one active bemi slot per database with the extension');

# 3. A clean restart: the worker comes back by itself and resumes without loss or doubling.
$node->safe_psql('app1', 'INSERT INTO items (n) SELECT generate_series(1, 50)');
$node->restart;
$node->safe_psql('app1', 'INSERT INTO items (n) SELECT generate_series(1, 50)');
check_trail('app1', 'items', 'after clean restart');
$node->safe_psql('app2', 'INSERT INTO items (n) VALUES (1)');
check_trail('app2', 'items', 'app2 after clean restart');

# 4. Crashes under load: kill -9 of the worker (the postmaster then restarts every process) and
# immediate shutdowns, while clients write with context. The table is the ground truth.
$node->safe_psql('app1', q{
	CREATE TABLE load (id bigserial PRIMARY KEY, client int, payload text);
	ALTER SYSTEM SET bemi.batch_size = 50;
	SELECT pg_reload_conf();
});
my $script = $node->basedir . '/load.sql';
PostgreSQL::Test::Utils::append_to_file($script, q{
BEGIN;
SELECT bemi_set_context(json_build_object('client', :client_id, 'tx', random())::jsonb);
INSERT INTO load (client, payload) SELECT :client_id, md5(random()::text) FROM generate_series(1, 5);
COMMIT;
});
# After a crash the server refuses connections for a moment, and psql may exit before reading its
# input: poll_query_until then dies with "Broken pipe" instead of polling again.
sub wait_for_server {
	for my $try (1 .. 10) {
		my $up = eval { $node->poll_query_until('app1', 'SELECT true') };
		return 1 if $up;
		sleep 1;
	}
	return 0;
}

for my $round (1 .. 4) {
	my ($out, $err) = ('', '');
	my $bench = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '4', '-T', '4', '-f', $script, '-h', $node->host, '-p', $node->port, 'app1' ],
		'>', \$out, '2>', \$err);
	sleep 2;
	if ($round % 2) {
		my $pid = $node->safe_psql('app1', 'SELECT worker_pid FROM bemi_status()');
		ok($pid > 0, "round $round: worker running as $pid");
		kill 'KILL', $pid;
	} else {
		$node->stop('immediate');
		$node->start;
	}
	$bench->finish;
	wait_for_server() or die 'server did not come back';
	my $rows = check_trail('app1', 'load', "round $round");
	ok($rows > 0, "round $round: the load wrote rows");
}
is($node->safe_psql('app1', q{
	SELECT count(*) FROM bemi.changes c JOIN load l ON l.id::text = c.primary_key
	 WHERE c."table" = 'load' AND (c.context->>'client')::int <> l.client}),
	'0', 'every change carries the context of the transaction that made it');

# 5. DROP EXTENSION stops the worker and drops its slot, so no WAL is retained for nobody.
$node->safe_psql('app2', 'SET bemi.allow_drop = on; DROP EXTENSION bemi');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_replication_slots WHERE database = 'app2'}),
	'0', 'DROP EXTENSION dropped the slot');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'bemi worker' AND datname = 'app2'}),
	'DROP EXTENSION stopped the worker');
# Creating it again starts from scratch.
$node->safe_psql('app2', 'CREATE EXTENSION bemi; INSERT INTO items (n) VALUES (2)');
wait_bemi($node, 'app2', 120);
is($node->safe_psql('app2', q{SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL'}), '1', 'a new install records only new changes');

$node->stop;
done_testing();
