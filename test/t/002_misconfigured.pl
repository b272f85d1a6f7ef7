# A server that cannot capture is told which setting to change. CREATE EXTENSION still installs
# the trail there (such a database can be another database's destination, issue 16), with a
# warning naming what capture needs, and bemi_status() lists the problem; writes are unaffected.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

# Not preloaded.
my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init(allows_streaming => 'logical');
$node->start;
my ($ret, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION bemi');
is($ret, 0, 'CREATE EXTENSION works without shared_preload_libraries (a destination)');
like($err, qr/WARNING:  bemi does not capture the changes of this database: bemi is not loaded at server start/,
	'the warning says why');
like($err, qr/shared_preload_libraries/, 'the hint names shared_preload_libraries');
is($node->safe_psql('postgres', q{SELECT 'shared_preload_libraries must include bemi' = ANY (settings_problems) FROM bemi_status()}),
	't', 'bemi_status() lists the problem');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots}), '0', 'no slot is made');
$node->safe_psql('postgres', 'CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t'), '1', 'writes unaffected');
$node->stop;

# wal_level below logical.
my $replica = bemi_node('wal_replica', conf => q{
wal_level = replica
});
($ret, $out, $err) = $replica->psql('postgres', 'CREATE EXTENSION bemi');
is($ret, 0, 'CREATE EXTENSION works with wal_level = replica (a destination)');
like($err, qr/wal_level is not logical/, 'the warning says why');
like($err, qr/wal_level = logical/, 'the hint names wal_level');
# Writes still work on such a server: bemi never breaks the application.
$replica->safe_psql('postgres', 'CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)');
is($replica->safe_psql('postgres', 'SELECT count(*) FROM t'), '1', 'writes unaffected');
is($replica->safe_psql('postgres', 'SELECT count(*) FROM bemi.changes'), '0', 'and not captured');
$replica->stop;

done_testing();
