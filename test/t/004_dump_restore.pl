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

# Tracking rules of every kind, in a second dump (the first restore below is the plain one of a
# trail without rules). Each rule change is recorded too; one rule made and dropped, so the id
# sequence is past the last rule's id. Roles are not in a database's dump: etl exists on both
# servers. auth sorts before bemi: a plain restore would load auth.users before bemi.rules.
$old->safe_psql('postgres', 'CREATE ROLE etl LOGIN');
$old->safe_psql('shop', q{
	CREATE TABLE sessions (id int PRIMARY KEY, token text);
	CREATE TABLE posts (id int PRIMARY KEY, title text, views int);
	CREATE TABLE users (id int PRIMARY KEY, email text, password text, api_token text, ssn text);
	CREATE SCHEMA auth;
	CREATE TABLE auth.users (id int PRIMARY KEY, password text);
	GRANT SELECT, INSERT, UPDATE ON posts TO etl;
	SELECT bemi_ignore('public.sessions');
	SELECT bemi_ignore('public.posts', '{views}');
	SELECT bemi_mask('public.users', '{password}');
	SELECT bemi_mask('public.users', '{api_token}', 'hash');
	SELECT bemi_mask('public.users', '{ssn}', 'drop');
	SELECT bemi_mask('auth.users', '{password}');
	SELECT bemi_ignore_writer(role => 'etl');
	SELECT bemi_ignore_writer(application_name => 'nightly-job');
	SELECT bemi_drop_rule(bemi_ignore('public.scratch'));
	INSERT INTO users VALUES (1, 'ann@example.com', 'pw-1', 'tok-A', 'ssn-1');
	INSERT INTO auth.users VALUES (1, 'auth-pw-1');
	SELECT bemi_wait();
});
my $rules_sql = q{SELECT string_agg(concat_ws('|', id, kind, target, columns, method, role, application_name,
	created_by, created_at), E'\n' ORDER BY id) FROM bemi.rules};
my $rules = $old->safe_psql('shop', $rules_sql);
is(scalar(split /\n/, $rules), 8, 'the old server has 8 rules');
my $next_rule = $old->safe_psql('shop', 'SELECT last_value + 1 FROM bemi.rules_id_seq');
my $old_hash = $old->safe_psql('shop', q{SELECT after->>'api_token' FROM bemi.changes WHERE schema = 'public' AND "table" = 'users'});
like($old_hash, qr/^hmac:[0-9a-f]{64}$/, 'the old server hashed the token');
my $count2 = $old->safe_psql('shop', 'SELECT count(*) FROM bemi.changes');
my $dump2 = $old->basedir . '/shop2.dump';
$old->command_ok([ 'pg_dump', '-Fc', '-h', $old->host, '-p', $old->port, '-f', $dump2, 'shop' ], 'pg_dump with rules');
$old->stop;

my $new = bemi_node('new', conf => $conf);
$new->safe_psql('postgres', 'CREATE ROLE etl LOGIN');
$new->safe_psql('postgres', 'CREATE DATABASE shop');
$new->safe_psql('postgres', 'CREATE DATABASE shop_refused');
# The trail is loaded as a superuser who says so (docs/guarantees.md, "Backups"): without it,
# bemi refuses the COPY into bemi.changes.
{
	local $ENV{PGOPTIONS} = '-c bemi.allow_trail_changes=off';
	$new->command_fails([ 'pg_restore', '-h', $new->host, '-p', $new->port, '-d', 'shop_refused', $dump ],
		'pg_restore without bemi.allow_trail_changes: the trail is refused');
}
# Only the restore's sessions: a session with the setting on is itself left out of the trail.
my $restoring = '-c bemi.allow_trail_changes=on';
{
	local $ENV{PGOPTIONS} = $restoring;
	$new->command_ok([ 'pg_restore', '-h', $new->host, '-p', $new->port, '-d', 'shop', $dump ], 'pg_restore');
}

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
# The hash chain survives the dump (its encoding is of values, jsonb's binary form is one per
# value): the restored trail verifies, and the new change links to the restored head.
is($new->safe_psql('shop', q{SELECT count(*) FROM bemi_verify()}), '0', 'the restored trail and what follows verify');
is($new->safe_psql('shop', q{
	SELECT c.previous_id = (SELECT max(id) FROM bemi.changes WHERE id < c.id) FROM bemi.changes c WHERE context->>'user_id' = '8'}),
	't', 'the new change links to the restored trail');
# The restore set bemi.allow_trail_changes, so its own loads (orders' rows) are not recorded as
# new changes on top of the restored history: each table it loaded is named in bemi.gaps.
is($new->safe_psql('shop', q{SELECT count(*) FROM bemi.changes WHERE id > 30 AND operation = 'CREATE'}),
	'0', 'the restore\'s own loads are not recorded');
is($new->safe_psql('shop', q{
	SELECT count(*) FROM bemi.gaps WHERE relation = 'public.orders' AND reason LIKE 'COPY of public.orders by a session with bemi.allow_trail_changes on%'}),
	'1', 'and the load of orders is named in bemi.gaps');
is($new->safe_psql('shop', q{SELECT count(*) FROM bemi.changes WHERE id <= 30}), '30',
	'no change of the restore took an id of the restored trail');

# The second dump, restored in one transaction: capture starts when it commits, so nothing of the
# restore is recorded either way. docs/guarantees.md, "Backups".
$new->safe_psql('postgres', 'CREATE DATABASE shop3');
{
	local $ENV{PGOPTIONS} = $restoring;
	$new->command_ok([ 'pg_restore', '-h', $new->host, '-p', $new->port, '-d', 'shop3', '--single-transaction', $dump2 ],
		'pg_restore --single-transaction');
}
$new->safe_psql('shop3', 'SELECT bemi_wait()');
is($new->safe_psql('shop3', 'SELECT count(*) FROM bemi.changes'), $count2,
	'restored in one transaction: the restore\'s own loads are not recorded');
# The rules came with the trail, ids, authors and times included, and the rule id sequence goes on.
is($new->safe_psql('shop3', $rules_sql), $rules, 'the rules are restored as they were');
is($new->safe_psql('shop3', q{SELECT bemi_ignore('public.later')}), $next_rule,
	'a new rule takes the next id of the old sequence');
# Changes after the restore are judged by the restored rules.
my $mark = $new->safe_psql('shop3', 'SELECT max(id) FROM bemi.changes');
$new->safe_psql('shop3', q{
	INSERT INTO sessions VALUES (1, 's1');
	INSERT INTO posts VALUES (1, 'hello', 0);
	UPDATE posts SET views = 1;
	UPDATE posts SET title = 'hello 2';
	INSERT INTO users VALUES (2, 'bob@example.com', 'pw-2', 'tok-A', 'ssn-2');
	UPDATE auth.users SET password = 'auth-pw-2';
});
$new->safe_psql('shop3', q{SET application_name = 'nightly-job'; INSERT INTO posts VALUES (2, 'nightly', 0)});
$new->safe_psql('shop3', q{INSERT INTO posts VALUES (3, 'etl', 0)}, extra_params => [ '-U', 'etl' ]);
$new->safe_psql('shop3', 'SELECT bemi_wait()');
is($new->safe_psql('shop3', qq{
	SELECT string_agg(format('%s:%s:%s', "table", operation, primary_key), ',' ORDER BY id)
	  FROM bemi.changes WHERE id > $mark AND "table" IN ('sessions', 'posts', 'users')}),
	'posts:CREATE:1,posts:UPDATE:1,users:CREATE:2,users:UPDATE:1',
	'ignored table, ignored-only update, ignored role and application: not recorded');
is($new->safe_psql('shop3', qq{
	SELECT after->>'email', after->>'password', after->>'api_token' ~ '^hmac:[0-9a-f]{64}\$', after ? 'ssn'
	  FROM bemi.changes WHERE id > $mark AND schema = 'public' AND "table" = 'users'}),
	'bob@example.com|[masked]|t|f', 'masked after the restore: redact, hash, drop');
is($new->safe_psql('shop3', q{SELECT count(*) FROM bemi.changes WHERE concat(before, after) ~ '"(pw-1|pw-2|tok-A|ssn-1|ssn-2|auth-pw-1|auth-pw-2)"'}),
	'0', 'no masked value in clear in the trail');
# A hash is keyed by the server's key file and the database: the same value hashes differently here.
isnt($new->safe_psql('shop3', qq{SELECT after->>'api_token' FROM bemi.changes WHERE id > $mark AND schema = 'public' AND "table" = 'users'}),
	$old_hash, 'hashes of the same value differ across servers');
$new->stop;
done_testing();
