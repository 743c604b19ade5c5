# The worker stays well: its statistics reach pg_stat (autovacuum sees the
# queue's churn); it sleeps when idle (an empty "next retry" query read as
# "due now" kept it spinning), when a due retry's model has no room, and
# after a request that ended within libcurl's timer call (a timer kept armed
# past its deadline kept it spinning);
# a listener that pins the NOTIFY queue cannot stop status changes from
# committing; a batch whose commit fails leaves no extraction 'processing'.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use POSIX ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $srv = start_model_server();
my $node = new_node('health');
sub sq { return $node->safe_psql('postgres', $_[0]); }
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	'{"max_concurrency": 1, "max_retries": 3, "retry_backoff_ms": 100}');
	CREATE ROLE alice LOGIN;});
my $tid = add_invoice_template($node);
my $doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");
my $seed = 0;
sub submit
{
	$seed++;
	return sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": $seed}')");
}
sub status_of { return sq("SELECT status FROM docextract.extractions WHERE id = '$_[0]'"); }

# -- the worker's statistics are flushed, not kept until it exits -----------------------
my $e = submit();
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'an extraction completes');
ok($node->poll_query_until('postgres',
	"SELECT n_tup_upd >= 2 FROM pg_stat_user_tables WHERE relid = 'docextract.extractions'::regclass"),
	"the worker's updates of the queue (claim, result) show in pg_stat_user_tables while it runs");

# -- the worker sleeps when nothing is due -------------------------------------------------
my $pid = worker_pid($node);
sub cpu_seconds
{
	my $stat = slurp_file("/proc/$pid/stat");
	$stat =~ s/^.*\) //s;
	my @f = split / /, $stat;
	return ($f[11] + $f[12]) / POSIX::sysconf(POSIX::_SC_CLK_TCK);
}
sub switches
{
	my $status = slurp_file("/proc/$pid/status");
	my $n = 0;
	$n += $1 while $status =~ /ctxt_switches:\s+(\d+)/g;
	return $n;
}
# Over 3 s, the share of a CPU the worker used and how often it was switched
# in and out.  A sleeping worker: a few ms and a few switches, whatever the
# machine's load.  A spinning one takes all the CPU it can get: all of one on
# a quiet machine, a share of a busy one (one of 14 runnable processes on 2
# cores gets 15 %), where it is switched out every few ms.
sub worker_use
{
	my ($cpu0, $sw0, $t0) = (cpu_seconds(), switches(), time);
	sleep 3;	# the measurement's window, not a wait for something to happen
	return ((cpu_seconds() - $cpu0) / (time - $t0), switches() - $sw0);
}
sub sleeps_ok
{
	my ($what) = @_;
	my ($share, $switches) = worker_use();
	ok($share < 0.05 && $switches < 30,
		sprintf('%s: the worker sleeps (%.1f%% of a CPU and %d context switches over 3 s)', $what, 100 * $share, $switches));
}
sleeps_ok('idle');

# -- a due retry whose model is full: the worker sleeps ----------------------------------
# max_concurrency 1: b waits for a retry, a holds the model's only slot (its
# answer held until it is cancelled: a delay could end on a stalled machine),
# then b falls due.  Submitting c wakes the worker to look.
server_script($srv, { status => 503, headers => { 'Retry-After' => '3600' }, body => '{}' }, { hold => 'never' });
my $b = submit();
$node->poll_query_until('postgres', "SELECT status = 'retrying' FROM docextract.extractions WHERE id = '$b'")
  or die 'b never retrying';
my $a = submit();
$node->poll_query_until('postgres', "SELECT status = 'processing' FROM docextract.extractions WHERE id = '$a'")
  or die 'a never processing';
sq("UPDATE docextract.extractions SET next_attempt_at = clock_timestamp() WHERE id = '$b'");
my $c = submit();
sleeps_ok('a due retry whose model has no room');
is(status_of($b) . ' ' . status_of($c), 'retrying pending', '... b and c still wait for the slot');
sq("SELECT docextract.cancel_extraction('$a')");
is(wait_for_status($node, $b, 'completed', 'failed'), 'completed', 'the slot freed: b is retried and completes');
is(wait_for_status($node, $c, 'completed', 'failed'), 'completed', '... and c after it, as soon as b is done');

# -- a request that failed within libcurl's timer call: the worker sleeps after it -------
# libcurl's timer is one-shot, and 7.88 does not say -1 when a timeout call
# leaves no timer: kept armed past its deadline, it had the worker spin from
# then until its next request.  A role's webhook to a loopback address is
# refused before any connection (docextract.webhook_allowed_destinations):
# its request ends in the first call.  Its retry is an hour off.
sq("ALTER SYSTEM SET docextract.webhook_retry_backoff = '1h'; SELECT pg_reload_conf()");
my $alice_tid = add_invoice_template($node, 'alice');
my $alice_doc = sq("SELECT pg_read_binary_file('" . fixture('invoice.pdf') . "') AS b \\gset
	SET ROLE alice; SELECT docextract.add_document('invoice.pdf', :'b')");
my $hook = sq("SET ROLE alice; SELECT docextract.add_webhook('http://localhost:$srv->{port}/hooks/h', 'whsec-0123456789abcdef',
	'{extraction.completed}')");
$e = sq("SET ROLE alice; SELECT docextract.extract_document('$alice_doc', '$alice_tid')");
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', "alice's extraction completes");
ok($node->poll_query_until('postgres', "SELECT attempts = 1 AND NOT in_flight
	FROM docextract.webhook_deliveries WHERE webhook_id = '$hook'"), "... and her webhook's delivery is refused");
sleeps_ok('after the refused delivery');
is(scalar(@{ hooks_received($srv, '/hooks/h') }), 0, '... which sent nothing');
sq("SELECT docextract.drop_webhook('$hook'); ALTER SYSTEM RESET docextract.webhook_retry_backoff;
	SELECT pg_reload_conf()");

# -- a listener pinning the NOTIFY queue does not stop status changes --------------------
# Any role may LISTEN and keep a transaction open: the queue cannot empty.  Filling
# 8 GB is not a test; docextract.notify_queue_limit (superuser-only) is lowered to 0
# instead, above which announce_status() skips NOTIFY, with a warning.
my $listener = $node->background_psql('postgres');
$listener->query_safe('SET SESSION AUTHORIZATION alice');
$listener->query_safe('LISTEN docextract');
$listener->query_safe('BEGIN');
$listener->query_safe('SELECT 1');
sq(q{SELECT pg_notify('filler', repeat('x', 7000)) FROM generate_series(1, 10)});
is(sq('SELECT pg_notification_queue_usage() > 0'), 't', 'the pinned queue holds notifications');
like(($node->psql('postgres', 'SET ROLE alice; SET docextract.notify_queue_limit = 0'))[2],
	qr/permission denied to set parameter "docextract.notify_queue_limit"/, 'a role cannot change the limit');
sq("ALTER SYSTEM SET docextract.notify_queue_limit = 0; SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('docextract.notify_queue_limit') = '0'")
  or die 'limit not reloaded';
my ($ret, $id, $err) = $node->psql('postgres',
	"SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 999}')");
is($ret, 0, 'with the queue above the limit, extract_document succeeds');
unlike($err, qr/NOTIFY/, '... without a warning: extraction.queued is never sent by NOTIFY');
is(wait_for_status($node, $id, 'completed', 'failed'), 'completed', "the worker's status changes commit too");
is(sq("SELECT string_agg(event, ',' ORDER BY id) FROM docextract.events WHERE extraction_id = '$id'"),
	'extraction.queued,extraction.started,extraction.completed', '... every event is in the outbox');
like(slurp_file($node->logfile), qr/WARNING:  docextract: extraction.completed of extraction $id not sent by NOTIFY: the notification queue is [0-9.]+% full/,
	"... and the worker's skipped NOTIFY is in the server log");
like(slurp_file($node->logfile), qr/HINT:  A session that LISTENs on docextract and keeps a transaction open/,
	'... naming the cause');
$listener->query_safe('COMMIT');
$listener->quit;
sq("ALTER SYSTEM RESET docextract.notify_queue_limit; SELECT pg_reload_conf()");

# -- a batch whose commit fails: its jobs go back to the queue ---------------------------
# A deferred constraint trigger (a superuser's) fails the first two commits of a
# result: the batch's, then that of the one-by-one storing that follows it.  The
# poll at an hour: the worker must look again by itself to learn when the retry
# it put back falls due.
sq("ALTER SYSTEM SET docextract.poll_interval = '1h'; SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('docextract.poll_interval') = '1h'") or die;
sq(q{CREATE SEQUENCE public.commit_failures;
	CREATE FUNCTION public.fail_first_commit() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	    IF NEW.status = 'completed' AND pg_catalog.nextval('public.commit_failures') <= 2 THEN
	        RAISE EXCEPTION 'planted failure at commit';
	    END IF;
	    RETURN NULL;
	END $$;
	CREATE CONSTRAINT TRIGGER fail_first_commit AFTER UPDATE ON docextract.extractions
	    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.fail_first_commit();});
$e = submit();
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed',
	'the commits of its result failed: the extraction is requeued and completes, no restart needed');
is(sq("SELECT attempts || ' ' || (SELECT count(*) FROM docextract.events v WHERE v.extraction_id = e.id AND v.event = 'extraction.retrying')
	FROM docextract.extractions e WHERE id = '$e'"), '2 1', '... on a second attempt, announced as a retry');
like(slurp_file($node->logfile), qr/WARNING:  docextract worker: 1 extraction\(s\) of a batch whose commit failed put back in the queue: planted failure at commit/,
	'... and the log says why');
sq('DROP TRIGGER fail_first_commit ON docextract.extractions');
sq("ALTER SYSTEM RESET docextract.poll_interval; SELECT pg_reload_conf()");

done_testing();
