# The concurrency a model sets is the concurrency it gets: the worker's own
# limits (docextract.max_inflight, descriptors, docextract.max_inflight_memory)
# cap it only when they must, and say so (a log line, worker_limits()).
# Requests are held at the model server and counted there, then released:
# nothing here depends on timing.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use Compress::Zlib qw(crc32);
use HTTP::Tiny;
use MIME::Base64;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $srv = start_model_server();
my $http = HTTP::Tiny->new(timeout => 30);

# Default global settings: the line DxTest adds is taken out again.
my $node = new_node('inflight');
$node->adjust_conf('postgresql.conf', 'docextract.max_inflight', undef);
$node->restart;
$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model');
	SELECT docextract.add_model('wide', 'openai', '$srv->{url}/v1', 'wide-model', NULL,
	                            '{"max_concurrency": 60}');});
my $tid = add_invoice_template($node);
my $doc = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");

# Wait until the server holds exactly n requests; false if it never does.
sub server_holds
{
	my ($n) = @_;
	for (1 .. 1800)
	{
		return 1 if server_stats($srv)->{inflight} == $n;
		usleep(100_000);
	}
	diag('the server holds ' . server_stats($srv)->{inflight} . " requests, not $n");
	return 0;
}

sub release { server_release($srv, $_[0]); }

# n extractions of doc with model, each held at the server under hold.
sub submit_held
{
	my ($model, $n, $hold, $document, $from) = @_;
	server_script($srv, map { { hold => $hold } } 1 .. $n);
	$from //= 1;
	return split /\n/, $node->safe_psql('postgres', qq{
		SELECT docextract.extract_document('$document', '$tid',
		         jsonb_build_object('model', '$model', 'seed', g))
		  FROM generate_series($from, $from + $n - 1) g});
}

# Every one completed, once: one attempt, one result, one charge.
sub all_completed_once
{
	my ($what, @ids) = @_;
	my $list = join(',', map { "'$_'" } @ids);
	$node->poll_query_until('postgres', "SELECT count(*) = " . scalar(@ids)
		. " FROM docextract.extractions WHERE id IN ($list) AND status IN ('completed', 'failed')")
	  or die "$what: not all ended";
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FILTER (WHERE status = 'completed' AND attempts = 1 AND error_message IS NULL)
		       || '/' || (SELECT count(*) FROM docextract.results WHERE extraction_id IN ($list))
		       || '/' || (SELECT count(*) FROM docextract.credit_ledger
		                   WHERE kind = 'charge' AND extraction_id IN ($list))
		  FROM docextract.extractions WHERE id IN ($list)}),
		scalar(@ids) . '/' . scalar(@ids) . '/' . scalar(@ids),
		"$what: all completed at the first attempt, one result and one charge each");
}

# -- a model set to 60 gets 60 at once ----------------------------------------
is($node->safe_psql('postgres', 'SHOW docextract.max_inflight'), '256', 'the default allows hundreds in flight');
my @wide = submit_held('wide', 60, 'wide', $doc);
ok(server_holds(60), 'max_concurrency 60 with default settings: 60 requests in flight at the server at once');
is($node->safe_psql('postgres',
	"SELECT max_concurrency || '/' || effective_concurrency || '/' || coalesce(capped_by, 'none')"
	. " FROM docextract.worker_limits() WHERE model_name = 'wide'"),
	'60/60/none', 'worker_limits(): wide gets its 60, nothing caps it');
release('wide');
all_completed_once('60 at once', @wide);
is(server_stats($srv)->{max_inflight}, 60, 'never more than 60 at the server');

# -- a small max_inflight caps it, and says so --------------------------------
$node->safe_psql('postgres', 'ALTER SYSTEM SET docextract.max_inflight = 5; SELECT pg_reload_conf()');
$node->poll_query_until('postgres', "SELECT current_setting('docextract.max_inflight') = '5'")
  or die 'the setting never reached the session';
server_reset($srv);
my $log_from = -s $node->logfile;
my @narrow = submit_held('wide', 12, 'narrow', $doc, 100);
ok(server_holds(5), 'max_inflight 5: five requests in flight');
ok($node->wait_for_log(qr/docextract\.max_inflight \(5\) limits the requests in flight, not the models' max_concurrency/, $log_from),
	'the log says that max_inflight, not the model, caps the claims');
is($node->safe_psql('postgres',
	"SELECT max_concurrency || '/' || effective_concurrency || '/' || capped_by"
	. " FROM docextract.worker_limits() WHERE model_name = 'wide'"),
	'60/5/docextract.max_inflight', 'worker_limits(): wide sets 60, gets 5, capped by docextract.max_inflight');
is($node->safe_psql('postgres',
	"SELECT coalesce(max_concurrency::text, 'unset') || '/' || effective_concurrency || '/' || coalesce(capped_by, 'none')"
	. " FROM docextract.worker_limits() WHERE model_name = 'default'"),
	'unset/5/none', 'a model without max_concurrency: max_inflight is its limit, not a cap on its setting');
release('narrow');
all_completed_once('max_inflight 5', @narrow);
is(server_stats($srv)->{max_inflight}, 5, 'never more than 5 at the server');
my $said = () = slurp_file($node->logfile, $log_from) =~ /max_inflight \(5\) limits/g;
is($said, 1, 'said once, not at every claim');

# worker_limits() is safe for every role: it shows what models already show.
$node->safe_psql('postgres', 'CREATE ROLE plain LOGIN');
is($node->safe_psql('postgres', "SET ROLE plain; SELECT count(*) FROM docextract.worker_limits()"),
	'2', 'a plain role may call worker_limits()');

# -- a byte budget: what does not fit waits, claimed but not sent -------------
# Images go as base64: 1.2 MB each is about 1.7 MB with its answer's reserve;
# two fit in 4 MB, a third does not.
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET docextract.max_inflight;
	ALTER SYSTEM SET docextract.max_inflight_memory = '4MB';
	SELECT pg_reload_conf()});
$node->poll_query_until('postgres', "SELECT current_setting('docextract.max_inflight_memory') = '4MB'")
  or die 'the setting never reached the session';
my $png = slurp_file(fixture('receipt.png'));
my $pad = 'Note: ' . ('x' x 1_200_000);
my $chunk = 'tEXt' . "Padding\0$pad";
substr($png, length($png) - 12, 0) = pack('N', length($chunk) - 4) . $chunk . pack('N', crc32($chunk));
my $big = $node->safe_psql('postgres',
	"SELECT docextract.add_document('big.png', decode('" . encode_base64($png, '') . "', 'base64'))");
server_reset($srv);
$log_from = -s $node->logfile;
my @bigs = submit_held('wide', 6, 'big', $big, 200);
ok(server_holds(2), 'max_inflight_memory 4MB: two large documents in flight');
ok($node->wait_for_log(qr/docextract\.max_inflight_memory \(4096 kB\) limits the requests in flight/, $log_from),
	'the log says the memory budget holds the others back');
like($node->safe_psql('postgres',
	"SELECT capped_by FROM docextract.worker_limits() WHERE model_name = 'wide'"),
	qr/docextract\.max_inflight_memory/, 'worker_limits(): the memory budget caps it now');
is(server_stats($srv)->{count}, 2, 'the others were not sent');
release('big');
all_completed_once('byte budget', @bigs);
is(server_stats($srv)->{max_inflight}, 2, 'never more than two large documents at the server');

# One document larger than the whole budget still runs, alone.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET docextract.max_inflight_memory = '1MB'; SELECT pg_reload_conf()});
$node->poll_query_until('postgres', "SELECT current_setting('docextract.max_inflight_memory') = '1MB'")
  or die 'the setting never reached the session';
server_reset($srv);
my @alone = submit_held('wide', 2, 'alone', $big, 300);
ok(server_holds(1), 'a document larger than the budget is sent, alone');
release('alone');
all_completed_once('larger than the budget', @alone);
is(server_stats($srv)->{max_inflight}, 1, 'one at a time');

# -- descriptors: max_files_per_process bounds the sockets ---------------------
# The worker may hold no more descriptors than max_files_per_process says
# (and the kernel enforces it here): requests beyond what that allows wait
# for a socket instead of failing.
$node->safe_psql('postgres', 'ALTER SYSTEM RESET docextract.max_inflight_memory');
$node->append_conf('postgresql.conf', "max_files_per_process = 64\n");
$node->restart;
system('prlimit', '--pid', worker_pid($node), '--nofile=64:64') == 0 or die 'prlimit failed';
server_reset($srv);
$log_from = -s $node->logfile;
my @fds = submit_held('wide', 60, 'fds', $doc, 400);
ok($node->wait_for_log(qr/max_files_per_process \(\d+\) limits the requests in flight/, $log_from),
	'the log says the descriptors cap the claims');
my ($cap) = slurp_file($node->logfile, $log_from) =~ /max_files_per_process \((\d+)\) limits/;
ok($cap > 0 && $cap < 60, "max_files_per_process 64: wide gets $cap sockets");
is($node->safe_psql('postgres',
	"SELECT effective_concurrency || '/' || capped_by FROM docextract.worker_limits() WHERE model_name = 'wide'"),
	"$cap/max_files_per_process", 'worker_limits(): capped by max_files_per_process');
ok(server_holds($cap), "$cap requests in flight at the server, the others wait");
release('fds');
all_completed_once('few descriptors', @fds);
is(server_stats($srv)->{max_inflight}, $cap, 'never more connections than the descriptors allow');

$node->stop;
done_testing();
