# pg_dump / pg_restore carries the trail; on the restored server capture resumes by itself.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;

my $conf = q{
log_statement = none
};
my $old = bemi_node('old', conf => $conf);
$old->safe_psql('postgres', 'CREATE DATABASE shop');
$old->safe_psql('shop', q{
	CREATE EXTENSION bemi;
	CREATE TABLE orders (id int PRIMARY KEY, amount numeric);
	BEGIN;
	SELECT bemi_set_context('{"user_id": 7}');
	INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 20) g;
	COMMIT;
	SELECT bemi_wait();
	SELECT count(*) FROM bemi_set_retention('30 days');
	UPDATE orders SET amount = 0 WHERE id <= 5;
	DELETE FROM orders WHERE id > 15;
	SELECT bemi_wait();
});
my $trail_sql = q{SELECT count(*), md5(string_agg(concat_ws('|', id, primary_key, before, after, context,
	"table", operation, committed_at, transaction_id, position), ',' ORDER BY id)) FROM bemi.changes WHERE id <= 30};
my $trail = $old->safe_psql('shop', $trail_sql);
like($trail, qr/^30\|/, 'the old server recorded 30 changes');
# Retention is on: the trail is in worker-made partitions, which pg_dump carries as tables.
my $parts_sql = q{SELECT string_agg(format('%s %s %s', partition_name, from_time, to_time), ', ')
	FROM bemi_partitions()};
my $parts = $old->safe_psql('shop', $parts_sql);
is($old->safe_psql('shop', q{SELECT count(*) FROM bemi.changes_default}), '0', 'nothing is left in the default partition');

my $dump = $old->basedir . '/shop.dump';
$old->command_ok([ 'pg_dump', '-Fc', '-h', $old->host, '-p', $old->port, '-f', $dump, 'shop' ], 'pg_dump');
$old->stop;

my $new = bemi_node('new', conf => $conf);
$new->safe_psql('postgres', 'CREATE DATABASE shop');
$new->command_ok([ 'pg_restore', '-h', $new->host, '-p', $new->port, '-d', 'shop', $dump ], 'pg_restore');

is($new->safe_psql('shop', $trail_sql), $trail, 'the restored trail is identical');
is($new->safe_psql('shop', $parts_sql), $parts, 'with the same partitions');
is($new->safe_psql('shop', 'SELECT retention FROM bemi.retention'), '30 days', 'and the same retention');
is($new->safe_psql('shop', 'SELECT worker_state FROM bemi_status()'), 'running', 'capture runs on the restored server');
$new->safe_psql('shop', q{
	BEGIN;
	SELECT bemi_set_context('{"user_id": 8}');
	UPDATE orders SET amount = 1 WHERE id = 1;
	COMMIT;
});
$new->safe_psql('shop', 'SELECT bemi_wait()');
is($new->safe_psql('shop', q{
	SELECT operation, before->>'amount', after->>'amount', context->>'user_id', id > 30
	  FROM bemi.changes WHERE context->>'user_id' = '8'}),
	'UPDATE|0|1|8|t', 'new changes are recorded after the restored history');
# Restoring the rows of orders was itself a set of writes, and is recorded as such (before the
# restore adds the primary key, so without one).
is($new->safe_psql('shop', q{
	SELECT count(*), count(primary_key) FROM bemi.changes WHERE id > 30 AND operation = 'CREATE'}),
	'15|0', 'the restore\'s own writes are recorded');
$new->stop;
done_testing();
