# The trail in another database (issue 16): sources write their changes into a destination
# PostgreSQL that has bemi without preload or logical WAL. The seed's scenario lands there with its
# context; a kill -9 of a source's worker, an immediate stop of the destination and the destination
# down for half a minute under pgbench load lose nothing and write nothing twice; two sources (two
# clusters) share one destination. The ground truth is each source's own tables: every pgbench
# transaction adds 1 to items.v (one change of items) and inserts one ledger row (one change of
# ledger), so the destination must hold exactly sum(items.v) changes of items and count(ledger)
# changes of ledger for that source, each once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use IPC::Run;
use BemiTest;

# The destination: a plain server (no shared_preload_libraries, wal_level = replica).
my $dest = PostgreSQL::Test::Cluster->new('dest');
$dest->init;
$dest->append_conf('postgresql.conf', "wal_level = replica\nlog_statement = none\n");
$dest->start;
$dest->safe_psql('postgres', 'CREATE DATABASE trail');
my ($ret, $out, $err) = $dest->psql('trail', 'CREATE EXTENSION bemi');
is($ret, 0, 'CREATE EXTENSION bemi on a server without preload or logical WAL');
like($err, qr/can hold a trail as the destination/, 'with a warning that says what it is for');
$dest->safe_psql('trail', 'CREATE ROLE ingest LOGIN IN ROLE bemi_ingest');
my $conninfo = sprintf('host=%s port=%d dbname=trail user=ingest', $dest->host, $dest->port);

my %sid;
sub source
{
	my ($name) = @_;
	my $node = bemi_node($name, conf => "log_statement = none\nrestart_after_crash = on\n");
	$sid{$name} = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
	return $node;
}

my $src1 = source('src1');

# 1. The seed's scenario, with the destination set first: the change lands there with its context.
$src1->safe_psql('postgres', qq{
	CREATE EXTENSION bemi;
	SELECT bemi_set_destination('$conninfo');
	CREATE TABLE todo (id serial PRIMARY KEY, task text);
	BEGIN;
	SELECT bemi_set_context('{"user_id": 187234, "endpoint": "/todo", "method": "POST"}');
	INSERT INTO todo (task) VALUES ('Sleep');
	COMMIT;
});
wait_bemi($src1);
is($dest->safe_psql('trail', qq{
	SELECT database, "table", operation, "after"->>'task', context->>'endpoint', context->>'user_id'
	  FROM bemi.changes WHERE source_system_id = '$sid{src1}' AND "table" = 'todo' AND operation <> 'DDL'}),
	'postgres|todo|CREATE|Sleep|/todo|187234', 'the seed change is on the destination, with its context');
is($src1->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes}), '0', 'and not in the source\'s own trail');
is($src1->safe_psql('postgres', q{SELECT destination_reachable, destination ~ 'dbname=trail' FROM bemi_status()}),
	't|t', 'bemi_status() shows the destination, reachable');

# Every column arrives as the source wrote it: the transaction id, a position past the WAL before
# the change, the commit time, and created_at (the worker's) after it.
my ($xid, $lsn_before) = split /\|/, $src1->safe_psql('postgres', q{
	BEGIN; SELECT txid_current(), pg_current_wal_lsn(); INSERT INTO todo (task) VALUES ('every column'); COMMIT;});
wait_bemi($src1);
is($dest->safe_psql('trail', qq{
	SELECT transaction_id = $xid, position > '$lsn_before', committed_at > now() - interval '5 minutes',
	       created_at >= committed_at, primary_key, schema, operation, before = '{}', jsonb_typeof(context)
	  FROM bemi.changes WHERE source_system_id = '$sid{src1}' AND "after"->>'task' = 'every column'}),
	't|t|t|t|2|public|CREATE|t|object', 'every column of a change arrives as the source wrote it');

# Values that are hard to write as JSON text arrive as the source holds them: quotes, backslashes,
# every control character, non-ASCII, numerics large, small and negative, nested and empty
# containers, jsonb scalars, booleans and NULLs.
$src1->safe_psql('postgres', q{
	CREATE TABLE awkward (id int PRIMARY KEY, t text, n numeric, b boolean, j jsonb);
	INSERT INTO awkward
	SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE
	            'q"b\\s/' || chr(1 + i % 31) || E'\t\n\r\b\f' || 'é€😀' || repeat('x', i) || chr(31) END,
	       CASE i % 5 WHEN 0 THEN -i * 1.5 WHEN 1 THEN 1e300 + i WHEN 2 THEN 0.000000001 * i
	                  WHEN 3 THEN 0 ELSE 12345678901234567890.0123456789 END,
	       CASE WHEN i % 3 = 0 THEN NULL ELSE i % 2 = 0 END,
	       CASE i % 6 WHEN 0 THEN '{"a": [1, 2.50, {"b": null}], "": {}, "c": []}'
	                  WHEN 1 THEN '"just a string é \\""' WHEN 2 THEN '-0.0'
	                  WHEN 3 THEN 'null' WHEN 4 THEN '[true, false, "x\\u0001y"]' ELSE NULL END::jsonb
	  FROM generate_series(1, 60) i;
});
wait_bemi($src1);
# The rows of a table on the destination, as the source holds them: their count and a digest.
sub arrived_as_held {
	my ($table, $what) = @_;
	is($dest->safe_psql('trail', qq{
		SELECT count(*), md5(string_agg("after"::text, E'\\n' ORDER BY primary_key::int))
		  FROM bemi.changes WHERE source_system_id = '$sid{src1}' AND "table" = '$table' AND operation = 'CREATE'}),
		$src1->safe_psql('postgres', qq{SELECT count(*), md5(string_agg(to_jsonb(a)::text, E'\\n' ORDER BY id)) FROM $table a}),
		$what);
}
arrived_as_held('awkward', 'values hard to write as JSON arrive as the source holds them');

# The batches above went through bemi._ingest (jsonb in PostgreSQL's format). A destination
# that stops letting the role run it refuses the next batch; the worker connects again and sends
# by COPY (jsonb as text): the same rows arrive, nothing lost or doubled. Then back.
$dest->safe_psql('trail', 'REVOKE EXECUTE ON FUNCTION bemi._ingest(bytea) FROM bemi_ingest');
$src1->safe_psql('postgres', q{
	CREATE TABLE awkward_copy (LIKE awkward);
	INSERT INTO awkward_copy SELECT * FROM awkward;
});
wait_bemi($src1);
arrived_as_held('awkward_copy', 'without bemi._ingest, the same rows arrive by COPY');
$dest->safe_psql('trail', 'GRANT EXECUTE ON FUNCTION bemi._ingest(bytea) TO bemi_ingest');

# A gap of the source (a table taken out of capture) is recorded there too, with the next batch.
$src1->safe_psql('postgres', q{
	CREATE TABLE scratch (id int PRIMARY KEY);
	ALTER TABLE scratch SET UNLOGGED;
	INSERT INTO todo (task) VALUES ('Wake up');
});
wait_bemi($src1);
is($dest->safe_psql('trail', qq{
	SELECT relation, source_database FROM bemi.gaps WHERE source_system_id = '$sid{src1}'}),
	'public.scratch|postgres', 'the source\'s gap is on the destination, named by its source');
is($dest->safe_psql('trail', qq{SELECT gaps_forwarded FROM bemi.source_progress WHERE source_system_id = '$sid{src1}'}),
	$src1->safe_psql('postgres', 'SELECT max(id) FROM bemi.gaps'), 'and its progress there names the last gap copied');

# The load: one change of items and one of ledger per pgbench transaction.
my $script = PostgreSQL::Test::Utils::tempdir() . '/load.sql';
open(my $fh, '>', $script) or die;
print $fh q{\set k random(1, 200)
BEGIN;
INSERT INTO items (k, v) VALUES (:k, 1) ON CONFLICT (k) DO UPDATE SET v = items.v + 1;
INSERT INTO ledger DEFAULT VALUES;
END;
};
close $fh;
sub prepare_load
{
	my ($node) = @_;
	$node->safe_psql('postgres', q{
		CREATE TABLE items (k int PRIMARY KEY, v bigint NOT NULL);
		CREATE TABLE ledger (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
	});
}
# pgbench in the background for $seconds; its failures (a crash restart ends its clients) do not
# matter: the source's tables say what committed.
sub start_load
{
	my ($node, $seconds) = @_;
	my ($o, $e) = ('', '');
	return IPC::Run::start(['pgbench', '-n', '-c', '4', '-T', $seconds, '-f', $script, '-h', $node->host,
		'-p', $node->port, 'postgres'], '>', \$o, '2>', \$e);
}
# Every change the source committed is on the destination, once.
sub check_ledger
{
	my ($node, $name, $what) = @_;
	wait_bemi($node, 'postgres', 400);
	my $truth = $node->safe_psql('postgres',
		'SELECT (SELECT coalesce(sum(v), 0) FROM items), (SELECT count(*) FROM ledger)');
	my $there = $dest->safe_psql('trail', qq{
		SELECT count(*) FILTER (WHERE "table" = 'items'), count(*) FILTER (WHERE "table" = 'ledger')
		  FROM bemi.changes WHERE source_system_id = '$sid{$name}' AND "table" IN ('items', 'ledger')
		   AND operation <> 'DDL'});
	is($there, $truth, "$what: every change of $name on the destination ($truth)");
	is($dest->safe_psql('trail', qq{
		SELECT count(*) - count(DISTINCT (transaction_id, position)) FROM bemi.changes
		 WHERE source_system_id = '$sid{$name}'}), '0', "$what: none twice");
	# Batches go out on several connections at once, yet ids follow the source's order: a
	# transaction's changes are consecutive among the source's, in the order of their positions.
	is($dest->safe_psql('trail', qq{
		SELECT count(*) FROM (
		  SELECT transaction_id, position, lag(transaction_id) OVER w AS previous_xid,
		         lag(position) OVER w AS previous_position,
		         count(*) OVER (PARTITION BY transaction_id) AS n,
		         max(id) OVER (PARTITION BY transaction_id) - min(id) OVER (PARTITION BY transaction_id) AS id_span,
		         max(r) OVER (PARTITION BY transaction_id) - min(r) OVER (PARTITION BY transaction_id) AS rank_span
		    FROM (SELECT *, row_number() OVER (ORDER BY id) AS r FROM bemi.changes
		           WHERE source_system_id = '$sid{$name}') c
		  WINDOW w AS (ORDER BY id)) s
		 WHERE (transaction_id = previous_xid AND position <= previous_position) OR rank_span <> n - 1}),
		'0', "$what: ids in the source's order");
}

prepare_load($src1);
my $load = start_load($src1, 4);
$load->finish;
check_ledger($src1, 'src1', 'steady load');

# 2. kill -9 of the source's worker under load (the postmaster restarts everything).
$load = start_load($src1, 12);
sleep 4;
my $pid = $src1->safe_psql('postgres', 'SELECT worker_pid FROM bemi_status()');
my $crash_at = -s $src1->logfile;
kill 'KILL', $pid;
$load->finish;
$src1->wait_for_log(qr/database system is ready to accept connections/, $crash_at);
$src1->poll_query_until('postgres', 'SELECT true') or die;
check_ledger($src1, 'src1', 'kill -9 of the worker');

# 3. An immediate stop of the destination under load.
$load = start_load($src1, 12);
sleep 4;
$dest->stop('immediate');
sleep 2;
$dest->start;
$load->finish;
check_ledger($src1, 'src1', 'immediate stop of the destination');

# 4. The destination down for half a minute under load: the source keeps its WAL, says so, and
# catches up once it is back.
$dest->stop('fast');
$load = start_load($src1, 30);
sleep 10;
ok($src1->poll_query_until('postgres', q{SELECT destination_reachable = false AND lag_bytes > 0 FROM bemi_status()}),
	'bemi_status(): the destination is unreachable and the lag grows');
like($src1->safe_psql('postgres', 'SELECT last_error FROM bemi_status()'), qr/destination/,
	'the last error names the destination');
$load->finish;
$dest->start;
check_ledger($src1, 'src1', 'destination down 30 s');
is($src1->safe_psql('postgres', 'SELECT destination_reachable FROM bemi_status()'), 't', 'reachable again');

# 4b. kill -9 of the worker in the middle of a drain on three connections at once: each batch in
# flight there is rolled back or committed, in order; the next run resumes from the progress.
$src1->append_conf('postgresql.conf', "bemi.destination_connections = 3\n");
$src1->reload;
$dest->stop('fast');
$load = start_load($src1, 10);
$load->finish;
$dest->start;
my $before = $dest->safe_psql('trail', qq{SELECT count(*) FROM bemi.changes WHERE source_system_id = '$sid{src1}'});
# The worker retries with a growing delay: once it writes again, it is killed mid-drain.
ok($dest->poll_query_until('trail',
	qq{SELECT count(*) > $before FROM bemi.changes WHERE source_system_id = '$sid{src1}'}),
	'the drain after the destination came back started');
# The server restarts after the crash: wait for the restart to be over, not only for a connection
# (one can succeed before the postmaster has noticed the crash).
$crash_at = -s $src1->logfile;
kill 'KILL', $src1->safe_psql('postgres', 'SELECT worker_pid FROM bemi_status()');
$src1->wait_for_log(qr/database system is ready to accept connections/, $crash_at);
$src1->poll_query_until('postgres', 'SELECT true') or die;
check_ledger($src1, 'src1', 'kill -9 of the worker mid-drain on three connections');

# 4c. The progress row moved under the worker (as a second writer as this source would move it):
# the batch is rolled back there, the worker says why, and starts again from what both hold.
$dest->safe_psql('trail', qq{UPDATE bemi.source_progress SET txn_end_lsn = '0/1' WHERE source_system_id = '$sid{src1}'});
$load = start_load($src1, 3);
$load->finish;
my $moved = 0;
for (1 .. 600)
{
	$moved = PostgreSQL::Test::Utils::slurp_file($src1->logfile) =~ /progress on the destination moved under the worker/;
	last if $moved;
	usleep(100_000);
}
ok($moved, 'a progress row moved under the worker fails its batch');
check_ledger($src1, 'src1', 'the progress moved under the worker');

# 4d. Large rows: a batch's COPY data beyond what the worker keeps queued for a connection (8 MB)
# waits for the socket instead of growing the queue, and arrives whole.
$src1->safe_psql('postgres', q{
	CREATE TABLE big (id int PRIMARY KEY, body text);
	INSERT INTO big SELECT g, repeat(md5(g::text), 100000) FROM generate_series(1, 4) g});
wait_bemi($src1);
is($dest->safe_psql('trail', qq{
	SELECT count(*), sum(length("after"->>'body')) FROM bemi.changes
	 WHERE source_system_id = '$sid{src1}' AND "table" = 'big' AND operation = 'CREATE'}),
	'4|12800000', 'four rows of 3.2 MB each arrive whole');

# 5. A second source cluster into the same destination, both under load at once.
my $src2 = source('src2');
isnt($sid{src1}, $sid{src2}, 'two sources, two system identifiers');
$src2->safe_psql('postgres', qq{CREATE EXTENSION bemi; SELECT bemi_set_destination('$conninfo')});
prepare_load($src2);
my $load1 = start_load($src1, 8);
my $load2 = start_load($src2, 8);
$load1->finish;
$load2->finish;
check_ledger($src1, 'src1', 'two sources');
check_ledger($src2, 'src2', 'two sources');
is($dest->safe_psql('trail', 'SELECT count(*) FROM bemi.source_progress'), '2', 'one progress row per source');
is($dest->safe_psql('trail', qq{SELECT count(*) FROM bemi.gaps WHERE source_system_id = '$sid{src1}'}),
	$src1->safe_psql('postgres', 'SELECT count(*) FROM bemi.gaps'),
	'every gap of the source on the destination, once, through the crashes above');

# The read functions narrowed to one source (bemi.source) on the destination.
for my $name ('src1', 'src2') {
	is($dest->safe_psql('trail', qq{SET bemi.source = '$sid{$name}/postgres'; SELECT count(*) FROM bemi_context_history('{}')}),
		$dest->safe_psql('trail', qq{SELECT count(*) FROM bemi.changes WHERE source_system_id = '$sid{$name}'}),
		"bemi.source narrows the read functions to $name");
}

# 6. The role the sources log in as appends and nothing else, even with bemi preloaded there:
# on this destination the grants say it (no preload); the regression test covers the hooks.
($ret, $out, $err) = $dest->psql('trail', 'DELETE FROM bemi.changes', extra_params => ['-U', 'ingest']);
like($err, qr/permission denied/, 'the ingest role cannot delete from the trail');

# 7. WAL lost past max_slot_wal_keep_size while the destination is down: the source records the
# gap when it makes a new slot, and the gap reaches the destination with the next batch.
$src1->append_conf('postgresql.conf', "max_slot_wal_keep_size = 32MB\n");
$src1->reload;
$dest->stop('fast');
$src1->safe_psql('postgres', q{
	CREATE TABLE lost_rows (id int PRIMARY KEY, pad text);
	INSERT INTO lost_rows SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g;
	SELECT pg_switch_wal();
	CHECKPOINT;
});
ok($src1->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM bemi.gaps WHERE reason LIKE '%invalidated%' OR reason LIKE '%missing%'}),
	'the source records the lost WAL in its own bemi.gaps');
$dest->start;
$src1->safe_psql('postgres', q{INSERT INTO todo (task) VALUES ('after the gap')});
wait_bemi($src1, 'postgres', 400);
is($dest->safe_psql('trail', qq{
	SELECT count(*) FROM bemi.gaps WHERE source_system_id = '$sid{src1}'
	   AND (reason LIKE '%invalidated%' OR reason LIKE '%missing%')}), '1',
	'the lost WAL is a gap on the destination too');
is($dest->safe_psql('trail', qq{
	SELECT count(*) FROM bemi.changes WHERE source_system_id = '$sid{src1}' AND "after"->>'task' = 'after the gap'}),
	'1', 'and capture goes on there');

# 8. A destination that hangs (a session holds a lock on its progress table): the worker waits
# for it without holding up a fast stop of the source, and writes the change once the lock goes.
my ($lock_in, $lock_out) = ('', '');
my $locker = IPC::Run::start(['psql', '-X', '-q', '-At', '-h', $dest->host, '-p', $dest->port, 'trail'],
	'<', \$lock_in, '>', \$lock_out);
$lock_in .= "BEGIN; LOCK TABLE bemi.source_progress IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$locker->pump until $lock_out =~ /locked/;
$src1->safe_psql('postgres', q{INSERT INTO todo (task) VALUES ('while the destination hangs')});
ok($dest->poll_query_until('trail', q{
	SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'bemi worker' AND wait_event_type = 'Lock'}),
	'the worker waits for the destination');
my $stop_started = time;
$src1->stop('fast');
ok(time - $stop_started < 30, 'a fast stop of the source does not wait for the hanging destination');
$lock_in .= "COMMIT;\n\\q\n";
$locker->finish;
$src1->start;
wait_bemi($src1, 'postgres', 400);
is($dest->safe_psql('trail', qq{
	SELECT count(*) FROM bemi.changes WHERE source_system_id = '$sid{src1}' AND "after"->>'task' = 'while the destination hangs'}),
	'1', 'the change lands once, after the lock is gone');

# 9. DROP DATABASE and DROP EXTENSION while the destination hangs: the worker lets go at once (it
# is waiting for the destination), so the drop goes ahead and no slot is left holding WAL.
$src1->safe_psql('postgres', "CREATE DATABASE $_") for ('doomed', 'retired');
for my $db ('doomed', 'retired')
{
	$src1->safe_psql($db, qq{
		CREATE EXTENSION bemi;
		SELECT bemi_set_destination('$conninfo');
		CREATE TABLE t (id int PRIMARY KEY);
		INSERT INTO t VALUES (1);
	});
	wait_bemi($src1, $db, 400);
}
($lock_in, $lock_out) = ('', '');
$locker = IPC::Run::start(['psql', '-X', '-q', '-At', '-h', $dest->host, '-p', $dest->port, 'trail'],
	'<', \$lock_in, '>', \$lock_out);
$lock_in .= "BEGIN; LOCK TABLE bemi.source_progress IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$locker->pump until $lock_out =~ /locked/;
$src1->safe_psql($_, 'INSERT INTO t VALUES (2)') for ('doomed', 'retired');
ok($dest->poll_query_until('trail', q{
	SELECT count(*) = 2 FROM pg_stat_activity WHERE application_name = 'bemi worker' AND wait_event_type = 'Lock'}),
	'both workers wait for the destination');
my $drop_started = time;
($ret, $out, $err) = $src1->psql('postgres', 'SET bemi.allow_drop = on; DROP DATABASE doomed');
is($ret, 0, 'DROP DATABASE goes ahead while the destination hangs') or diag($err);
ok(time - $drop_started < 10, 'without waiting for the destination');
# DROP EXTENSION asks the worker to hold still first (src/shared/lifecycle.c); a worker waiting
# for a destination that does not answer lets go of it within a second or so (its batch rolled
# back there), rather than the statement waiting out the hold's 10 s. A drop that rolls back: the
# worker starts again, and waits for the destination again, on new connections.
my $before_rollback = $dest->safe_psql('trail', 'SELECT now()');
$drop_started = time;
$src1->safe_psql('retired', 'SET bemi.allow_drop = on; BEGIN; DROP EXTENSION bemi; ROLLBACK;');
ok(time - $drop_started < 7, 'a DROP EXTENSION rolled back does not wait out the hold either');
ok($dest->poll_query_until('trail', qq{
	SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'bemi worker' AND wait_event_type = 'Lock'
	   AND backend_start > '$before_rollback'}),
	'the worker of the database that kept its extension waits for the destination again');
# The sessions the workers left there (the dropped database's, the one that let go) end by
# themselves though the lock is still held: they check every second that their client is there.
ok($dest->poll_query_until('trail', qq{
	SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'bemi worker' AND wait_event_type = 'Lock'
	   AND backend_start < '$before_rollback'}),
	'the sessions a worker left on the hanging destination end while the lock is held');
$drop_started = time;
$src1->safe_psql('retired', 'SET bemi.allow_drop = on; DROP EXTENSION bemi');
ok(time - $drop_started < 7, 'DROP EXTENSION does not wait out the hold while the destination hangs');
ok($src1->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name LIKE 'bemi%'}),
	'DROP EXTENSION: its slot is dropped while the destination still hangs');
is($src1->safe_psql('postgres', q{
	SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'bemi%'}), '1',
	'and only the postgres database keeps a replication origin');
$lock_in .= "COMMIT;\n\\q\n";
$locker->finish;
$src1->safe_psql('postgres', q{INSERT INTO todo (task) VALUES ('after the drops')});
wait_bemi($src1, 'postgres', 400);
is($dest->safe_psql('trail', qq{
	SELECT count(*) FROM bemi.changes WHERE source_system_id = '$sid{src1}' AND "after"->>'task' = 'after the drops'}),
	'1', 'the remaining database goes on writing to the destination');

$src1->stop;
$src2->stop;
$dest->stop;
done_testing();
