# Crash-loop guard: an extraction whose processing keeps crashing the worker
# is failed after docextract.max_crashes crashes instead of being requeued
# for ever, and only that one: the other extractions in flight at the first
# crash are run again one at a time and complete.  The crash comes from the
# superuser-only fault-injection point docextract.debug_crash_on_document.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $srv = start_model_server();
my $node = new_node('crashguard', conf => "restart_after_crash = on\n"
	  . "docextract.debug_crash_on_document = 'crash-me.pdf'\n");
$node->safe_psql('postgres', "SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model')");
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
my $tid = add_invoice_template($node);
my $pdf = fixture('invoice.pdf');
my %doc = map {
	$_ => $node->safe_psql('postgres', "SELECT docextract.add_document('$_', pg_read_binary_file('$pdf'))")
} qw(a.pdf b.pdf c.pdf crash-me.pdf);

# Only a superuser can reach the fault point.
my ($ret, $out, $err) = $node->psql('postgres',
	"SET docextract.debug_crash_on_document = 'a.pdf'", extra_params => [ '-U', 'mallory' ]);
like($err, qr/permission denied to set parameter "docextract\.debug_crash_on_document"/,
	'an ordinary role cannot set the fault point');

# Three extractions in flight, then the culprit.  Their answers are held
# until after the crash, so all three are surely in flight at it however
# slow the machine.  The culprit crashes the worker before it sends
# anything, so the innocents' requests after the crash get default answers.
my $pid = worker_pid($node);
server_script($srv, map { { hold => 'innocents' } } 1 .. 3);
my @innocent = map {
	$node->safe_psql('postgres', "SELECT docextract.extract_document('$doc{$_}', '$tid')")
} qw(a.pdf b.pdf c.pdf);
wait_inflight($srv, 3);
is(server_stats($srv)->{inflight}, 3, 'three requests are in flight');
my $culprit = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc{'crash-me.pdf'}', '$tid')");

is(wait_for_status($node, $culprit, 'failed', 'completed'), 'failed', 'the culprit fails in the end');
like($node->safe_psql('postgres', "SELECT error_message FROM docextract.extractions WHERE id = '$culprit'"),
	qr/^the docextract worker stopped 3 times while processing this extraction \(docextract\.max_crashes = 3\); it is not tried again$/,
	'its message says why');
is($node->safe_psql('postgres', "SELECT crashes FROM docextract.extractions WHERE id = '$culprit'"), '3',
	'three crashes counted against it');
for my $id (@innocent)
{
	is(wait_for_status($node, $id, 'failed', 'completed'), 'completed', "innocent $id completes");
}
is($node->safe_psql('postgres', "SELECT string_agg(crashes || '/' || attempts, ',') FROM docextract.extractions
	WHERE id IN ('" . join("','", @innocent) . "')"), '1/2,1/2,1/2',
	'each innocent was in flight at one crash only, and took a second attempt');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results WHERE extraction_id IN ('"
	. join("','", @innocent) . "')"), '3', 'one result each');
# The held answers of the crashed worker's requests go nowhere; once sent,
# the server has nothing in flight, as the sections below expect.
server_release($srv, 'innocents');
ok(wait_inflight($srv, 0), 'the crashed requests have had their late answers');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results WHERE extraction_id IN ('"
	. join("','", @innocent) . "')"), '3', 'still one result each');
my $log = slurp_file($node->logfile);
like($log, qr/requeued 4 extraction\(s\) left by a previous worker, which crashed; they run one at a time/,
	'after the first crash, the four orphans were requeued to run one at a time');
is(scalar(() = $log =~ /aborting on document "crash-me\.pdf"/g), 3, 'the worker crashed three times');
like($log, qr/failed 1 extraction\(s\) that crashed the worker docextract\.max_crashes times/,
	'then it failed the culprit');

# The worker is well: new work completes, with no further restart.
my $pid2 = worker_pid($node);
isnt($pid2, $pid, 'a new worker runs');
my $after = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc{'a.pdf'}', '$tid', '{\"force\": true}')");
is(wait_for_status($node, $after, 'failed', 'completed'), 'completed', 'new work completes');
is(worker_pid($node), $pid2, 'without another restart');

# A requested stop is not a crash: a job in flight at a restart is not blamed.
# Held, so the job is surely in flight at the restart; the request after it
# gets the default answer.
server_script($srv, { hold => 'restarted' });
my $id = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc{'b.pdf'}', '$tid', '{\"force\": true}')");
wait_inflight($srv, 1);
$node->restart;
is(wait_for_status($node, $id, 'failed', 'completed'), 'completed', 'a job in flight at a restart completes');
is($node->safe_psql('postgres', "SELECT crashes FROM docextract.extractions WHERE id = '$id'"), '0',
	'and no crash is counted against it');
server_release($srv, 'restarted');
ok(wait_inflight($srv, 0), 'the request cut off by the restart has had its late answer');

# Nor is a worker terminated by a superuser (held as above).
server_script($srv, { hold => 'terminated' });
$id = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc{'c.pdf'}', '$tid', '{\"force\": true}')");
wait_inflight($srv, 1);
$pid = worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
is(wait_for_status($node, $id, 'failed', 'completed'), 'completed', 'a job in flight at pg_terminate_backend completes');
is($node->safe_psql('postgres', "SELECT crashes FROM docextract.extractions WHERE id = '$id'"), '0',
	'and no crash is counted against it');
server_release($srv, 'terminated');
ok(wait_inflight($srv, 0), 'the request cut off by the termination has had its late answer');

$node->stop;
done_testing();
