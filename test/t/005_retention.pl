# Retention under load: the worker makes a partition every second while four clients write,
# then drops partitions while they go on. Nothing is lost at a boundary: every row the clients
# committed is in bemi.changes exactly once, unless retention has since dropped its time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('retention', conf => q{
log_statement = none
});
$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE TABLE load (id bigserial PRIMARY KEY, client int, made_at timestamptz DEFAULT clock_timestamp());
	SELECT count(*) FROM bemi_set_retention(NULL, '1 second');
});
my $script = $node->basedir . '/load.sql';
PostgreSQL::Test::Utils::append_to_file($script, q{
INSERT INTO load (client) SELECT :client_id FROM generate_series(1, 3);
});

sub load_for {
	my ($seconds) = @_;
	$node->command_ok([ 'pgbench', '-n', '-c', '4', '-T', $seconds, '-f', $script, '-h', $node->host,
			'-p', $node->port, 'postgres' ], "pgbench for $seconds s");
	$node->safe_psql('postgres', q{SELECT bemi_wait(pg_current_wal_lsn(), '120 seconds')});
}

# 1. Partitions every second, nothing dropped.
load_for(6);
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM load');
ok($rows > 1000, "the load wrote $rows rows");
is($node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT c.primary_key) FROM bemi.changes c JOIN load l ON l.id::text = c.primary_key
	 WHERE c."table" = 'load'}), "$rows|$rows", 'every row is recorded exactly once across the partitions');
my $spread = $node->safe_psql('postgres', q{
	SELECT count(DISTINCT tableoid) FROM bemi.changes WHERE "table" = 'load'});
ok($spread >= 5, "the changes are spread over $spread partitions");
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM bemi.changes c JOIN bemi_partitions() p ON p.partition_name::regclass = c.tableoid
	 WHERE c.committed_at < p.from_time OR c.committed_at >= p.to_time}), '0',
	'each change is in the partition of its commit time');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bemi.changes_default'), '0',
	'partitions were ready ahead of time: nothing waited in the default partition');
is($node->safe_psql('postgres', 'SELECT last_error FROM bemi_status()'), '', 'the worker reported no error');

# 2. With a retention of 5 seconds, partitions go while the clients write. In one snapshot: rows
# made after the trail's start (plus a second for their commit) are all there.
$node->safe_psql('postgres', q{SELECT count(*) FROM bemi_set_retention('5 seconds', '1 second')});
load_for(8);
my $check = $node->safe_psql('postgres', q{
	BEGIN ISOLATION LEVEL REPEATABLE READ;
	-- Before the snapshot: no partition may be detached while we look (the list of partitions
	-- is read from the catalog as it is now, not as of the snapshot).
	LOCK TABLE bemi.changes IN ACCESS SHARE MODE;
	WITH recorded AS MATERIALIZED (SELECT primary_key FROM bemi.changes WHERE "table" = 'load'),
	     trail AS MATERIALIZED (SELECT bemi_tracking_started_at() AS starts)
	SELECT count(*), count(*) FILTER (WHERE r.primary_key IS NULL),
	       bool_and(t.starts > now() - interval '10 seconds')
	  FROM trail t, load l LEFT JOIN recorded r ON r.primary_key = l.id::text
	 WHERE l.made_at > t.starts + interval '1 second';
	COMMIT;});
my ($kept, $missing, $recent) = split /\|/, $check;
ok($kept > 100, "$kept rows were made after the trail's start");
is($missing, '0', 'none of them is missing from the trail');
is($recent, 't', 'time travel starts where retention cut the trail');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM bemi_partitions() WHERE to_time < now() - interval '7 seconds'}),
	'old partitions are dropped');
like(slurp_file($node->logfile), qr/bemi: dropped bemi\.changes_\d{8}_\d{6}/, 'the worker logs what it drops');
is($node->safe_psql('postgres', 'SELECT last_error FROM bemi_status()'), '', 'the worker reported no error');

# 3. A round of upkeep that fails (here a table in the way of today's partition) is reported
# and retried; capture goes on (changes without a partition wait in the default one).
$node->safe_psql('postgres', q{
	SELECT bemi_reset_retention();
	DO $$ BEGIN
		EXECUTE format('CREATE TABLE bemi.%I (x int)', 'changes_' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD'));
	END $$;
	INSERT INTO bemi.retention (retention, partition_interval) VALUES (NULL, '1 day');
});
ok($node->poll_query_until('postgres', q{SELECT last_error LIKE 'partition upkeep: %already exists%' FROM bemi_status()}),
	'the failed upkeep is reported in bemi_status()');
$node->safe_psql('postgres', q{INSERT INTO load (client) SELECT -1 FROM generate_series(1, 100)});
$node->safe_psql('postgres', q{SELECT bemi_wait(pg_current_wal_lsn(), '60 seconds')});
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE "table" = 'load' AND (after->>'client')::int = -1}),
	'100', 'capture goes on');
is($node->safe_psql('postgres', q{SELECT worker_state FROM bemi_status()}), 'running', 'the worker keeps running');
$node->stop;
done_testing();
