# DxTest: what docextract's TAP tests share: a real cluster with the worker
# preloaded, the scripted model server, and small helpers to talk to both.
package DxTest;

use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(basename dirname);
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use Exporter 'import';
our @EXPORT = qw(start_model_server server_script server_release server_requests server_stats server_reset
  hook_script hooks_received
  new_node fixture add_invoice_template wait_for_status wait_for_status_in worker_pid json_of catalog_lines
  wait_until wait_inflight wait_abandoned);

our $root = abs_path(dirname(__FILE__) . '/../..');
my @servers;
my $http = HTTP::Tiny->new(timeout => 30);

sub fixture { return "$root/test/fixtures/$_[0]"; }

sub json_of { return decode_json($_[0]); }

# Start test/model_server.py on a free port; returns {url, pid, port}.
sub start_model_server
{
	my (%opt) = @_;
	my $port_file = "$PostgreSQL::Test::Utils::tmp_check/model_port_" . scalar(@servers) . "_$$";
	my $log = "$PostgreSQL::Test::Utils::log_path/model_server_" . scalar(@servers) . ".log";
	my $python = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';
	my @cmd = ($python, "$root/test/model_server.py", '--port-file', $port_file);
	push @cmd, '--api-key', $opt{api_key} if defined $opt{api_key};
	push @cmd, '--delay-ms', $opt{delay_ms} if defined $opt{delay_ms};
	unlink $port_file;
	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $log);
		open(STDERR, '>>', $log);
		exec(@cmd) or die "exec @cmd: $!";
	}
	push @servers, $pid;
	for (1 .. 200)
	{
		last if -s $port_file;
		usleep(50_000);
	}
	die "model server did not start (see $log)" unless -s $port_file;
	my $port = slurp_file($port_file);
	return { pid => $pid, port => $port, url => "http://127.0.0.1:$port" };
}

sub server_script
{
	my ($srv, @actions) = @_;
	my $r = $http->post("$srv->{url}/_script",
		{ content => encode_json(\@actions), headers => { 'Content-Type' => 'application/json' } });
	die "script failed: $r->{status}" unless $r->{success};
}

# Let the answers held under name go (a script's { hold => name }).
sub server_release
{
	my ($srv, $name) = @_;
	$http->post("$srv->{url}/_release/$name")->{success} or die "release $name failed";
}

sub server_requests
{
	my ($srv) = @_;
	return decode_json($http->get("$srv->{url}/_requests")->{content});
}

# The webhook receiver: script its answers, read what it received.
sub hook_script
{
	my ($srv, @actions) = @_;
	$http->post("$srv->{url}/_hook_script",
		{ content => encode_json(\@actions), headers => { 'Content-Type' => 'application/json' } })
	  ->{success} or die "hook script failed";
}

sub hooks_received
{
	my ($srv, $path) = @_;
	my $all = decode_json($http->get("$srv->{url}/_hooks")->{content});
	return [ grep { !defined $path || $_->{path} eq $path } @$all ];
}

sub server_reset
{
	my ($srv) = @_;
	$http->get("$srv->{url}/_reset")->{success} or die "reset failed";
}

sub server_stats
{
	my ($srv) = @_;
	return decode_json($http->get("$srv->{url}/_stats")->{content});
}

# Polls cond every 25 ms until it holds, for up to the suite's timeout
# (PG_TEST_TIMEOUT_DEFAULT, 180 s, as poll_query_until): a loaded machine
# is slow, not wrong, so no wait is shorter.  False, with a diag, if never.
sub wait_until
{
	my ($cond, $what) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (time < $deadline)
	{
		return 1 if $cond->();
		usleep(25_000);
	}
	diag("timed out waiting for " . ($what // 'a condition'));
	return 0;
}

# The model server holds exactly n requests; abandoned at least n.
sub wait_inflight
{
	my ($srv, $n) = @_;
	return wait_until(sub { server_stats($srv)->{inflight} == $n }, "$n request(s) in flight");
}

sub wait_abandoned
{
	my ($srv, $n) = @_;
	return wait_until(sub { server_stats($srv)->{abandoned} >= $n }, "$n request(s) abandoned");
}

# A started cluster with docextract preloaded and the extension created.
# The poll interval is long on purpose: work must be picked up because the
# committing backend woke the worker, not because the worker polled.
# docextract.workers defaults to half the machine's cores: pinned to 1, and
# worker slots to 32, so that a test sees the same processes on any machine
# (on 8 cores, 4 job workers left 024's extract_sync calls one slot of 8).
# A test's own conf comes after, and wins.
sub new_node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name,
		$opt{install_path} ? (install_path => $opt{install_path}) : ());
	$node->init;
	$node->append_conf('postgresql.conf', qq{
log_line_prefix = '%m [%p] %e %q%a '
shared_preload_libraries = 'docextract'
max_worker_processes = 32
docextract.workers = 1
docextract.poll_interval = '60s'
docextract.max_inflight = 8
docextract.credits = '} . ($opt{credits} // 'track') . q{'
} . ($opt{conf} // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION docextract') unless $opt{no_extension};
	return $node;
}

our $INVOICE_SCHEMA = encode_json({
	general_part => {
		invoice_number => { name => 'Invoice Number', format_type => 'text', position => 1 },
		invoice_date => { name => 'Invoice Date', format_type => 'date', position => 2,
			prompt => 'The date the invoice was issued' },
		due_date => { name => 'Due Date', format_type => 'date', position => 3 },
		currency => { name => 'Currency', format_type => 'multiple_choice',
			format_options => [ 'EUR', 'USD', 'GBP' ], position => 4 },
		paid => { name => 'Paid', format_type => 'boolean', position => 5 },
		subtotal => { name => 'Subtotal', format_type => 'number', position => 6 },
		total_amount => { name => 'Total Amount', format_type => 'number', position => 7 },
	},
	table_part => {
		description => { name => 'Description', format_type => 'text', position => 1 },
		quantity => { name => 'Quantity', format_type => 'number', position => 2 },
		amount => { name => 'Amount', format_type => 'number', position => 3 },
	},
});

sub add_invoice_template
{
	my ($node, $role) = @_;
	my $set = $role ? "SET ROLE $role;" : '';
	return $node->safe_psql('postgres', qq{$set
		SELECT docextract.create_template('invoice', '$INVOICE_SCHEMA',
		  '{"global_instructions": "Amounts are in the invoice currency.",
		    "general_prompt": "Read the invoice header.",
		    "table_prompt": "Read every line item."}')});
}

# Wait until the extraction reaches one of the given statuses; returns it.
sub wait_for_status
{
	my ($node, $id, @statuses) = @_;
	return wait_for_status_in($node, 'postgres', $id, @statuses);
}

# The status returned is the one the poll saw: read again, a status that
# does not last (retrying, processing) could already be the next one.
sub wait_for_status_in
{
	my ($node, $db, $id, @statuses) = @_;
	my %wanted = map { $_ => 1 } @statuses;
	my $status = '';
	wait_until(
		sub {
			$status = '';
			$node->psql($db, "SELECT status FROM docextract.extractions WHERE id = '$id'",
				stdout => \$status);
			return $wanted{$status};
		},
		"extraction $id to reach (@statuses)")
	  or die "extraction $id never reached (@statuses); last seen: '$status'";
	return $status;
}

# The extension's catalog in database db as sorted lines (test/catalog.sql).
sub catalog_lines
{
	my ($node, $db) = @_;
	return $node->safe_psql($db, slurp_file("$root/test/catalog.sql"));
}

sub worker_pid
{
	my ($node) = @_;
	my $pid;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'docextract worker'")
	  or die "no docextract worker";
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract worker'");
}

# No error of docextract's may reach anyone as XX000 (internal_error): each
# node's log names every error's SQLSTATE (log_line_prefix %e), and a test
# file whose servers logged one fails here, listing them.  Only this file's
# nodes: PostgreSQL::Test::Cluster names their logs <test>_<node>.log.
sub internal_errors
{
	my @found;
	my $test = basename($0);
	$test =~ s/\.[^.]+$//;
	for my $log (glob("$PostgreSQL::Test::Utils::log_path/${test}_*.log"))
	{
		open(my $fh, '<', $log) or next;
		while (my $line = <$fh>)
		{
			push @found, "$log: $line" if $line =~ /\] XX000 .*(ERROR|FATAL|PANIC):/;
		}
		close $fh;
	}
	return @found;
}

END
{
	kill 'TERM', @servers if @servers;
	if (my @found = internal_errors())
	{
		diag("errors logged as XX000 (internal_error):\n" . join('', @found[0 .. ($#found < 19 ? $#found : 19)]));
		$? = 1 if $? == 0;
	}
}

1;
