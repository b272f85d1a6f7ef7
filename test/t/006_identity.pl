# The key that signs context messages outlives restarts and crashes: a message written before a
# restart, and decoded only after it, still proves who wrote. Without the key file the same WAL
# yields the application context but no identity (the key is what is checked). A standby made
# with pg_basebackup holds the same key.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $node = bemi_node('identity', conf => q{
restart_after_crash = on
log_statement = none
});
my $key_file = $node->data_dir . '/bemi_secret';
ok(-f $key_file, 'the key file is created at first start');
is((stat $key_file)[7], 32, 'it holds 32 bytes');
is((stat $key_file)[2] & 07777, 0600, 'only the server account can read it');
my $key = slurp_file($key_file);

$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE ROLE writer;
	CREATE TABLE ledger (id int PRIMARY KEY, phase text);
	GRANT ALL ON ledger TO writer;
	-- The worker cannot write while public.fault has a row: its batches fail and it keeps the WAL.
	CREATE TABLE fault (on_purpose boolean);
	CREATE FUNCTION fail_batch() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	  IF EXISTS (SELECT FROM public.fault) THEN RAISE EXCEPTION 'injected failure'; END IF;
	  RETURN NULL;
	END $$;
	CREATE TRIGGER fail_batch BEFORE INSERT ON bemi.changes FOR EACH STATEMENT EXECUTE FUNCTION fail_batch();
});

# Writes as `writer`, with context, while the worker cannot record them; waits until it has tried.
sub write_held {
	my ($phase, $first) = @_;
	$node->safe_psql('postgres', q{INSERT INTO fault VALUES (true)});
	$node->safe_psql('postgres', sprintf(q{
		SET ROLE writer;
		BEGIN;
		SELECT bemi_set_context('{"phase": "%s"}');
		INSERT INTO ledger SELECT g, '%s' FROM generate_series(%d, %d) g;
		COMMIT;}, $phase, $phase, $first, $first + 9));
	ok($node->poll_query_until('postgres', q{SELECT last_error LIKE '%injected failure%' FROM bemi_status()}),
		"$phase: the worker holds the changes");
	is($node->safe_psql('postgres', qq{SELECT count(*) FROM bemi.changes WHERE context->>'phase' = '$phase'}),
		'0', "$phase: nothing recorded before the restart");
}

# What the trail says about a phase: rows, rows whose identity is writer's, rows with the context.
sub recorded {
	my ($phase) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT count(*), count(*) FILTER (WHERE context->'_bemi'->>'role' = 'writer'),
		       count(*) FILTER (WHERE context->>'phase' = '$phase')
		  FROM bemi.changes WHERE "table" = 'ledger' AND after->>'phase' = '$phase'});
}

# 1. A clean restart between the write and its decoding.
write_held('clean', 1);
$node->restart;
is(slurp_file($key_file), $key, 'the key survives a restart');
$node->safe_psql('postgres', 'DELETE FROM fault');
wait_bemi($node);
is(recorded('clean'), '10|10|10', 'written before a clean restart, verified after it');

# 2. A crash (immediate stop) between the write and its decoding.
write_held('crash', 11);
$node->stop('immediate');
$node->start;
$node->safe_psql('postgres', 'DELETE FROM fault');
wait_bemi($node);
is(recorded('crash'), '10|10|10', 'written before a crash, verified after it');

# 3. A standby made with pg_basebackup has the same key.
$node->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('identity_standby');
$standby->init_from_backup($node, 'base', has_streaming => 1);
is(slurp_file($standby->data_dir . '/bemi_secret'), $key, 'pg_basebackup copies the key to a standby');
$standby->start;
is(slurp_file($standby->data_dir . '/bemi_secret'), $key, 'the standby keeps it when it starts');
$standby->stop;

# 4. Control: the same sequence with the key file removed before the restart. A new key is made,
# the old messages no longer verify: their application context is kept, no identity is recorded.
write_held('lost key', 21);
$node->stop;
unlink $key_file or die "unlink $key_file: $!";
$node->start;
isnt(slurp_file($key_file), $key, 'a new key is made when the file is missing');
$node->safe_psql('postgres', 'DELETE FROM fault');
wait_bemi($node);
is(recorded('lost key'), '10|0|10', 'messages signed with another key give no identity');
$node->safe_psql('postgres', q{
	SET ROLE writer;
	INSERT INTO ledger VALUES (31, 'new key');
});
wait_bemi($node);
is(recorded('new key'), '1|1|0', 'new writes verify with the new key');

$node->stop;
done_testing();
