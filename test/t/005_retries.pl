# Retries: 429 with Retry-After, 5xx beyond the limit, unreadable answers,
# 4xx that fail at once; max_concurrency reached and never exceeded.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $srv = start_model_server();
my $node = new_node('retries', conf => "docextract.max_inflight = 16\n");
$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 2, "retry_backoff_ms": 200}');
	SELECT docextract.add_model('narrow', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_concurrency": 2}');
	SELECT docextract.add_model('wide', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_concurrency": 6}');});
my $tid = add_invoice_template($node);
my $doc = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");

sub submit
{
	my ($options) = @_;
	return $node->safe_psql('postgres',
		"SELECT docextract.extract_document('$doc', '$tid', jsonb_build_object('force', true) || '" . ($options // '{}') . "')");
}
sub row
{
	my ($id) = @_;
	my ($status, $attempts, $msg) = split /\|/, $node->safe_psql('postgres',
		"SELECT status, attempts, coalesce(error_message, '') FROM docextract.extractions WHERE id = '$id'");
	return ($status, $attempts, $msg);
}

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN docextract');

# 429 with Retry-After: 2, then success.
my $before = scalar @{ server_requests($srv) };
server_script($srv, { status => 429, headers => { 'Retry-After' => '2' },
	body => '{"error": {"message": "Rate limit reached for requests"}}' });
my $id = submit();
# Read in the query that sees 'retrying': 2 s later the retry has begun.
my ($status, $attempts, $msg);
wait_until(sub { ($status, $attempts, $msg) = row($id); $status eq 'retrying' }, 'retrying')
  or die 'never retrying';
is($attempts, 1, 'retrying: attempts visible');
is($msg, 'model endpoint answered HTTP 429: Rate limit reached for requests', 'retrying: the last error visible');
is(wait_for_status($node, $id, 'completed', 'failed'), 'completed', '429 then success: completed');
($status, $attempts) = row($id);
is($attempts, 2, '... on the second attempt');
my @reqs = @{ server_requests($srv) }[ $before .. $before + 1 ];
ok($reqs[1]{time} - $reqs[0]{time} >= 1.9, sprintf('Retry-After: 2 honoured (%.2fs between attempts)',
	$reqs[1]{time} - $reqs[0]{time}));
is($node->safe_psql('postgres', "SELECT docextract.get_result('$id')->'usage'->>'attempts'"), '2',
	'usage records the attempts');
like($listener->query_safe('SELECT 1'), qr/"event" : "extraction\.retrying", "extraction_id" : "$id"/,
	'an extraction.retrying event');

# 503 three times with max_retries 2: failed after 3 attempts, with backoff.
$before = scalar @{ server_requests($srv) };
server_script($srv, map { { status => 503, body => '{"error": {"message": "The engine is currently overloaded"}}' } } 1 .. 3);
$id = submit();
is(wait_for_status($node, $id, 'completed', 'failed'), 'failed', '503 beyond the limit: failed');
($status, $attempts, $msg) = row($id);
is($attempts, 3, '... after 1 + max_retries attempts');
is($msg, 'model endpoint answered HTTP 503: The engine is currently overloaded (attempt 3 of 3)',
	'... with the provider message');
@reqs = @{ server_requests($srv) }[ $before .. $before + 2 ];
my ($gap1, $gap2) = ($reqs[1]{time} - $reqs[0]{time}, $reqs[2]{time} - $reqs[1]{time});
# 150-250 ms, then 300-500 ms (±25 %): the second's least is more than the
# first's most, so no comparison of the two (a stall in the first would
# break it).
ok($gap1 >= 0.14 && $gap2 >= 0.29,
	sprintf('exponential backoff with jitter (%.2fs, then %.2fs; base 200ms)', $gap1, $gap2));

# The extraction's own max_retries wins over the model's.
server_script($srv, { status => 500, body => '{"error": {"message": "boom"}}' });
$id = submit('{"max_retries": 0}');
is(wait_for_status($node, $id, 'completed', 'failed'), 'failed', 'option max_retries 0: failed');
is((row($id))[1], 1, '... after one attempt');

# An unreadable answer is retried; a 4xx is not.
server_script($srv, { body => '<html>gateway hiccup</html>' });
$id = submit();
is(wait_for_status($node, $id, 'completed', 'failed'), 'completed', 'non-JSON, then a good answer: completed');
is((row($id))[1], 2, '... on the second attempt');

server_script($srv, { status => 400, body => '{"error": {"message": "Invalid schema for response_format"}}' });
$id = submit();
is(wait_for_status($node, $id, 'completed', 'failed'), 'failed', '400: failed');
($status, $attempts, $msg) = row($id);
is($attempts, 1, '400: at once, no retry');
is($msg, 'model endpoint answered HTTP 400: Invalid schema for response_format', '400: the provider message');

# Cancel while waiting for a retry.
server_script($srv, { status => 503, headers => { 'Retry-After' => '30' }, body => '{}' });
$id = submit();
$node->poll_query_until('postgres', "SELECT status = 'retrying' FROM docextract.extractions WHERE id = '$id'")
  or die 'never retrying';
is($node->safe_psql('postgres', "SELECT docextract.cancel_extraction('$id')"), 't', 'cancel while retrying');
is((row($id))[0], 'cancelled', '... cancelled');

# Cancel in flight: with one slot in all, cancelling a slow request frees the
# slot at once (the transfer is removed from the multi handle).
$node->safe_psql('postgres', "ALTER SYSTEM SET docextract.max_inflight = 1; SELECT pg_reload_conf()");
# A new session has the new value once the postmaster has reloaded, and it
# signals the worker in the same step.
$node->poll_query_until('postgres', "SELECT current_setting('docextract.max_inflight') = '1'")
  or die 'max_inflight not reloaded';
# Held: it never answers, so only the cancel (or the 120 s request timeout)
# can free its slot.
server_script($srv, { hold => 'never' });
my $slow = submit();
$node->poll_query_until('postgres', "SELECT status = 'processing' FROM docextract.extractions WHERE id = '$slow'")
  or die 'never processing';
wait_inflight($srv, 1);
my $next = submit('{"seed": 99}');
usleep(300_000);
is((row($next))[0], 'pending', 'with the only slot taken, the next job waits');
my $t0 = time;
is($node->safe_psql('postgres', "SELECT docextract.cancel_extraction('$slow')"), 't', 'cancel the in-flight one');
is(wait_for_status($node, $next, 'completed', 'failed'), 'completed', 'the next job completes');
ok(time - $t0 < 60, sprintf('... %ds after the cancel, long before the request timeout (120 s)', time - $t0));
is((row($slow))[0], 'cancelled', 'the in-flight one stays cancelled');
wait_abandoned($srv, 1);
is(server_stats($srv)->{abandoned}, 1, 'the model server saw the request abandoned (connection closed)');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results WHERE extraction_id = '$slow'"), '0',
	'... with no result');
$node->safe_psql('postgres', "ALTER SYSTEM RESET docextract.max_inflight; SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('docextract.max_inflight') = '16'")
  or die 'max_inflight not reloaded';

# max_concurrency: reached, never exceeded, per model.
for my $case ([ 'narrow', 2 ], [ 'wide', 6 ])
{
	my ($model, $limit) = @$case;
	$srv->{url} =~ m{:(\d+)$};
	HTTP::Tiny->new->post("$srv->{url}/_reset");
	# Every answer held until the limit is reached (not a delay: on a slow
	# machine the first answers could come before the last request went out).
	server_script($srv, map { { hold => "limit_$model" } } 1 .. 10);
	# All ten queued by one commit: one by one, the first could be done
	# before the last is submitted, and the limit never reached.
	my @ids = split /\n/, $node->safe_psql('postgres', 'BEGIN;' . join('', map {
		"SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"model\": \"$model\", \"seed\": $_}');"
	} 1 .. 10) . 'COMMIT;');
	wait_until(sub { server_stats($srv)->{inflight} >= $limit }, "$limit requests in flight");
	server_release($srv, "limit_$model");
	wait_for_status($node, $_, 'completed', 'failed') for @ids;
	my $stats = server_stats($srv);
	is($stats->{max_inflight}, $limit, "$model: max_concurrency $limit reached and never exceeded");
	is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.extractions
		WHERE model_name = '$model' AND status = 'completed'"), '10', "$model: all ten completed");
}

# The operators' view agrees with what happened above.
my $stats = $node->safe_psql('postgres', "SELECT model_name, in_flight, queued, completed, failed, cancelled,
	retries, mean_latency_ms > 0, input_tokens > 0 FROM docextract.worker_stats ORDER BY model_name");
is($stats, join("\n", 'default|0|0|3|3|2|4|t|t', 'narrow|0|0|10|0|0|0|t|t', 'wide|0|0|10|0|0|0|t|t'),
	'worker_stats: per model in flight, queued, completed, failed, cancelled, retries, latency, tokens');

$listener->quit;
$node->stop;
done_testing();
