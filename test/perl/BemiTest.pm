# Shared helpers for bemi's TAP tests (test/t/*.pl). Runs inside prove, in the test process, not in
# the server: every test file needs a server with bemi preloaded and a way to wait for the worker,
# and these settings were repeated in each file. prove finds this module through the Makefile
# (PG_PROVE_FLAGS += -I test/perl), so `make tapcheck` and test/run-all both see it.
package BemiTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use Exporter 'import';

our @EXPORT = qw(bemi_node wait_bemi rss_anon);

# A new node with logical WAL and bemi's settings: bemi preloaded, named as an output plugin
# library on servers that have that setting (checked with the node's own postgres binary, since
# a node can run another version's binaries through install_path), and room for one worker per
# database. Options: conf (extra postgresql.conf lines, appended after bemi's, so they win),
# install_path (another installation's binaries), start (default 1; 0 leaves the node stopped).
sub bemi_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name,
		defined $opts{install_path} ? (install_path => $opts{install_path}) : ());
	$node->init(allows_streaming => 'logical');
	my $postgres = defined $opts{install_path} ? "$opts{install_path}/bin/postgres" : 'postgres';
	my $described = `"$postgres" --describe-config`;
	die "could not run $postgres --describe-config" if $? != 0;
	my $opl = $described =~ /^output_plugin_libraries\t/m
	  ? "output_plugin_libraries = 'pgoutput, test_decoding, bemi'" : '';
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'bemi'
$opl
max_worker_processes = 16
} . (defined $ENV{BEMI_WRITERS} ? "bemi.writers = $ENV{BEMI_WRITERS}\n" : '') . ($opts{conf} // ''));
	$node->start if $opts{start} // 1;
	return $node;
}

# Waits until bemi's worker of database $db (default postgres) has recorded everything committed
# so far, failing the test after $timeout seconds (default 300). Returns bemi_wait's answer.
sub wait_bemi
{
	my ($node, $db, $timeout) = @_;
	return $node->safe_psql($db // 'postgres',
		sprintf(q{SELECT bemi_wait(pg_current_wal_lsn(), '%d seconds')}, $timeout // 300));
}

# A process's private memory in kB (RssAnon; RSS also counts the shared buffers it touched), or 0
# when the process is gone.
sub rss_anon
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or return 0;
	my ($kb) = join('', <$fh>) =~ /^RssAnon:\s+(\d+)/m;
	return $kb // 0;
}

1;
