# The worker is killed (kill -9) while a request is in flight: after the
# crash restart the job is taken up again and completed exactly once.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $srv = start_model_server();
my $node = new_node('crash', conf => "restart_after_crash = on\n");
$node->safe_psql('postgres', "SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model')");
my $tid = add_invoice_template($node);
my $doc = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");

# The first answer is held until released, so the worker is surely killed
# mid-request however slow the machine.  The request after the restart finds
# the script used up and gets the default answer.
server_script($srv, { hold => 'killed' });
my $pid = worker_pid($node);
my $id = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc', '$tid')");
wait_inflight($srv, 1);
is(server_stats($srv)->{inflight}, 1, 'the request is in flight');
is($node->safe_psql('postgres', "SELECT status FROM docextract.extractions WHERE id = '$id'"),
	'processing', 'the job is processing');

kill 'KILL', $pid;
# The postmaster restarts everything after a child dies by SIGKILL.
$node->poll_query_until('postgres', 'SELECT 1', '1') or die 'server did not come back';
my $new_pid = worker_pid($node);
isnt($new_pid, $pid, 'a new worker runs after the crash');

is(wait_for_status($node, $id, 'completed', 'failed'), 'completed', 'the job completes after the restart');
is($node->safe_psql('postgres', "SELECT attempts FROM docextract.extractions WHERE id = '$id'"), '2',
	'it took a second attempt');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results WHERE extraction_id = '$id'"), '1',
	'exactly one result');
is($node->safe_psql('postgres', "SELECT docextract.get_result('$id')->'data'->'general'->>'invoice_number'"),
	'INV-2026-0042', 'and it is the right one');
like(slurp_file($node->logfile), qr/requeued 1 extraction\(s\) left by a previous worker/,
	'the new worker says it requeued the orphan');

# The old request's late answer changes nothing: let it go, and wait until
# the server has sent it (nothing of the first request left in flight).
server_release($srv, 'killed');
ok(wait_inflight($srv, 0), 'the old request has had its late answer');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results"), '1', 'still one result');
is($node->safe_psql('postgres', "SELECT status FROM docextract.extractions WHERE id = '$id'"), 'completed',
	'still completed');

# A plain restart (SIGTERM to the worker via smart shutdown) also loses nothing.
# The answer is held so the job is surely in flight at the restart; the one
# after it gets the default answer.
server_script($srv, { hold => 'restarted' });
my $id2 = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
wait_inflight($srv, 1);
$node->restart;
is(wait_for_status($node, $id2, 'completed', 'failed'), 'completed', 'a job in flight at restart completes after it');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results WHERE extraction_id = '$id2'"), '1',
	'exactly one result for it');
server_release($srv, 'restarted');
ok(wait_inflight($srv, 0), 'the request cut off by the restart has had its late answer');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results WHERE extraction_id = '$id2'"), '1',
	'still exactly one result for it');

$node->stop;
done_testing();
