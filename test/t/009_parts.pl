# parallel_parts: a template's general fields and its line items asked for in
# two requests at once, with extraction.progress between them; a failure of
# either part is the extraction's; parts count against max_concurrency.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $key = 'sk-test-parts-0123456789';
my $srv = start_model_server(api_key => $key);
my $node = new_node('parts');
$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"parallel_parts": true, "retry_backoff_ms": 100}');
	SELECT docextract.add_model('narrow', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"parallel_parts": true, "max_concurrency": 2}');
	SELECT docextract.add_model('single', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"parallel_parts": true, "max_concurrency": 1}');
	SELECT docextract.add_model('flash', 'gemini', '$srv->{url}/v1beta', 'gemini-2.5-flash', '$key',
	                            '{"parallel_parts": true}');});
my $tid = add_invoice_template($node);
my $pdf = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");

sub submit
{
	my ($opts) = @_;
	return $node->safe_psql('postgres',
		"SELECT docextract.extract_document('$pdf', '$tid', '{\"force\": true$opts}')");
}

sub result { return json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$_[0]')")); }

# -- two requests in parallel, progress between them -----------------------------
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN docextract');
# The first request is held until both are in flight (a delay could end
# before a stalled worker sent the second); the second answers after 1.5 s,
# so the two answers come at different times either way.
server_script($srv, { hold => 'first_part' }, { delay_ms => 1500 });
my $e = submit('');
wait_until(sub { server_stats($srv)->{inflight} >= 2 }, 'both parts in flight');
server_release($srv, 'first_part');
is($node->safe_psql('postgres', "SELECT parts FROM docextract.extractions WHERE id = '$e'"), '2',
	'a template with a table part, parallel_parts on: two parts');
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'the split extraction completes');
my $reqs = server_requests($srv);
is(scalar @$reqs, 2, 'two requests sent');
my %asked;
for my $r (@$reqs)
{
	my $schema = json_of($r->{body})->{response_format}{json_schema}{schema};
	$asked{ join(',', sort keys %{ $schema->{properties} }) } = $schema;
}
ok(exists $asked{general}, 'one request asks for the general fields only');
ok(exists $asked{table}, 'the other asks for the line items only');
is_deeply($asked{table}{required}, ['table'], '... and requires only "table"');
is(server_stats($srv)->{max_inflight}, 2, 'the two requests were in flight at the same time');

my $r = result($e);
is($r->{data}{general}{invoice_number}, 'INV-2026-0042', 'general fields from the first part');
is($r->{data}{general}{total_amount}, 1469.06, '... typed');
is(scalar @{ $r->{data}{table} }, 3, 'line items from the second part');
is_deeply($r->{data}{table}[2], { description => 'Installation service', quantity => 1, amount => 909.5 },
	'... typed');
is($r->{usage}{requests}, 2, 'usage counts two requests');
ok($r->{usage}{latency_ms} >= 1400, "latency is the slower part's ($r->{usage}{latency_ms} ms)");

my $events = $listener->query_safe('SELECT 1');
like($events, qr/"event" : "extraction\.progress", "extraction_id" : "$e".*"completion_percentage" : 50/,
	'extraction.progress at 50% when the first part is in');
like($events, qr/"event" : "extraction\.progress", "extraction_id" : "$e".*"step" : "part"/,
	'... naming its step: a part');
like($events, qr/extraction\.progress.*"extraction_id" : "$e".*extraction\.completed/s,
	'... before extraction.completed');
is($node->safe_psql('postgres', "SELECT completion_percentage FROM docextract.extractions WHERE id = '$e'"),
	'100', 'completion_percentage 100 at the end');

# -- one part fails: the extraction fails with its message, the other is dropped --
server_script($srv, { status => 400, body => '{"error": {"message": "bad part request"}}' },
	{ delay_ms => 5000 });
my $abandoned = server_stats($srv)->{abandoned};
$e = submit('');
is(wait_for_status($node, $e, 'completed', 'failed'), 'failed', 'a 400 on one part fails the extraction');
like($node->safe_psql('postgres', "SELECT error_message FROM docextract.extractions WHERE id = '$e'"),
	qr/HTTP 400: bad part request/, "... with the provider's message");
ok(!$node->safe_psql('postgres', "SELECT count(*) FROM docextract.results WHERE extraction_id = '$e'"),
	'... and no result');
# Answered after its 5 s, it would never count as abandoned: no race either way.
ok(wait_until(sub { server_stats($srv)->{abandoned} > $abandoned }, 'the other part dropped'),
	'the other part was dropped, not left waiting 5 s');

# -- one part retryable: the whole extraction is tried again --------------------
server_script($srv, { status => 503, body => 'busy' }, {});
$e = submit('');
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'a 503 on one part: retried, then completed');
is($node->safe_psql('postgres', "SELECT attempts FROM docextract.extractions WHERE id = '$e'"), '2',
	'... in a second attempt of both parts');
is(scalar(@{ result($e)->{data}{table} }), 3, '... with all its data');

# -- the option and the limits decide ------------------------------------------------
$e = submit(', "parallel_parts": false');
is($node->safe_psql('postgres', "SELECT parts FROM docextract.extractions WHERE id = '$e'"), '1',
	'option parallel_parts false overrides the model');
wait_for_status($node, $e, 'completed');
$e = submit(', "model": "single"');
is($node->safe_psql('postgres', "SELECT parts FROM docextract.extractions WHERE id = '$e'"), '1',
	'a model with max_concurrency 1 is never split');
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', '... and completes');
my $notable = $node->safe_psql('postgres', q{SELECT docextract.create_template('header only',
	'{"general_part": {"invoice_number": {"name": "Invoice Number", "format_type": "text"}}, "table_part": null}')});
$e = $node->safe_psql('postgres', "SELECT docextract.extract_document('$pdf', '$notable')");
is($node->safe_psql('postgres', "SELECT parts FROM docextract.extractions WHERE id = '$e'"), '1',
	'a template without a table part is one request');
wait_for_status($node, $e, 'completed');

# -- parts count against max_concurrency ----------------------------------------------
server_reset($srv);
server_script($srv, map { { delay_ms => 400 } } 1 .. 8);
my @ids = map { submit(qq{, "model": "narrow", "seed": $_}) } 1 .. 4;
is(wait_for_status($node, $_, 'completed', 'failed'), 'completed', 'narrow model: completes') for @ids;
my $stats = server_stats($srv);
is($stats->{count}, 8, 'four split extractions: eight requests');
is($stats->{max_inflight}, 2, 'max_concurrency 2 reached and never exceeded, counting requests');

# -- gemini: the table-only part in its schema dialect -----------------------------------
$e = submit(', "model": "flash"');
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'gemini: split extraction completes');
$r = result($e);
is($r->{data}{general}{invoice_number}, 'INV-2026-0042', 'gemini: general part');
is(scalar @{ $r->{data}{table} }, 3, 'gemini: table part');
my @gem = grep { $_->{path} =~ /generateContent/ } @{ server_requests($srv) };
my @orders = sort map { join(',', @{ json_of($_->{body})->{generationConfig}{responseSchema}{propertyOrdering} }) } @gem;
is_deeply(\@orders, [ 'general', 'table' ], 'gemini: one schema per part, each with its own propertyOrdering');

# -- extract_sync splits the same way ------------------------------------------------------
my $sync = json_of($node->safe_psql('postgres',
	"SELECT docextract.extract_sync(pg_read_binary_file('" . fixture('invoice.pdf') . "'), '$tid')"));
is($sync->{status}, 'completed', 'extract_sync with a split model completes');
is($sync->{usage}{requests}, 2, '... in two requests');
is(scalar @{ $sync->{data}{table} }, 3, '... with the line items');

$listener->quit;
done_testing();
