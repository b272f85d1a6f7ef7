# Failover to a physical standby on PostgreSQL 17 and later: bemi's slot is created
# failover-ready, a standby with sync_replication_slots carries it, and after promotion the new
# primary's worker goes on from it: every change committed on the old primary is in bemi.changes
# once, none twice, and no gap is recorded.
#
# Runs with another version's binaries (PostgreSQL::Test::Cluster's install_path): test/run-all
# sets BEMI_FAILOVER_INSTALL to the install directory of the newest PostgreSQL 17+ it found (with
# bemi installed). Skipped without it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $install = $ENV{BEMI_FAILOVER_INSTALL};
plan skip_all => 'BEMI_FAILOVER_INSTALL (a PostgreSQL 17+ with bemi) is not set'
  unless $install && -x "$install/bin/postgres";

my $primary = bemi_node('failover_primary', install_path => $install, conf => q{
synchronized_standby_slots = 'standby_1'
});
$primary->safe_psql('postgres', q{
	SELECT pg_create_physical_replication_slot('standby_1');
	CREATE EXTENSION bemi;
	CREATE TABLE ledger (id int PRIMARY KEY, phase text);
	INSERT INTO ledger SELECT g, 'before the standby' FROM generate_series(1, 100) g;
});
is($primary->safe_psql('postgres', 'SELECT bemi_wait()'), 't', 'the primary captures');
is($primary->safe_psql('postgres', q{
	SELECT failover FROM pg_replication_slots WHERE slot_name LIKE 'bemi\_%'}), 't',
	'the capture slot is created failover-ready');

$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('failover_standby', install_path => $install);
$standby->init_from_backup($primary, 'b', has_streaming => 1);
my $conninfo = $primary->connstr . ' dbname=postgres';
$standby->append_conf('postgresql.conf', qq{
primary_slot_name = 'standby_1'
primary_conninfo = '$conninfo'
hot_standby_feedback = on
sync_replication_slots = on
});
$standby->start;

$primary->safe_psql('postgres',
	q{INSERT INTO ledger SELECT g, 'with the standby' FROM generate_series(101, 200) g});
$primary->safe_psql('postgres', 'SELECT bemi_wait()');
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
ok($standby->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_replication_slots
	 WHERE slot_name LIKE 'bemi\_%' AND synced AND NOT temporary}),
	'the standby carries the capture slot');

# Committed and replayed on the standby, perhaps not yet captured on the primary when it dies.
$primary->safe_psql('postgres',
	q{UPDATE ledger SET phase = 'last on the old primary' WHERE id > 150});
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
$primary->stop('immediate');
$standby->promote;

$standby->safe_psql('postgres',
	q{INSERT INTO ledger SELECT g, 'on the new primary' FROM generate_series(201, 250) g});
is($standby->safe_psql('postgres', 'SELECT bemi_wait()'), 't', 'the new primary captures');
is($standby->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE operation = 'CREATE') || ' creates, '
	    || count(*) FILTER (WHERE operation = 'UPDATE') || ' updates, '
	    || count(DISTINCT (operation, primary_key)) || ' distinct'
	  FROM bemi.changes WHERE "table" = 'ledger' AND operation <> 'DDL'}),
	'250 creates, 50 updates, 300 distinct', 'every change once: nothing lost, nothing doubled');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM bemi.gaps'), '0', 'no gap recorded');
is($standby->safe_psql('postgres', q{
	SELECT count(*) FROM bemi.changes WHERE "table" = 'ledger' AND operation = 'UPDATE'
	   AND after->>'phase' = 'last on the old primary'}), '50',
	'the old primary\'s last transaction is in the trail');

$standby->stop;
done_testing();
