# Readers of the trail while the worker writes it. The worker decodes in its own process, and
# PostgreSQL leaves a process that decodes out of everybody's snapshots (its transactions "manage
# xmin separately"): a reader that met the worker's rows before they committed took them for
# aborted and marked them so for good. A committed batch then lost its rows, and bemi.progress
# kept its old row. Found as 87 changes missing from test/t/003's backlog.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('readers');
$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE TABLE t (id int PRIMARY KEY);
	-- Holds the worker's batch open after its rows and its progress are written, while the test
	-- holds advisory lock 4242.
	CREATE FUNCTION hold_batch() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	  PERFORM pg_catalog.pg_advisory_xact_lock_shared(4242);
	  RETURN NULL;
	END $$;
	CREATE TRIGGER hold_batch AFTER UPDATE ON bemi.progress FOR EACH STATEMENT EXECUTE FUNCTION hold_batch();
});
wait_bemi($node);

for my $round (1 .. 2) {
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('SELECT pg_advisory_lock(4242)');
	$node->safe_psql('postgres', "INSERT INTO t VALUES ($round)");
	my $lsn = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
	ok($node->poll_query_until('postgres', q{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE backend_type IN ('bemi worker', 'bemi writer') AND wait_event = 'advisory'}),
		"round $round: the batch is written and held open");
	# A transaction that starts and ends meanwhile: readers' snapshots now end after the worker's.
	$node->safe_psql('postgres', 'SELECT pg_current_xact_id()');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE "table" = 't' AND operation <> 'DDL'}), $round - 1,
		"round $round: the open batch's row is not seen yet");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM bemi.progress'), '1',
		"round $round: one progress row while the batch is open");
	$holder->query_safe('SELECT pg_advisory_unlock(4242)');
	$holder->quit;
	wait_bemi($node);
	is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE "table" = 't' AND operation <> 'DDL'}), $round,
		"round $round: the row is there once the batch commits");
	is($node->safe_psql('postgres', "SELECT count(*), bool_and(txn_end_lsn >= '$lsn') FROM bemi.progress"), '1|t',
		"round $round: bemi.progress holds one row, past the change");
	# The second round with whole batches written by the worker alone.
	$node->safe_psql('postgres', 'ALTER SYSTEM SET bemi.writers = 0') if $round == 1;
	$node->restart if $round == 1;
}

# Now in everybody's snapshots, the worker must not hold back vacuum while it only decodes: an
# idle worker has no snapshot of its own.
$node->safe_psql('postgres', 'INSERT INTO t SELECT g FROM generate_series(10, 1000) g');
wait_bemi($node);
ok($node->poll_query_until('postgres', q{
	SELECT bool_and(backend_xmin IS NULL AND backend_xid IS NULL) FROM pg_stat_activity
	 WHERE backend_type IN ('bemi worker', 'bemi writer')}), 'an idle worker holds no xmin');

$node->stop;
done_testing();
