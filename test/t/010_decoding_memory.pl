# The worker decodes for as long as the server runs, and DDL makes it plan a table again: what it
# replaces must be freed. Rounds of DDL on a wide table, each followed by changes the worker
# decodes with a fresh plan; after a first round (which warms every cache), the next rounds must
# not grow the worker's memory: neither its memory contexts (pg_log_backend_memory_contexts) nor
# its private heap (RssAnon, where C++ containers live). A plan leaked per rebuild is ~20 kB here.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BemiTest;
use Time::HiRes qw(sleep);

my $node = bemi_node('decoding_memory', conf => q{
log_statement = none
});
$node->safe_psql('postgres', 'CREATE EXTENSION bemi');
# json columns: each is planned with a to_jsonb call expression, built in the plan's memory.
$node->safe_psql('postgres', 'CREATE TABLE wide (id int PRIMARY KEY, '
	. join(', ', map { "j$_ json" } 1 .. 100) . ')');
$node->safe_psql('postgres', 'CREATE TABLE narrow (id int PRIMARY KEY, v text)');

my $pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM bemi_status()');
ok($pid > 0, 'the worker runs');

# One round: 100 transactions, each a DDL on wide (the worker replans it) and changes of both tables.
my $next = 0;
sub round
{
	my $sql = '';
	for (1 .. 100)
	{
		$next++;
		$sql .= "ALTER TABLE wide ALTER COLUMN j1 SET DEFAULT '$next';\n"
		  . "INSERT INTO wide (id, j2) VALUES ($next, '{\"n\": $next}');\n"
		  . "INSERT INTO narrow VALUES ($next, 'v');\n";
	}
	$node->safe_psql('postgres', $sql);
	wait_bemi($node);
}

# The worker's memory now: [grand total of its memory contexts, RssAnon in kB].
sub memory
{
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
	my $total;
	for (1 .. 600)
	{
		my $log = slurp_file($node->logfile, $offset);
		if ($log =~ /Grand total: (\d+) bytes/) { $total = $1; last; }
		sleep 0.1;
	}
	die 'the worker did not log its memory contexts' unless defined $total;
	my ($rss) = slurp_file("/proc/$pid/status") =~ /^RssAnon:\s+(\d+) kB/m;
	return ($total, $rss);
}

round();
round();
my ($total1, $rss1) = memory();
round() for 1 .. 3;
my ($total2, $rss2) = memory();
note("memory contexts: $total1 -> $total2 bytes; RssAnon: $rss1 -> $rss2 kB");
is($node->safe_psql('postgres', q{SELECT count(*) FROM bemi.changes WHERE operation <> 'DDL' AND "table" = 'wide'}), $next,
	'every change of the replanned table is recorded');
cmp_ok($total2 - $total1, '<', 1_000_000, 'the worker\'s memory contexts do not grow with replanning');
cmp_ok($rss2 - $rss1, '<', 2_000, 'nor does its private heap');

$node->stop;
done_testing();
