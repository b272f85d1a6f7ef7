# Abuse of the worker by ordinary roles (issue 10): look-alike functions planted for the worker's
# superuser SQL, a batch of contexts past 1 GB, a primary key too big for bemi's index, and the
# backoff while every attempt fails. Each compares bemi.changes with the tables themselves.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;
use Time::HiRes qw(sleep time);

my $node = bemi_node('abuse', conf => q{
log_statement = none
});

# 1. appowner owns a database and may create in its public schema. It plants look-alikes of
# every function and operator the worker's statements use; each records who ran it and, when
# that is a superuser, makes appowner one. The worker writes batches and runs its upkeep (a
# partition a second): none of them may ever run.
$node->safe_psql('postgres', q{
	CREATE ROLE appowner LOGIN;
	CREATE DATABASE app OWNER appowner;
});
$node->safe_psql('app', 'CREATE EXTENSION bemi');
# (The tables are made by the superuser: bemi's CREATE TABLE event trigger is another helper's.)
$node->safe_psql('app', q{
	CREATE TABLE public.caught (who name, what text, at timestamptz DEFAULT clock_timestamp());
	CREATE TABLE public.app_rows (id int PRIMARY KEY, note text);
	ALTER TABLE public.caught OWNER TO appowner;
	ALTER TABLE public.app_rows OWNER TO appowner;
});
$node->safe_psql('app', q{
	SET ROLE appowner;
	CREATE FUNCTION public.trap(what text) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
	  INSERT INTO public.caught (who, what) VALUES (current_user, what);
	  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
	    EXECUTE 'ALTER ROLE appowner SUPERUSER';
	  END IF;
	END $$;
	CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
	CREATE FUNCTION public.unnest(a jsonb[]) RETURNS SETOF jsonb LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('unnest(jsonb[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
	CREATE FUNCTION public.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('unnest(bigint[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
	CREATE FUNCTION public.unnest(a timestamptz[]) RETURNS SETOF timestamptz LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('unnest(timestamptz[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
	CREATE FUNCTION public.unnest(a pg_lsn[]) RETURNS SETOF pg_lsn LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('unnest(pg_lsn[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
	CREATE FUNCTION public.unnest(a oid[]) RETURNS SETOF oid LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('unnest(oid[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
	CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('now()'); RETURN pg_catalog.now(); END $$;
	CREATE FUNCTION public.text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.trap('= (text, text)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
	CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);
});
is($node->safe_psql('app', q{SET ROLE appowner; SELECT count(*) FROM public.unnest(ARRAY['a']::text[])}), '1',
	'the look-alikes work when called (appowner calls one)');
$node->safe_psql('app', 'TRUNCATE public.caught');
$node->safe_psql('app', q{SELECT count(*) FROM bemi_set_retention(NULL, '1 second')});
my $horizon = $node->safe_psql('app', 'SELECT max(to_time) FROM bemi_partitions()');
# Upkeep runs at the worker's start, then as often as retention needs (every second now).
$node->safe_psql('app', 'SELECT pg_terminate_backend(worker_pid) FROM bemi_status()');
for my $round (1 .. 6) {
	$node->safe_psql('app', sprintf(q{
		SET ROLE appowner;
		INSERT INTO public.app_rows SELECT g, 'round %d' FROM generate_series(%d, %d) g;
		UPDATE public.app_rows SET note = note || '!' WHERE id / 100 = %d AND id %% 7 = 0;}, $round, $round * 100,
		$round * 100 + 99, $round));
	wait_bemi($node, 'app', 120);
}
ok($node->poll_query_until('app', qq{SELECT max(to_time) >= '$horizon'::timestamptz + interval '4 seconds' FROM bemi_partitions()}),
	'the worker ran its upkeep several times (a new partition each second)');
wait_bemi($node, 'app', 120);
is($node->safe_psql('app', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'appowner'}), 'f',
	'appowner is still not superuser');
is($node->safe_psql('app', q{SELECT count(*) || ' ' || coalesce(string_agg(DISTINCT who || ':' || what, ', '), '')
	FROM public.caught}), '0 ', 'no look-alike ran inside the worker');
is($node->safe_psql('app', q{
	SELECT count(*) FILTER (WHERE operation = 'CREATE'), count(DISTINCT primary_key) FILTER (WHERE operation = 'CREATE'),
	       count(*) FILTER (WHERE operation = 'UPDATE')
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'app_rows'}),
	$node->safe_psql('app', q{SELECT count(*), count(*), count(*) FILTER (WHERE id % 7 = 0) FROM public.app_rows}),
	'every change of appowner is recorded exactly once');
is($node->safe_psql('app', 'SELECT worker_state, last_error IS NULL FROM bemi_status()'), 'running|t',
	'the worker runs without error');

# 2. One writer's 1 MB context on 1200 rows: 1.2 GB of contexts in one transaction. Batches are
# bounded by all their bytes, so no column array nears 1 GB: everything is recorded, and the
# next change of another table too, with the worker's memory bounded.
$node->safe_psql('postgres', q{
	CREATE EXTENSION bemi;
	CREATE TABLE pub (id int PRIMARY KEY, note text);
	CREATE TABLE after_dos (id int PRIMARY KEY);
});
wait_bemi($node, undef, 120);
my $pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM bemi_status()');
my $started = time();
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT bemi_set_context(jsonb_build_object('blob', repeat('x', 1000000)));
	INSERT INTO pub SELECT g, 'dos' FROM generate_series(1, 1200) g;
	COMMIT;
	INSERT INTO after_dos VALUES (1);
});
my $peak = 0;
for (1 .. 240) {
	my ($waited) = $node->psql('postgres', q{SELECT bemi_wait(pg_current_wal_lsn(), '500 milliseconds')});
	my $rss = rss_anon($pid);
	$peak = $rss if $rss > $peak;
	last if $waited == 0;
}
my $took = time() - $started;
is($node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT primary_key), count(*) FILTER (WHERE length(context->>'blob') = 1000000)
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'pub'}), '1200|1200|1200', 'all 1200 changes recorded with their whole context');
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'after_dos'}), '1',
	'the next change of another table is recorded too');
diag(sprintf('1.2 GB of contexts recorded in %.1f s; worker peak private RSS %.1f MB', $took, $peak / 1024));
ok($peak > 0 && $peak < 512 * 1024, 'worker peak private RSS under 512 MB');
is($node->safe_psql('postgres', 'SELECT worker_state, last_error IS NULL FROM bemi_status()'), 'running|t',
	'no batch failed');

# 3. A primary key too big for bemi's index on ("table", primary_key, ...): 2.6 kB of random bytes
# fit the table's own index, but not as 5 kB of text. The change is recorded with the reason in
# place of its images and without its key; capture goes on.
$node->safe_psql('postgres', q{
	CREATE TABLE keyed (k bytea PRIMARY KEY, v int);
	INSERT INTO keyed VALUES ('\x01', 1);
	INSERT INTO keyed SELECT decode(string_agg(lpad(to_hex((random() * 255)::int), 2, '0'), ''), 'hex'), 2
	  FROM generate_series(1, 2600);
	INSERT INTO keyed VALUES ('\x03', 3);
});
wait_bemi($node, undef, 120);
like($node->safe_psql('postgres', q{
	SELECT string_agg(coalesce(after->>'v', after->>'_bemi_write_error'), ' | ' ORDER BY position)
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'keyed' AND primary_key IS DISTINCT FROM '\x01'}),
	qr/^index row size \d+ exceeds .* \| 3$/, 'the unwritable change is recorded with the reason, the next one as usual');
is($node->safe_psql('postgres', q{
	SELECT count(*), count(primary_key), count(*) FILTER (WHERE "before" ? '_bemi_write_error')
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'keyed'}), '3|2|1', 'every change recorded once; the too-big key is NULL');
like($node->safe_psql('postgres', 'SELECT last_error FROM bemi_status()'),
	qr/"public\.keyed" at [0-9A-F]+\/[0-9A-F]+ was recorded without its images: index row size/,
	'bemi_status() says which change lost its images and why');
is($node->safe_psql('postgres', 'SELECT worker_state FROM bemi_status()'), 'running', 'the worker is running');
$node->safe_psql('postgres', q{INSERT INTO keyed VALUES ('\x04', 4)});
wait_bemi($node, undef, 120);
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'keyed'}), '4',
	'later changes are recorded');

# 4. Every attempt fails (a trigger on bemi.changes): writers keep committing, and each commit
# wakes the worker, yet the wait between attempts grows; bemi_status() says `failing`. Nothing
# is skipped: a systemic failure is retried, never replaced.
$node->safe_psql('postgres', q{
	CREATE TABLE fault (on_purpose boolean);
	CREATE FUNCTION fail_batch() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	  IF EXISTS (SELECT FROM public.fault) THEN RAISE EXCEPTION 'injected failure'; END IF;
	  RETURN NULL;
	END $$;
	CREATE TRIGGER fail_batch BEFORE INSERT ON bemi.changes FOR EACH STATEMENT EXECUTE FUNCTION fail_batch();
	CREATE TABLE busy (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
	INSERT INTO fault VALUES (true);
	INSERT INTO busy DEFAULT VALUES;
});
ok($node->poll_query_until('postgres', q{SELECT failures >= 1 FROM bemi._worker_state()}), 'the first attempt failed');
my $base = $node->safe_psql('postgres', 'SELECT failures FROM bemi._worker_state()');
my ($t0, $last, @changes_at) = (time(), $base);
my %states;
while (time() - $t0 < 14) {
	my ($failures, $state) = split /\|/, $node->safe_psql('postgres', q{
		INSERT INTO busy DEFAULT VALUES;
		SELECT failures, worker_state FROM bemi._worker_state()});
	$states{$state}++;
	if ($failures != $last) {
		push @changes_at, time() - $t0;
		$last = $failures;
	}
	sleep(0.1);
}
my $attempts = $last - $base;
diag("failed attempts in 14 s of commits: $attempts, at " . join(', ', map { sprintf('%.1f s', $_) } @changes_at));
ok($attempts >= 2 && $attempts <= 5, "the retries slow down: $attempts failed attempts in 14 s (1 s, 2 s, 4 s, 8 s waits)");
ok(@changes_at >= 2 && $changes_at[-1] - $changes_at[-2] >= 3,
	'the last wait was longer than 3 s although writers kept committing');
is(join(',', sort keys %states), 'failing', 'bemi_status() said `failing` throughout');
like($node->safe_psql('postgres', 'SELECT last_error FROM bemi_status()'), qr/injected failure/, 'with the error');
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'busy'}), '0',
	'no change was skipped or replaced meanwhile');
$node->safe_psql('postgres', 'DELETE FROM fault');
wait_bemi($node, undef, 120);
is($node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT primary_key), count(*) FILTER (WHERE "after" ? '_bemi_write_error')
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'busy'}),
	$node->safe_psql('postgres', 'SELECT count(*), count(*), 0 FROM busy'),
	'after the fault: every change recorded exactly once, as it was');
is($node->safe_psql('postgres', 'SELECT worker_state, failures FROM bemi._worker_state()'), 'running|0',
	'the worker is running again');

# 5. Each change carries its table's OID: the root's for a partition, TRUNCATE too.
$node->safe_psql('postgres', q{
	CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
	CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
	CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (100) TO (200);
	INSERT INTO parted VALUES (1), (150);
	TRUNCATE parted;
});
wait_bemi($node, undef, 120);
is($node->safe_psql('postgres', q{
	SELECT count(*), count(*) FILTER (WHERE c.table_oid = to_regclass(pg_catalog.quote_ident(c.schema) || '.' ||
	                                                                  pg_catalog.quote_ident(c."table")))
	  FROM bemi.changes c WHERE operation <> 'DDL' AND c."table" IN ('parted', 'keyed', 'busy', 'pub', 'after_dos')}),
	$node->safe_psql('postgres', q{SELECT count(*) || '|' || count(*) FROM bemi.changes
	  WHERE operation <> 'DDL' AND "table" IN ('parted', 'keyed', 'busy', 'pub', 'after_dos')}),
	'every change names its table by OID');
is($node->safe_psql('postgres', q{
	SELECT string_agg(operation || ':' || (table_oid = 'parted'::regclass), ',' ORDER BY position)
	  FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'parted'}), 'CREATE:true,CREATE:true,TRUNCATE:true',
	'partitions are recorded under the root\'s OID, TRUNCATE once');

# 6. A long backoff does not hold up DROP EXTENSION or DROP DATABASE: the worker notices within
# about a second, drops or releases its slot, and goes.
for my $drop ('DROP EXTENSION', 'DROP DATABASE') {
	$node->safe_psql('postgres', 'CREATE DATABASE failing_db');
	$node->safe_psql('failing_db', q{
		CREATE EXTENSION bemi;
		CREATE FUNCTION fail_batch() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'injected failure'; END $$;
		CREATE TRIGGER fail_batch BEFORE INSERT ON bemi.changes FOR EACH STATEMENT EXECUTE FUNCTION fail_batch();
		CREATE TABLE t (id int PRIMARY KEY);
		INSERT INTO t VALUES (1);
	});
	ok($node->poll_query_until('failing_db', q{SELECT failures >= 3 AND worker_pid IS NOT NULL FROM bemi._worker_state()}),
		"$drop: the worker failed three times and waits 4 s or more before its next attempt");
	my $slots_before = $node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bemi%'});
	my $began = time();
	if ($drop eq 'DROP EXTENSION') {
		$node->safe_psql('failing_db', 'SET bemi.allow_drop = on; DROP EXTENSION bemi');
		ok($node->poll_query_until('postgres', qq{
			SELECT count(*) = $slots_before - 1 FROM pg_replication_slots WHERE slot_name LIKE 'bemi%'}),
			'DROP EXTENSION: the slot is dropped');
		$node->safe_psql('postgres', 'SET bemi.allow_drop = on; DROP DATABASE failing_db');
	}
	else {
		$node->safe_psql('postgres', 'SET bemi.allow_drop = on; DROP DATABASE failing_db');
		is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bemi%'}),
			$slots_before - 1, 'DROP DATABASE: the slot went with the database');
	}
	my $took = time() - $began;
	ok($took < 3.5, sprintf('%s took %.1f s during a backoff of 4 s or more', $drop, $took));
}

$node->stop;
done_testing();
