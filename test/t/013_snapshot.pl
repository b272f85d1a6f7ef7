# Snapshots (issue 15, "Baseline"): bemi_snapshot of a table that held 200,000 rows before
# CREATE EXTENSION, in small chunks, while clients insert, update and delete its rows, with kill -9
# of the snapshot worker and then of the database's worker in the middle (each restarts every
# process). The job resumes and finishes; then, against the table itself: every row's last entry
# in the trail is the row, each snapshot agrees with the change before it and the change after it,
# no key is snapshotted twice. Then bemi.snapshot_on_create, and time travel across a TRUNCATE
# back to a snapshot.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('snapshot', conf => q{
restart_after_crash = on
log_min_messages = log
});

my $rows = 200000;
$node->safe_psql('postgres', qq{
	CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text);
	ALTER TABLE items REPLICA IDENTITY FULL;
	INSERT INTO items SELECT g, 0, 'before ' || g FROM generate_series(1, $rows) g;
	CREATE EXTENSION bemi;
});
wait_bemi($node);
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE "table" = 'items'}), '0',
	'the rows that were there before CREATE EXTENSION have no history');

# The load: updates, inserts (of new keys and of deleted ones) and deletes, four clients.
my $script = $node->basedir . '/load.sql';
PostgreSQL::Test::Utils::append_to_file($script, q{
\set id random(1, 220000)
\set op random(1, 10)
UPDATE items SET v = v + 1, note = 'updated' WHERE id = :id AND :op <= 6;
INSERT INTO items SELECT :id, 0, 'inserted' WHERE :op BETWEEN 7 AND 8 ON CONFLICT (id) DO UPDATE SET v = items.v + 1, note = 'upserted';
DELETE FROM items WHERE id = :id AND :op >= 9;
});
sub start_load {
	my ($out, $err) = ('', '');
	return IPC::Run::start(
		[ 'pgbench', '-n', '-c', '4', '-T', '120', '-f', $script, '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
}
# After a crash the server refuses connections for a moment (see 001_lifecycle.pl).
sub wait_for_server {
	for my $try (1 .. 5) {
		my $up = eval { $node->poll_query_until('postgres', 'SELECT true') };
		return 1 if $up;
		sleep 1;
	}
	return 0;
}
sub snapshot_rows {
	return $node->safe_psql('postgres', 'SELECT coalesce(max(rows), 0) FROM bemi.snapshots');
}

my $load = start_load();
sleep 2;
my $job = $node->safe_psql('postgres', q{SELECT bemi_snapshot('items', wait => false, chunk_size => 20)});
ok($job > 0, "snapshot job $job started");

# 1. kill -9 of the snapshot worker a quarter of the way in.
ok($node->poll_query_until('postgres', q{SELECT rows >= 50000 FROM bemi.snapshots}), 'a quarter read');
my $pid = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'bemi snapshot'});
ok($pid > 0, "the snapshot worker runs as $pid");
my $at_kill = snapshot_rows();
my $log_at_kill = -s $node->logfile;
kill 'KILL', $pid;
$load->finish;
wait_for_server() or die 'server did not come back';
ok($at_kill < $rows, "killed at $at_kill rows, unfinished");
# The job is left unfinished, not failed, and resumes after the chunks it had committed. (Not
# "still running" when we look: without the load a snapshot reads so fast that the resumed job
# can finish before the test looks, as it did once in CI.)
$node->wait_for_log(qr/bemi: snapshot $job of table \d+ resuming after \d+ rows/, $log_at_kill);
my ($resumed_at) = slurp_file($node->logfile, $log_at_kill) =~ /bemi: snapshot $job of table \d+ resuming after (\d+) rows/;
ok($resumed_at >= $at_kill && $resumed_at < $rows, "the job resumed after $resumed_at rows (killed at $at_kill)");
like($node->safe_psql('postgres', 'SELECT state FROM bemi.snapshots'), qr/^(running|done)$/, 'the job is not marked failed');

# 2. The worker resumes the job when it starts again; kill -9 of the worker half-way.
$load = start_load();
ok($node->poll_query_until('postgres', q{SELECT rows >= 120000 FROM bemi.snapshots}), 'resumed, past half');
$pid = $node->safe_psql('postgres', q{SELECT worker_pid FROM bemi_status()});
ok($pid > 0, "the worker runs as $pid");
$log_at_kill = -s $node->logfile;
kill 'KILL', $pid;
$load->finish;
wait_for_server() or die 'server did not come back';
# Resumed again, unless it had finished just before the kill.
ok($node->wait_for_log(qr/bemi: snapshot $job of table \d+ (resuming after \d+ rows|done: \d+ rows)/, $log_at_kill),
	'the log says it resumed again (or had finished)');

# 3. Resumed again, it finishes under the load.
$load = start_load();
ok($node->poll_query_until('postgres', q{SELECT state = 'done' FROM bemi.snapshots}), 'the snapshot finished');
sleep 2;
$load->kill_kill;
$load->finish;
wait_bemi($node);

my $stats = $node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT primary_key), count(DISTINCT transaction_id)
	  FROM bemi.changes WHERE "table" = 'items' AND operation = 'SNAPSHOT'});
my ($snapshots, $keys, $chunks) = split /\|/, $stats;
is($snapshots, $keys, "no key snapshotted twice ($snapshots snapshots, $chunks chunks)");
cmp_ok($snapshots, '>', 100000, 'most rows were snapshotted (the others were deleted first)');
my $changes = $node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE "table" = 'items' AND operation <> 'SNAPSHOT'});
cmp_ok($changes, '>', 1000, "the load wrote $changes changes meanwhile");
is($node->safe_psql('postgres', q{SELECT rows FROM bemi.snapshots}), $snapshots,
	'the job counted each recorded row once');

# Every row of the table is its last entry in the trail, and every key the trail says exists
# is in the table: nothing lost.
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM items i
	  FULL JOIN (SELECT DISTINCT ON (primary_key) primary_key, operation, "after"
	               FROM bemi.changes WHERE "table" = 'items' ORDER BY primary_key, id DESC) l
	    ON l.primary_key = i.id::text
	 WHERE (i.id IS NULL AND l.operation <> 'DELETE')
	    OR (i.id IS NOT NULL AND (l.operation IS NULL OR l.operation = 'DELETE' OR l."after" <> to_jsonb(i)))}),
	'0', 'replaying the trail gives exactly the table');
# Each snapshot is consistent with the stream: the change before it (if any) left the row as the
# snapshot has it, the change after it (if any) starts from it.
my ($bad_before, $bad_after, $initial_missing, $changed_before, $changed_after) = split /\|/, $node->safe_psql('postgres', q{
	WITH t AS (
	    SELECT primary_key, id, operation, "before", "after",
	           lag(operation) OVER w AS prev_op, lag("after") OVER w AS prev_after,
	           lead(operation) OVER w AS next_op, lead("before") OVER w AS next_before
	      FROM bemi.changes WHERE "table" = 'items' WINDOW w AS (PARTITION BY primary_key ORDER BY id))
	SELECT count(*) FILTER (WHERE operation = 'SNAPSHOT' AND prev_op IS NOT NULL
	                          AND (prev_op IN ('DELETE', 'SNAPSHOT') OR prev_after <> "after")),
	       count(*) FILTER (WHERE operation = 'SNAPSHOT' AND next_op IS NOT NULL
	                          AND (next_op IN ('CREATE', 'SNAPSHOT') OR next_before <> "after")),
	       (SELECT count(*) FROM generate_series(1, 200000) g
	         WHERE NOT EXISTS (SELECT FROM bemi.changes c WHERE c."table" = 'items' AND c.primary_key = g::text)),
	       count(*) FILTER (WHERE operation = 'SNAPSHOT' AND prev_op IS NOT NULL),
	       count(*) FILTER (WHERE operation = 'SNAPSHOT' AND next_op IS NOT NULL)
	  FROM t});
# The load met the snapshot: rows changed before their chunk read them, and after.
cmp_ok($changed_before, '>', 100, "$changed_before snapshotted rows had changed before their chunk");
cmp_ok($changed_after, '>', 100, "$changed_after snapshotted rows changed after their chunk");
is($bad_before, '0', 'every snapshot agrees with the change before it');
is($bad_after, '0', 'every change after a snapshot starts from it');
is($initial_missing, '0', 'every row that was there before CREATE EXTENSION is in the trail');

# 4. bemi.snapshot_on_create: CREATE EXTENSION queues a snapshot of every table with a primary key.
$node->safe_psql('postgres', 'CREATE DATABASE oncreate');
$node->safe_psql('oncreate', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;
	CREATE TABLE nokey (a int);
	INSERT INTO nokey VALUES (1);
	CREATE TABLE parts (id int PRIMARY KEY) PARTITION BY RANGE (id);
	CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (10);
	INSERT INTO parts VALUES (1), (2);
	SET bemi.snapshot_on_create = on;
	CREATE EXTENSION bemi;
});
ok($node->poll_query_until('oncreate', q{SELECT count(*) = 2 AND bool_and(state = 'done') FROM bemi.snapshots}),
	'CREATE EXTENSION with bemi.snapshot_on_create snapshotted the tables with a primary key');
wait_bemi($node, 'oncreate');
is($node->safe_psql('oncreate', q{
	SELECT string_agg("table" || ':' || n, ',' ORDER BY "table")
	  FROM (SELECT "table", count(*) AS n FROM bemi.changes WHERE operation = 'SNAPSHOT' GROUP BY 1) s}),
	'parts:2,t:1000', 'every row of them, a partitioned table under its own name');

# 5. Time travel across a TRUNCATE, back to a moment after the snapshot, for a table that held
# rows when tracking began; before the snapshot finished it is refused.
my $started = $node->safe_psql('oncreate', 'SELECT bemi_tracking_started_at()');
$node->safe_psql('oncreate', q{UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 990});
my $moment = $node->safe_psql('oncreate', 'SELECT clock_timestamp()');
my $then = $node->safe_psql('oncreate', q{SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t});
$node->safe_psql('oncreate', q{INSERT INTO t VALUES (5000, 'later'); TRUNCATE t; INSERT INTO t VALUES (1, 'new')});
is($node->safe_psql('oncreate', qq{SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM bemi_as_of(NULL::t, '$moment')}),
	$then, 'bemi_as_of across a TRUNCATE rebuilds the table from its snapshot');
is($node->safe_psql('oncreate', qq{SELECT v FROM bemi_row_as_of(NULL::t, 3, '$moment')}), 'changed',
	'bemi_row_as_of too');
my ($rc, $out, $err) = $node->psql('oncreate', qq{SELECT count(*) FROM bemi_as_of(NULL::t, '$started')});
like($err, qr/it was truncated since, and the trail does not hold its rows at that moment/,
	'before the snapshot finished, it is refused');

# 6. DROP DATABASE while a snapshot is running (a row per chunk: it outlasts the drop's waits):
# its worker lets go between chunks, as the database's worker does, so the drop does not fail on
# a connected snapshot worker.
$node->safe_psql('postgres', 'CREATE DATABASE snapdrop');
$node->safe_psql('snapdrop', q{
	CREATE EXTENSION bemi;
	CREATE TABLE big (id int PRIMARY KEY, v text);
	INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g;
});
wait_bemi($node, 'snapdrop');
$node->safe_psql('snapdrop', q{SELECT bemi_snapshot('big', wait => false, chunk_size => 1)});
ok($node->poll_query_until('snapdrop', q{SELECT rows > 0 FROM bemi.snapshots}),
	'the snapshot to be dropped with its database is under way');
($rc, $out, $err) = $node->psql('postgres', 'SET bemi.allow_drop = on; DROP DATABASE snapdrop');
is($rc, 0, 'DROP DATABASE succeeds while a snapshot of one of its tables runs') or diag($err);
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'bemi snapshot%'}),
	'0', 'and the snapshot worker is gone');

$node->stop;
done_testing();
