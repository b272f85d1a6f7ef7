# DROP EXTENSION while the worker writes a batch. The drop locks the trail's objects in its own
# order (the id sequence before bemi.changes); a batch that held bemi.changes and then wanted
# the sequence made one of the two fail with "deadlock detected" (met by CI in sql/misconfig).
# The drop now asks the worker to hold still, between batches, until its transaction ends.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use BemiTest;

my $node = bemi_node('drop_batch', conf => "deadlock_timeout = '100ms'\n");

sub install {
	$node->safe_psql('postgres', 'CREATE EXTENSION bemi; CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)');
	wait_bemi($node);
}

# Starts $sql in its own psql; returns a handle for finish_psql.
sub start_psql {
	my ($sql) = @_;
	my %run = (out => '', err => '');
	$run{h} = IPC::Run::start(['psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql],
		'>', \$run{out}, '2>', \$run{err});
	return \%run;
}

sub finish_psql {
	my ($run) = @_;
	$run->{h}->finish;
	return ($run->{h}->result(0), $run->{err});
}

# The worker's batch, held open with bemi.changes locked: a session holds a lock on its partition,
# which the batch takes after bemi.changes and before the ids of its rows (nextval of the
# sequence). A DROP started meanwhile and given time to take the locks it can.
sub batch_held_then {
	my ($round, $sql) = @_;
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('BEGIN; LOCK TABLE bemi.changes_default IN SHARE MODE');
	$node->safe_psql('postgres', "INSERT INTO t VALUES ($round)");
	ok($node->poll_query_until('postgres', q{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE backend_type IN ('bemi worker', 'bemi writer') AND wait_event = 'relation'}),
		"round $round: the worker's batch holds bemi.changes");
	my $drop = start_psql($sql);
	ok($node->poll_query_until('postgres', q{
		SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%allow_drop = on%DROP %' AND wait_event IS NOT NULL
		   AND pid <> pg_backend_pid()}), "round $round: the drop waits");
	sleep(1); # long enough for any deadlock check
	$holder->query_safe('COMMIT');
	$holder->quit;
	return finish_psql($drop);
}

# 1. The drop commits: it succeeds, the worker wrote its batch first, then stopped and dropped
#    its slot.
install();
my $log_from = -s $node->logfile;
my ($rc, $err) = batch_held_then(1, 'SET bemi.allow_drop = on; DROP EXTENSION bemi');
is($rc, 0, 'DROP EXTENSION during a batch succeeds') or diag($err);
unlike(slurp_file($node->logfile, $log_from), qr/deadlock detected/, 'no deadlock, in the drop or in the worker');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name LIKE 'bemi%'}), 'the slot is dropped');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type IN ('bemi worker', 'bemi writer')}),
	'the worker is gone');

# 2. The drop is rolled back: the worker goes on from where it was, losing nothing.
install();
$log_from = -s $node->logfile;
($rc, $err) = batch_held_then(2, 'SET bemi.allow_drop = on; BEGIN; DROP EXTENSION bemi; SELECT pg_sleep(0.5); ROLLBACK');
is($rc, 0, 'a DROP EXTENSION rolled back') or diag($err);
$node->safe_psql('postgres', 'INSERT INTO t VALUES (3)');
wait_bemi($node);
is($node->safe_psql('postgres', q{SELECT string_agg(primary_key, ',' ORDER BY id) FROM bemi.changes WHERE "table" = 't' AND operation = 'CREATE'}),
	'2,3', 'capture goes on after the rollback: the held batch and a later change, once each');
unlike(slurp_file($node->logfile, $log_from), qr/deadlock detected/, 'no deadlock');

# 3. A drop that fails (a view depends on the trail): the worker is not held after it.
$node->safe_psql('postgres', 'CREATE VIEW my_changes AS SELECT id FROM bemi.changes');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'SET bemi.allow_drop = on; DROP EXTENSION bemi');
like($stderr, qr/depend/, 'a DROP EXTENSION that fails');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (4)');
is($node->safe_psql('postgres', q{SELECT bemi_wait(pg_current_wal_lsn(), '30 seconds')}), 't',
	'capture goes on after a failed drop');
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE "table" = 't' AND primary_key = '4'}), '1',
	'the change after it is recorded');

# 4. A drop that fails in a savepoint, its transaction left open: capture goes on meanwhile.
my $open = $node->background_psql('postgres', on_error_stop => 0);
$open->query_safe('SET bemi.allow_drop = on');
$open->query_safe('BEGIN');
$open->query_safe('SAVEPOINT s');
$open->query('DROP EXTENSION bemi');
# (query, not query_safe: this BackgroundPsql keeps the error above in its stderr)
$open->query('ROLLBACK TO s');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (5)');
is($node->safe_psql('postgres', q{SELECT bemi_wait(pg_current_wal_lsn(), '30 seconds')}), 't',
	'a drop rolled back to its savepoint holds the worker no longer');
$open->query('COMMIT');
$open->quit;

# 4b. A drop in a savepoint that is released, then a later savepoint rolled back: the drop stands,
#     and so does the hold, until the transaction ends.
$open = $node->background_psql('postgres');
$open->query_safe('SET bemi.allow_drop = on');
$open->query_safe('BEGIN');
$open->query_safe('SAVEPOINT a');
$open->query_safe('DROP VIEW my_changes; DROP EXTENSION bemi');
$open->query_safe('RELEASE a');
$open->query_safe('SAVEPOINT b');
$open->query_safe('ROLLBACK TO b');
sleep(1);
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bemi worker' AND query LIKE '%holding still%'}), '1',
	'a drop in a released savepoint still holds the worker after a later savepoint is rolled back');
$open->query_safe('ROLLBACK');
$open->quit;

# 5. An ordinary role cannot hold the worker: its DROP OWNED (which could drop the extension
#    were it the owner) in a transaction left open.
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
$open = $node->background_psql('postgres', extra_params => ['-U', 'mallory']);
$open->query_safe('BEGIN');
is($open->query_safe('SELECT current_user'), 'mallory', 'connected as mallory');
$open->query_safe('DROP OWNED BY mallory');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (6)');
is($node->safe_psql('postgres', q{SELECT bemi_wait(pg_current_wal_lsn(), '30 seconds')}), 't',
	"an ordinary role's DROP OWNED in an open transaction does not hold the worker");
$open->query_safe('COMMIT');
$open->quit;
is($node->safe_psql('postgres', q{SELECT string_agg(primary_key, ',' ORDER BY id) FROM bemi.changes WHERE "table" = 't' AND operation = 'CREATE'}),
	'2,3,4,5,6', 'every change once');

# 6. Installed and dropped in one transaction: the worker, still making its slot, waits for that
#    transaction; the drop waits neither to hold it nor, at commit, for it to go (it waited 10 s).
$node->safe_psql('postgres', 'CREATE DATABASE once');
my $began = time();
$node->safe_psql('once', 'BEGIN; CREATE EXTENSION bemi; DROP EXTENSION bemi; COMMIT');
ok(time() - $began < 5, 'CREATE and DROP EXTENSION in one transaction do not wait for the worker');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_replication_slots WHERE database = 'once'}),
	'and its worker drops the slot it made');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'once'}),
	'and goes');

# 7. A drop in the middle of a backlog that the writers are writing: they finish the batches they
#    have, the worker holds, the drop goes through.
$node->safe_psql('postgres', 'DROP VIEW my_changes');
my $lock = $node->background_psql('postgres');
$lock->query_safe('BEGIN; LOCK TABLE bemi.changes IN EXCLUSIVE MODE');
$node->safe_psql('postgres', 'INSERT INTO t SELECT g FROM generate_series(100, 200099) g');
$lock->query_safe('ROLLBACK');
$lock->quit;
ok($node->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'bemi writer' AND state = 'active'}),
	'the writers write the backlog');
$log_from = -s $node->logfile;
($ret, $stdout, $stderr) = $node->psql('postgres', 'SET bemi.allow_drop = on; DROP EXTENSION bemi');
is($ret, 0, 'DROP EXTENSION in the middle of a drain') or diag($stderr);
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type IN ('bemi worker', 'bemi writer')}),
	'the worker and its writers are gone');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots WHERE database = 'postgres'}), '0',
	'the slot is dropped');
unlike(slurp_file($node->logfile, $log_from), qr/deadlock detected|"bemi (worker|writer)" \(PID \d+\) exited with exit code 1/,
	'no deadlock; the writers left quietly, their batches written');

# 8. DROP SCHEMA ... CASCADE of the extension's schema takes the extension too: the same hold.
#    (Schema bemi itself cannot be dropped: the extension requires it.)
install();
$log_from = -s $node->logfile;
($rc, $err) = batch_held_then(8, 'SET bemi.allow_drop = on; DROP SCHEMA public CASCADE');
is($rc, 0, 'DROP SCHEMA public CASCADE (the extension\'s schema) during a batch succeeds') or diag($err);
unlike(slurp_file($node->logfile, $log_from), qr/deadlock detected/, 'no deadlock');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_extension WHERE extname = 'bemi'}), '0',
	'the extension went with its schema');

$node->stop;
done_testing();
