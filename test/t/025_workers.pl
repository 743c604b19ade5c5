# Every core: docextract.workers job workers in one database share the queue.
# A backlog is spread over them and every extraction is sent exactly once;
# a worker that restarts leaves a live sibling's jobs alone (requeueing them
# would send a second, paid request); webhook deliveries go out once.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $srv = start_model_server(delay_ms => 300);
my $node = new_node('workers', conf => "docextract.workers = 2\n");
my $invoice = fixture('invoice.pdf');

sub sq { return $node->safe_psql('postgres', $_[0]); }

# Both job workers up and asleep (their first wait comes after their first look).
sub wait_idle_workers
{
	$node->poll_query_until('postgres', "SELECT count(*) = 2 FROM pg_stat_activity
		WHERE backend_type = 'docextract worker' AND wait_event = 'Extension'")
	  or die 'the two job workers never waited';
}

wait_idle_workers();
pass('docextract.workers = 2: two job workers in the database');
is(sq("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'docextract write-back worker'"),
	'1', '... and one write-back worker');

# A model limit above one worker's max_inflight (8), so that one worker can't take all.
sq("SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	'{\"max_concurrency\": 16}')");
my $tid = add_invoice_template($node);
my $doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$invoice'))");
my $secret = 'whsec-0123456789abcdef';
sq("SELECT docextract.add_webhook('$srv->{url}/hooks/w', '$secret', '{extraction.completed}')");

# -- a backlog, committed at once: more than one worker's max_inflight (8) ---------------
my $n = 40;
sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}') FROM generate_series(1, $n)");
$node->poll_query_until('postgres', "SELECT count(*) = $n FROM docextract.extractions
	WHERE status IN ('completed', 'failed')") or die 'the backlog never drained';
is(sq("SELECT count(*) FROM docextract.extractions WHERE status = 'completed'"), $n, "all $n completed");
is(server_stats($srv)->{count}, $n, '... with one request each');
is(sq("SELECT count(*) FROM docextract.extractions WHERE attempts <> 1"), '0', '... each claimed once');
is(sq("SELECT count(DISTINCT worker_pid) FROM docextract.extractions"), '2',
	'both workers took part');
ok(server_stats($srv)->{max_inflight} > 8, 'more requests in flight at once than one worker allows');
$node->poll_query_until('postgres', "SELECT count(*) = $n FROM docextract.webhook_deliveries
	WHERE status = 'delivered'") or die 'deliveries never done';
my %seen;
$seen{ $_->{headers}{'x-docextract-delivery'} }++ for @{ hooks_received($srv, '/hooks/w') };
is(scalar(keys %seen), $n, "$n deliveries received");
is(scalar(grep { $_ != 1 } values %seen), 0, '... each once');

# -- a restarted worker leaves its live sibling's job alone --------------------------------
server_reset($srv);
server_script($srv, { hold => 'h1' });
my $e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
for (1 .. 400) { last if server_stats($srv)->{inflight} == 1; usleep(25_000); }
is(server_stats($srv)->{inflight}, 1, 'one request held by the model');
my $holder = sq("SELECT worker_pid FROM docextract.extractions WHERE id = '$e'");
my $other = sq("SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract worker'
	AND pid <> $holder");
ok($other > 0, 'the other worker is idle');
sq("SELECT pg_terminate_backend($other)");
$node->poll_query_until('postgres', "SELECT count(*) = 2 FROM pg_stat_activity
	WHERE backend_type = 'docextract worker' AND pid <> $other AND wait_event = 'Extension'")
  or die 'the stopped worker never came back';
pass('the launcher started the stopped worker again');
is(sq("SELECT status || ' ' || worker_pid || ' ' || attempts FROM docextract.extractions WHERE id = '$e'"),
	"processing $holder 1", "the new worker left the sibling's job processing, unclaimed again");
HTTP::Tiny->new->post("$srv->{url}/_release/h1")->{success} or die 'release failed';
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', '... which completes');
is(server_stats($srv)->{count}, 1, '... after one request');

# -- the worker that runs it restarts: its job is requeued (it is an orphan) -------------
server_reset($srv);
server_script($srv, { hold => 'h2' });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
for (1 .. 400) { last if server_stats($srv)->{inflight} == 1; usleep(25_000); }
$holder = sq("SELECT worker_pid FROM docextract.extractions WHERE id = '$e'");
sq("SELECT pg_terminate_backend($holder)");
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed',
	'a job whose own worker stopped is requeued by the worker that replaces it, and completes');
is(sq("SELECT attempts FROM docextract.extractions WHERE id = '$e'"), '2', '... on its second attempt');
HTTP::Tiny->new->post("$srv->{url}/_release/h2");
ok(!$node->log_contains(qr/terminated by signal/), 'no crash');
$node->stop;
done_testing();
