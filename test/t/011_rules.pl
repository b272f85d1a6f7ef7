# Tracking rules (issue 13) judge a change by the rules in force when it was made, not when the
# worker reaches it: with the worker held back (its batches fail) and the server restarted in
# between, a rule committed after a change never drops it, one dropped before a change never
# applies to it, and a masked value written before and after the restart hashes the same.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('rules', conf => q{
log_statement = none
});
$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE TABLE fault (on_purpose boolean);
	CREATE FUNCTION fail_batch() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	  IF EXISTS (SELECT FROM public.fault) THEN RAISE EXCEPTION 'injected failure'; END IF;
	  RETURN NULL;
	END $$;
	CREATE TRIGGER fail_batch BEFORE INSERT ON bemi.changes FOR EACH STATEMENT EXECUTE FUNCTION fail_batch();
	CREATE TABLE held (id int PRIMARY KEY, note text, token text);
});
wait_bemi($node);

# The worker is held back: everything below waits in the WAL.
$node->safe_psql('postgres', q{
	INSERT INTO fault VALUES (true);
	INSERT INTO held VALUES (1, 'before the rule', 'tok-a');
	SELECT bemi_ignore('public.held');
	INSERT INTO held VALUES (2, 'while ignored', 'tok-a');
	SELECT bemi_drop_rule(id) FROM bemi.rules WHERE target = 'public.held';
	SELECT bemi_mask('public.held', '{token}', 'hash');
	INSERT INTO held VALUES (3, 'masked', 'tok-a');
});
ok($node->poll_query_until('postgres', q{SELECT last_error LIKE '%injected failure%' FROM bemi_status()}),
	'the worker is held back');
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'held'}), '0',
	'nothing of held written yet');

# A restart in between: the rules are read again, as of each change.
$node->restart;
$node->safe_psql('postgres', q{
	SELECT bemi_ignore('public.held', '{note}');
	INSERT INTO held VALUES (4, 'after the restart', 'tok-a');
	UPDATE held SET note = 'note only' WHERE id = 4;
	DELETE FROM fault;
});
wait_bemi($node);
my $hash_sql = q{SELECT after->>'token' FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'held' AND primary_key = '%s'};
my ($hash3, $hash4) = map { $node->safe_psql('postgres', sprintf($hash_sql, $_)) } (3, 4);
is($node->safe_psql('postgres', q{
	SELECT string_agg(concat_ws('|', operation, primary_key, after->>'note', after->>'token'), E'\n' ORDER BY id)
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'held'}),
	join("\n", 'CREATE|1|before the rule|tok-a', "CREATE|3|masked|$hash3", "CREATE|4|after the restart|$hash4"),
	'each change judged by the rules of its time: 1 recorded, 2 ignored, 3 and 4 masked, the note-only UPDATE left out');
like($node->safe_psql('postgres', q{SELECT after->>'token' FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'held' AND primary_key = '3'}),
	qr/^hmac:[0-9a-f]{64}$/, 'the masked token is a keyed hash');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT after->>'token') FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'held' AND primary_key IN ('3', '4')}),
	'1', 'equal values hash the same before and after a restart');
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE after::text ~ 'tok-a' AND primary_key <> '1'}),
	'0', 'the masked value is nowhere else in the trail');
is($node->safe_psql('postgres', q{SELECT string_agg(operation || ':' || (CASE operation WHEN 'DELETE' THEN before ELSE after END->>'kind'), ',' ORDER BY id)
                                    FROM bemi.changes WHERE schema = 'bemi' AND "table" = 'rules'}),
	'CREATE:ignore,DELETE:ignore,CREATE:mask,CREATE:ignore_columns', 'every change of a rule is in the trail');


# A rule committed while another transaction is open: that transaction's earlier changes are
# decoded after the rule's commit, under the snapshot they were made in, which does not hold the
# rule. The changes made after the rule, in later transactions, must still follow it, in the
# trail and in the plugin's own output (the rules read for the older snapshot are not kept).
$node->safe_psql('postgres', q{
	CREATE TABLE concurrent_noise (id int PRIMARY KEY);
	CREATE TABLE concurrent_secret (id int PRIMARY KEY, token text);
	SELECT 'init' FROM pg_create_logical_replication_slot('concurrent_slot', 'bemi');
});
my $open = $node->background_psql('postgres');
$open->query_safe('BEGIN');
$open->query_safe('INSERT INTO concurrent_noise VALUES (1)');
$node->safe_psql('postgres', q{SELECT bemi_mask('public.concurrent_secret', '{token}')});
$open->query_safe('COMMIT');
$open->quit;
$node->safe_psql('postgres', q{INSERT INTO concurrent_secret VALUES (1, 'tok-concurrent')});
wait_bemi($node);
is($node->safe_psql('postgres', q{SELECT after->>'token' FROM bemi.changes WHERE "table" = 'concurrent_secret' AND operation = 'CREATE'}),
	'[masked]', 'a rule committed while another transaction was open applies to the changes after it (trail)');
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE data ~ 'tok-concurrent') || '|' ||
	       count(*) FILTER (WHERE data::jsonb->>'table' = 'concurrent_secret' AND data::jsonb->>'operation' = 'CREATE')
	  FROM pg_logical_slot_get_changes('concurrent_slot', NULL, NULL)}),
	'0|1', 'and in the plugin\'s own output');
$node->safe_psql('postgres', q{SELECT pg_drop_replication_slot('concurrent_slot')});

# A partition's rules are its root's at the time of each change. DETACH PARTITION ... CONCURRENTLY
# from an ignored root records its gap in its first transaction; interrupted there (a reader holds
# the root), it leaves the partition "detach pending", already recorded under its own name, and
# the FINALIZE that completes it changes no rule and records no second gap.
$node->safe_psql('postgres', q{
	CREATE TABLE quiet (id int PRIMARY KEY, body text) PARTITION BY RANGE (id);
	CREATE TABLE quiet_1 PARTITION OF quiet FOR VALUES FROM (0) TO (100);
	SELECT bemi_ignore('public.quiet');
	INSERT INTO quiet VALUES (1, 'attached');
});
my $reader = $node->background_psql('postgres');
$reader->query_safe('BEGIN');
$reader->query_safe('SELECT count(*) FROM quiet');
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET statement_timeout = '2s'; ALTER TABLE quiet DETACH PARTITION quiet_1 CONCURRENTLY});
isnt($ret, 0, 'DETACH CONCURRENTLY interrupted while a reader holds the root');
is($node->safe_psql('postgres', q{SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'quiet_1'::regclass}),
	't', 'the partition is left detach pending');
$reader->query_safe('COMMIT');
$reader->quit;
$node->safe_psql('postgres', q{
	INSERT INTO quiet_1 VALUES (2, 'pending');
	ALTER TABLE quiet DETACH PARTITION quiet_1 FINALIZE;
	INSERT INTO quiet_1 VALUES (3, 'detached');
});
wait_bemi($node);
is($node->safe_psql('postgres', q{
	SELECT string_agg("table" || '|' || primary_key || '|' || (after->>'body'), E'\n' ORDER BY id)
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" IN ('quiet', 'quiet_1')}),
	"quiet_1|2|pending\nquiet_1|3|detached",
	'ignored while attached; recorded under its own name once detach is pending');
is($node->safe_psql('postgres', q{
	SELECT string_agg(relation || '|' || statement || '|' || (reason LIKE '%rule % (ignore public.quiet) to none%'), E'\n' ORDER BY id)
	  FROM bemi.gaps WHERE relation = 'public.quiet_1'}),
	'public.quiet_1|ALTER TABLE quiet DETACH PARTITION quiet_1 CONCURRENTLY|true',
	'one gap, committed with the interrupted DETACH CONCURRENTLY; none for FINALIZE');

$node->stop;
done_testing();
