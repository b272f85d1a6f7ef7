# A server that cannot capture gets an error naming the setting to change.
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
isnt($ret, 0, 'CREATE EXTENSION fails without shared_preload_libraries');
like($err, qr/bemi must be loaded at server start/, 'the error says why');
like($err, qr/shared_preload_libraries/, 'the hint names shared_preload_libraries');
$node->stop;

# wal_level below logical.
my $replica = bemi_node('wal_replica', conf => q{
wal_level = replica
});
($ret, $out, $err) = $replica->psql('postgres', 'CREATE EXTENSION bemi');
isnt($ret, 0, 'CREATE EXTENSION fails with wal_level = replica');
like($err, qr/wal_level = logical/, 'the error names wal_level');
# Writes still work on such a server: bemi never breaks the application.
$replica->safe_psql('postgres', 'CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)');
is($replica->safe_psql('postgres', 'SELECT count(*) FROM t'), '1', 'writes unaffected');
$replica->stop;

done_testing();
