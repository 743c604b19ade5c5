# The whole pipeline on a real cluster: a stored PDF and a PNG go through the
# worker to a local model server over real HTTP and come back as typed jsonb,
# with the events a LISTENing session receives.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $key = 'sk-test-pipeline-0123456789';
my $srv = start_model_server(api_key => $key);
my $node = new_node('pipeline');
my $pid = worker_pid($node);
ok($pid > 0, 'the worker runs');

$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"timeout_ms": 10000}');
	SELECT docextract.add_model('file-mode', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"document_mode": "file"}');});
my $tid = add_invoice_template($node);
my $pdf = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");
my $png = $node->safe_psql('postgres',
	"SELECT docextract.add_document('receipt.png', pg_read_binary_file('" . fixture('receipt.png') . "'))");

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN docextract');

# -- a PDF, sent as its text -------------------------------------------------
my $e1 = $node->safe_psql('postgres', "SELECT docextract.extract_document('$pdf', '$tid')");
is(wait_for_status($node, $e1, 'completed', 'failed'), 'completed', 'PDF extraction completes');
is($node->safe_psql('postgres',
	"SELECT started_at - created_at < interval '5 seconds' FROM docextract.extractions WHERE id = '$e1'"),
	't', 'claimed at once on commit although the poll interval is 60s');

my $r = json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$e1')"));
my $g = $r->{data}{general};
is($r->{status}, 'completed', 'result status');
is($r->{extraction_id}, $e1, 'result names the extraction');
is($g->{invoice_number}, 'INV-2026-0042', 'text field');
is($g->{invoice_date}, '2026-03-14', '"March 14, 2026" typed as an ISO date');
is($g->{due_date}, '2026-04-13', '"13.04.2026" typed as an ISO date');
is($g->{currency}, 'EUR', '"eur" matched to its multiple_choice option');
ok(JSON::PP::is_bool($g->{paid}) && !$g->{paid}, '"no" typed as boolean false');
is($g->{subtotal}, 1234.5, '"1,234.50" typed as a number');
is($g->{total_amount}, 1469.06, '"EUR 1,469.06" typed as a number');
is(scalar @{ $r->{data}{table} }, 3, 'three line items');
is_deeply($r->{data}{table}[2], { description => 'Installation service', quantity => 1, amount => 909.5 },
	'line items typed');
is_deeply($r->{validation}, [], 'no validation rules, no entries');
ok($r->{usage}{input_tokens} > 0 && $r->{usage}{output_tokens} > 0, 'token usage recorded');
ok(defined $r->{usage}{latency_ms}, 'latency recorded');
is($r->{usage}{model}, 'test-model', 'model recorded');
is($r->{usage}{attempts}, 1, 'one attempt');

my $s = json_of($node->safe_psql('postgres', "SELECT docextract.extraction_status('$e1')"));
is($s->{status}, 'completed', 'extraction_status: status');
is($s->{completion_percentage}, 100, 'extraction_status: 100%');
is($s->{credits_used}, 1, 'extraction_status: one page, one credit');
ok($s->{started_at} && $s->{completed_at}, 'extraction_status: times');
is_deeply($s->{sub_documents}, [], 'extraction_status: no sub-documents');

# What went over the wire, checked as the real API would see it.
my ($req) = @{ server_requests($srv) };
is($req->{path}, '/v1/chat/completions', 'POST to {base_url}/chat/completions');
is($req->{headers}{authorization}, "Bearer $key", 'Authorization: Bearer <key>');
my $body = json_of($req->{body});
is($body->{model}, 'test-model', 'model in the body');
is($body->{response_format}{type}, 'json_schema', 'response_format json_schema');
ok($body->{response_format}{json_schema}{strict}, '... strict');
is_deeply([ sort keys %{ $body->{response_format}{json_schema}{schema}{properties}{general}{properties} } ],
	[qw(currency due_date invoice_date invoice_number paid subtotal total_amount)],
	'schema lists every general field');
like($body->{messages}[0]{content}, qr/Amounts are in the invoice currency\..*Read the invoice header\..*invoice_date \("Invoice Date"\).*The date the invoice was issued.*Read every line item\./s,
	'system prompt: global instructions, prompts, field prompts');
like($body->{messages}[1]{content}, qr/Invoice Number: INV-2026-0042/, 'PDF sent as its text');

# -- a PNG, sent as an image part -------------------------------------------------
my $e2 = $node->safe_psql('postgres', "SELECT docextract.extract_document('$png', '$tid')");
is(wait_for_status($node, $e2, 'completed', 'failed'), 'completed', 'PNG extraction completes');
$g = json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$e2')->'data'->'general'"));
is($g->{invoice_number}, 'R-7731', 'PNG: text field');
is($g->{invoice_date}, '2026-11-02', 'PNG: date');
is($g->{total_amount}, 11.34, 'PNG: "$11.34" typed as a number');
ok($g->{paid}, 'PNG: "yes" typed as true');
is($g->{due_date}, undef, 'PNG: a field not in the document is null');
$body = json_of(server_requests($srv)->[-1]{body});
is($body->{messages}[1]{content}[1]{type}, 'image_url', 'image sent as an image_url part');
like($body->{messages}[1]{content}[1]{image_url}{url}, qr{^data:image/png;base64,iVBORw0KGgo},
	'... as a base64 data URL of the PNG');

# -- a PDF sent as a file part (model option document_mode = file) ---------------------------
my $e3 = $node->safe_psql('postgres',
	"SELECT docextract.extract_document('$pdf', '$tid', '{\"model\": \"file-mode\"}')");
is(wait_for_status($node, $e3, 'completed', 'failed'), 'completed', 'file-mode extraction completes');
$body = json_of(server_requests($srv)->[-1]{body});
is($body->{messages}[1]{content}[1]{type}, 'file', 'PDF sent as a file part');
like($body->{messages}[1]{content}[1]{file}{file_data}, qr{^data:application/pdf;base64,JVBERi0},
	'... base64 of the PDF');
is($node->safe_psql('postgres', "SELECT docextract.get_result('$e3')->'data'->'general'->>'total_amount'"),
	'1469.06', 'file mode gives the same typed data');

# -- per_key_attribution, and cost from the model's prices -------------------------
$node->safe_psql('postgres', qq{SELECT docextract.add_model('priced', 'openai', '$srv->{url}/v1', 'test-model',
	'$key', '{"input_price_per_million": 0.15, "output_price_per_million": 0.6}')});
my $e5 = $node->safe_psql('postgres',
	"SELECT docextract.extract_document('$pdf', '$tid', '{\"per_key_attribution\": true, \"model\": \"priced\"}')");
is(wait_for_status($node, $e5, 'completed', 'failed'), 'completed', 'per_key_attribution: completed');
$body = json_of(server_requests($srv)->[-1]{body});
my $aschema = $body->{response_format}{json_schema}{schema}{properties}{attributions};
is_deeply([ sort @{ $aschema->{required} } ],
	[qw(currency due_date invoice_date invoice_number paid subtotal total_amount)],
	'per_key_attribution: the schema asks for an attribution per general field');
is_deeply($aschema->{properties}{paid}{required}, [ 'confidence', 'evidence' ], '... a confidence and the evidence');
like($body->{messages}[0]{content}, qr/also give in "attributions"/, '... and the prompt says so');
$r = json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$e5')"));
is_deeply($r->{attributions}{invoice_number},
	{ confidence => 0.9, evidence => { quote => 'Invoice Number: INV-2026-0042', page => 1 } },
	'attributions stored: confidence, quoted text, page');
is($r->{attributions}{due_date}{confidence}, 0.9, '... for every general field');
is($r->{data}{general}{invoice_number}, 'INV-2026-0042', '... and the data as usual');
ok(!exists json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$e1')"))->{attributions},
	'no attributions when not asked');
my $cost = ($r->{usage}{input_tokens} * 0.15 + $r->{usage}{output_tokens} * 0.6) / 1e6;
ok(abs($r->{usage}{cost} - $cost) < 1e-6, "usage.cost from the model's prices ($r->{usage}{cost})");
ok(!exists json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$e1')"))->{usage}{cost},
	'no cost for an unpriced model');

# -- events ------------------------------------------------------------------------
my $events = $listener->query_safe('SELECT 1');
for my $ev (qw(started completed))
{
	like($events, qr/"event" : "extraction\.$ev", "extraction_id" : "$e1"/, "LISTEN saw extraction.$ev for the PDF");
}
# extraction.queued is not sent by NOTIFY (every notifying commit is serialised
# cluster-wide, submits would be): it is in the outbox, for webhooks and readers.
unlike($events, qr/"event" : "extraction\.queued"/, 'LISTEN saw no extraction.queued');
is($node->safe_psql('postgres',
		"SELECT string_agg(event, ',' ORDER BY id) FROM docextract.events WHERE extraction_id = '$e1'"),
	'extraction.queued,extraction.started,extraction.completed', '... the outbox holds it, with the others');
like($events, qr/"extraction_id" : "$e2".*"status" : "completed"/, 'LISTEN saw the PNG complete');
unlike($events, qr/INV-2026-0042|$key/, 'events carry no extracted data and no key');

# -- resubmitting and rolling back -------------------------------------------------------
my $count = server_stats($srv)->{count};
is($node->safe_psql('postgres', "SELECT docextract.extract_document('$pdf', '$tid')"), $e1,
	'the same document + template + options returns the earlier id');
$node->safe_psql('postgres', "BEGIN; SELECT docextract.extract_document('$pdf', '$tid', '{\"force\": true}'); ROLLBACK;");
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.extractions"), '4',
	'a rolled-back submit leaves no row');
my $e4 = $node->safe_psql('postgres', "SELECT docextract.extract_document('$pdf', '$tid', '{\"force\": true}')");
isnt($e4, $e1, 'force makes a new extraction');
is(wait_for_status($node, $e4, 'completed', 'failed'), 'completed', 'the forced one completes');
is(server_stats($srv)->{count}, $count + 1,
	'only the forced submit reached the model (no request for the duplicate or the rollback)');

is(worker_pid($node), $pid, 'the same worker did all of it');
$listener->quit;
$node->stop;
done_testing();
