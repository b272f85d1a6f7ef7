# The hash chain over the trail (ext/chain.sql, include/bemi/chain.hpp) at scale and through
# failures: a million changes written by two writer processes, with kill -9 of the worker in the
# middle of the drain, verify intact; retention then drops the partition holding the oldest
# changes, and what remains still verifies, through the anchor retention left (without it, the
# cut shows as a removed change).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use BemiTest;

my $node = bemi_node('chain', conf => "bemi.writers = 2\nbemi.batch_size = 2000\nrestart_after_crash = on\nmax_wal_size = 1GB\nlog_statement = none\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE TABLE bulk (id int PRIMARY KEY, v int, note text);
	INSERT INTO bulk SELECT g, g, 'old ' || g FROM generate_series(1, 1000) g;
});
wait_bemi($node);

# 1. The oldest changes in a partition of their own, [yesterday, m); what follows goes to [m, m + 1 day).
my $m = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
$node->safe_psql('postgres', qq{
	SELECT bemi._make_partition(date_trunc('day', '$m'::timestamptz) - interval '1 day', '$m');
	SELECT bemi._make_partition('$m', '$m'::timestamptz + interval '1 day');
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes_default}), '0', 'the old changes moved to their partition');

# 2. A million changes, held back so that the writers drain a backlog; kill -9 of the worker in the
# middle of the drain.
my $hold = $node->background_psql('postgres');
$hold->query_safe('BEGIN');
$hold->query_safe('LOCK TABLE bemi.changes IN EXCLUSIVE MODE');
for my $t (0 .. 9) {
	my $from = 100_000 * $t + 1001;
	my $to = $from + 99_999;
	$node->safe_psql('postgres', qq{INSERT INTO bulk SELECT g, g, 'new ' || g FROM generate_series($from, $to) g});
}
$hold->query_safe('ROLLBACK');
$hold->quit;
ok($node->poll_query_until('postgres', q{SELECT count(*) > 20000 FROM bemi.changes WHERE after->>'note' LIKE 'new %'}),
	'the drain started');
my $seen = $node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE after->>'note' LIKE 'new %'});
ok($seen < 1_000_000, "kill -9 of the worker in the middle of the drain ($seen changes recorded)");
kill 'KILL', $node->safe_psql('postgres', 'SELECT worker_pid FROM bemi_status()');
ok($node->poll_query_until('postgres', q{SELECT worker_state = 'running' FROM bemi_status()}),
	'the worker runs again');
wait_bemi($node, 'postgres', 600);

# Ground truth: the table itself. Every row once.
is($node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT primary_key) FROM bemi.changes WHERE "table" = 'bulk' AND operation = 'CREATE'}),
	'1001000|1001000', 'every change recorded once');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM bulk b LEFT JOIN bemi.changes c ON c."table" = 'bulk' AND c.primary_key = b.id::text AND c.operation = 'CREATE'
	 WHERE c.after IS DISTINCT FROM to_jsonb(b)}), '0', 'each as the table holds it');
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE hash IS NULL), count(*) FILTER (WHERE previous_id IS DISTINCT FROM prev)
	  FROM (SELECT hash, previous_id, lag(id) OVER (ORDER BY id) AS prev FROM bemi.changes) c}),
	'0|0', 'every change chained to the one before it');

# 3. The chain is intact: bemi_verify finds nothing over the million (and says how fast).
my $start = time;
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi_verify()}), '0', 'a million changes verify');
my $elapsed = time - $start;
my $total = $node->safe_psql('postgres', 'SELECT count(*) FROM bemi.changes');
diag(sprintf('bemi_verify: %d changes in %.2f s, %.0f changes/s', $total, $elapsed, $total / $elapsed));

# And it is not blind: a value changed in the middle of the million is found.
is($node->safe_psql('postgres', q{
	BEGIN;
	SET LOCAL bemi.allow_trail_changes = on;
	UPDATE bemi.changes SET "after" = jsonb_set("after", '{v}', '0') WHERE "table" = 'bulk' AND primary_key = '500000';
	SELECT v.reason || ' ' || c.primary_key FROM bemi_verify() v JOIN bemi.changes c ON c.id = v.id;
	ROLLBACK;}), 'altered 500000', 'a changed value among the million is named');

# 4. Retention drops the partition of the oldest changes: an anchor keeps what remains checkable.
my $last_old = $node->safe_psql('postgres', q{SELECT max(id) FROM bemi.changes WHERE committed_at < '} . $m . q{'});
my $first_new = $node->safe_psql('postgres', q{SELECT min(id) FROM bemi.changes WHERE committed_at >= '} . $m . q{'});
# (Set up and run in one transaction: the worker's own upkeep sees the retention only once it is done.)
my $actions = $node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO bemi.retention (retention, partition_interval) VALUES ('1 second', '1 day');
	SELECT array_to_string(actions, E'\n') FROM bemi._maintain_changes(now());
	COMMIT;});
like($actions, qr/dropped bemi\.changes_\d+/, 'retention dropped the oldest partition');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM bemi.changes WHERE committed_at < '$m'}), '0', 'the old changes are gone');
is($node->safe_psql('postgres', q{SELECT id || ' ' || previous_id || ' ' || octet_length(previous_hash) FROM bemi.chain_anchors}),
	"$first_new $last_old 32", 'the anchor: the first change left, the last one dropped and its hash');
$start = time;
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi_verify()}), '0', 'what remains verifies');
diag(sprintf('bemi_verify after the cut: %.2f s', time - $start));
is($node->safe_psql('postgres', q{
	BEGIN;
	SET LOCAL bemi.allow_trail_changes = on;
	DELETE FROM bemi.chain_anchors;
	SELECT v.reason || ' ' || (v.id = } . $last_old . q{) FROM bemi_verify() v;
	ROLLBACK;}), 'removed true', 'without the anchor, the cut shows as a removed change');

# 5. Recording goes on in the chain, and the head is the last change.
$node->safe_psql('postgres', q{UPDATE bulk SET v = -v WHERE id <= 10});
wait_bemi($node);
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi_verify()}), '0', 'new changes verify');
is($node->safe_psql('postgres', q{SELECT (SELECT id FROM bemi_chain_head()) = max(id) FROM bemi.changes}), 't',
	'bemi_chain_head is the last change');

$node->stop;
done_testing();
