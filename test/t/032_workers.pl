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
use List::Util qw(min);

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
ok($node->poll_query_until('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'docextract write-back worker'", '1'),
	'... and one write-back worker');

# A model limit above one worker's max_inflight (8), so that one worker can't take all.
sq("SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	'{\"max_concurrency\": 16}')");
my $tid = add_invoice_template($node);
my $doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$invoice'))");
my $secret = 'whsec-0123456789abcdef';
sq("SELECT docextract.add_webhook('$srv->{url}/hooks/w', '$secret', '{extraction.completed}')");

# -- a backlog, committed at once: more than one worker's max_inflight (8) ---------------
# The answers are held until both workers have filled their room (16 in
# flight), so that the count below does not depend on timing.
my $n = 40;
server_script($srv, map { { hold => 'backlog' } } 1 .. $n);
sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}') FROM generate_series(1, $n)");
ok(wait_inflight($srv, 16), 'two workers hold 16 requests in flight');
server_release($srv, 'backlog');
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
wait_inflight($srv, 1);
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
server_release($srv, 'h1');
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', '... which completes');
is(server_stats($srv)->{count}, 1, '... after one request');

# -- the worker that runs it restarts: its job is requeued (it is an orphan) -------------
server_reset($srv);
server_script($srv, { hold => 'h2' });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
wait_inflight($srv, 1);
$holder = sq("SELECT worker_pid FROM docextract.extractions WHERE id = '$e'");
sq("SELECT pg_terminate_backend($holder)");
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed',
	'a job whose own worker stopped is requeued by the worker that replaces it, and completes');
is(sq("SELECT attempts FROM docextract.extractions WHERE id = '$e'"), '2', '... on its second attempt');
HTTP::Tiny->new->post("$srv->{url}/_release/h2");

# -- fewer workers (SIGHUP): the one left over finishes its job, then leaves ----------
server_reset($srv);
wait_idle_workers();
server_script($srv, map { { hold => 'h3' } } 1 .. 8);
# Held jobs until each worker runs one (a commit wakes the workers that sleep
# with room in turn; each submit waits until both sleep).  This once took all
# eight: a worker that spun (http.c's timer, kept armed past its deadline)
# was seen waiting, but was between two waits, so passed over, most of the
# time.
my @two;
for my $i (1 .. 8)
{
	push @two, sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
	wait_inflight($srv, $i);
	wait_idle_workers();
	last if sq("SELECT count(DISTINCT worker_pid) FROM docextract.extractions WHERE status = 'processing'") == 2;
}
is(sq("SELECT count(DISTINCT worker_pid) FROM docextract.extractions WHERE status = 'processing'"), '2',
	'each worker runs a held job');
sq("ALTER SYSTEM SET docextract.workers = 1; SELECT pg_reload_conf()");
server_release($srv, 'h3');
# One assertion whatever @two's length (2 to 8: which worker a commit wakes
# varies), so the file's count of tests does not vary with it.
is(join(',', map { wait_for_status($node, $_, 'completed', 'failed') } @two),
	join(',', ('completed') x @two), 'every held job completes');
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'docextract worker'") or die 'no worker left';
pass('docextract.workers = 1: one job worker left');
is(server_stats($srv)->{count}, scalar(@two), '... and no request was sent twice');
is(sq("SELECT count(*) FROM docextract.extractions WHERE attempts <> 1"), '1',
	'... nor claimed twice (only the job requeued on purpose above)');
sq("ALTER SYSTEM RESET docextract.workers; ALTER SYSTEM SET docextract.workers = 2; SELECT pg_reload_conf()");
wait_idle_workers();
pass('docextract.workers = 2 again: two job workers');
ok(!$node->log_contains(qr/terminated by signal/), 'no crash');
$node->stop;

# -- the crash-loop guard with two workers: suspects run alone across both -------------
my $cnode = new_node('crash2', conf => "docextract.workers = 2\nrestart_after_crash = on\n"
	  . "docextract.debug_crash_on_document = 'crash-me.pdf'\n");
sub cq { return $cnode->safe_psql('postgres', $_[0]); }
server_reset($srv);
cq("SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	'{\"max_concurrency\": 16}')");
$tid = add_invoice_template($cnode);
my %doc = map { $_ => cq("SELECT docextract.add_document('$_', pg_read_binary_file('$invoice'))") }
  qw(a.pdf b.pdf c.pdf crash-me.pdf);
$node = $cnode;
wait_idle_workers();
# The innocents' first answers are held: they are in flight when the culprit
# crashes.  Their second attempts (and the culprit's) get the default answer.
server_script($srv, map { { hold => 'innocents' } } 1 .. 3);
my @innocent = map { cq("SELECT docextract.extract_document('$doc{$_}', '$tid')") } qw(a.pdf b.pdf c.pdf);
wait_inflight($srv, 3);
is(server_stats($srv)->{inflight}, 3, 'three requests in flight');
my $culprit = cq("SELECT docextract.extract_document('$doc{'crash-me.pdf'}', '$tid')");
is(wait_for_status($cnode, $culprit, 'failed', 'completed'), 'failed', 'two workers: the culprit fails in the end');
is(cq("SELECT crashes FROM docextract.extractions WHERE id = '$culprit'"), '3', '... after three crashes');
is(wait_for_status($cnode, $_, 'failed', 'completed'), 'completed', "innocent $_ completes") for @innocent;
is(cq("SELECT string_agg(crashes || '/' || attempts, ',') FROM docextract.extractions
	WHERE id IN ('" . join("','", @innocent) . "')"), '1/2,1/2,1/2',
	'each innocent was in flight at one crash only (the suspects ran alone across both workers)');
is(cq("SELECT count(*) FROM docextract.results"), '3', 'one result each');
server_release($srv, 'innocents');
wait_inflight($srv, 0);
$cnode->stop;

# -- not enough worker slots (4: the logical replication launcher takes one): said
# clearly, and each database's first job worker and write-back worker come first --
my $small = new_node('small', conf => "docextract.workers = 3\nmax_worker_processes = 4\n");
$small->wait_for_log(qr/WARNING:  docextract launcher: could not start the job worker 2 of database "postgres": no background worker slot is free \(max_worker_processes = 4\)/);
pass('a worker the launcher cannot start is logged as a WARNING naming it');
# (The write-back worker is registered just before the warning: it may not
# have connected yet when the warning is read.)
ok($small->poll_query_until('postgres', "SELECT string_agg(backend_type, ',' ORDER BY backend_type)
	FROM pg_stat_activity WHERE backend_type LIKE 'docextract%'",
	'docextract launcher,docextract worker,docextract write-back worker'),
	'... the first job worker and the write-back worker came first');
$small->stop;

# -- the default: half the cores, at most a quarter of max_worker_processes ----
# (new_node pins docextract.workers = 1; -1 is the default.)  At the default
# max_worker_processes = 8 that is 2 at most, so that 8 cores' 4 job workers
# do not leave parallel query and extract_sync one slot.
my $cores = `getconf _NPROCESSORS_ONLN`;
chomp $cores;
my $want = min(4, int($cores / 2), 8 / 4);
$want = 1 if $want < 1;
my $dflt = new_node('default_workers', conf => "docextract.workers = -1
max_worker_processes = 8
");
$dflt->poll_query_until('postgres', "SELECT count(*) = $want FROM pg_stat_activity
	WHERE backend_type = 'docextract worker'")
  or die "the default never ran $want job worker(s)";
sleep 1;	# a window: no more start
is($dflt->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'docextract worker'"),
	$want, "docextract.workers = -1 on $cores cores with max_worker_processes = 8: $want job worker(s)");
$dflt->stop;
done_testing();
