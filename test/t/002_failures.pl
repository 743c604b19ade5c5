# A failing job fails with a clear message and the worker goes on: HTTP 500,
# a body that is not JSON, an answer that breaks the schema, an unreachable
# endpoint, a timeout.  Retries are off here (max_retries 0); 005 tests them.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server();
my $node = new_node('failures');
my $pid = worker_pid($node);

# A port nobody listens on: bind one, note it, close it.
my $sock = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0) or die;
my $dead_port = $sock->sockport;
close($sock);

$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 0}');
	SELECT docextract.add_model('down', 'openai', 'http://127.0.0.1:$dead_port/v1', 'test-model', NULL,
	                            '{"max_retries": 0}');
	SELECT docextract.add_model('impatient', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"timeout_ms": 300, "max_retries": 0}');});
my $tid = add_invoice_template($node);
my $doc = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");

# Submit one extraction (forced, so each is new) and wait for its end.
sub run_one
{
	my ($options) = @_;
	$options //= '{}';
	my $id = $node->safe_psql('postgres',
		"SELECT docextract.extract_document('$doc', '$tid', jsonb_build_object('force', true) || '$options')");
	my $status = wait_for_status($node, $id, 'completed', 'failed');
	my $msg = $node->safe_psql('postgres',
		"SELECT coalesce(error_message, '') FROM docextract.extractions WHERE id = '$id'");
	return ($status, $msg, $id);
}

server_script($srv, { status => 500, body => '{"error": {"message": "The server had an error while processing your request."}}' });
my ($status, $msg) = run_one();
is($status, 'failed', 'HTTP 500: failed');
is($msg, 'model endpoint answered HTTP 500: The server had an error while processing your request.',
	'HTTP 500: status code and the provider message');

server_script($srv, { status => 503, body => '<html>upstream gone</html>' });
($status, $msg) = run_one();
is($msg, 'model endpoint answered HTTP 503: <html>upstream gone</html>',
	'HTTP 503 without JSON: status code and the start of the body');

server_script($srv, { body => '<html>this is not JSON</html>' });
($status, $msg) = run_one();
is($status, 'failed', 'non-JSON 200: failed');
is($msg, "could not read the model's answer: the response is not a JSON object", 'non-JSON 200: message');

server_script($srv, { raw_content => 'Sure! The invoice number is INV-2026-0042.' });
($status, $msg) = run_one();
like($msg, qr/^could not read the model's answer: the model's answer is not a JSON object with a "general" object/,
	'prose instead of JSON: failed with a message');

server_script($srv, { answer => { general => 'INV-2026-0042' } });
($status, $msg) = run_one();
is($status, 'failed', 'JSON that breaks the schema: failed');
like($msg, qr/not a JSON object with a "general" object, as the schema requires/, 'schema violation: message');

for my $body ('{"choices": []}', '{"choices": 5}', '{"choices": [5]}', '{"choices": [{"message": "hi"}]}')
{
	server_script($srv, { body => $body });
	($status, $msg) = run_one();
	like($msg, qr/the response has no choices\[0\]\.message|has no text content/, "malformed $body: message");
}
server_script($srv, { body => '{"choices": [{"message": {"content": "{\\"general\\": {}"}}]}' });
($status, $msg) = run_one();
like($msg, qr/not a JSON object with a "general" object/, 'truncated JSON answer: message');
server_script($srv, { body => '{"choices": [{"message": {"content": null, "refusal": "I cannot help with that."}}]}' });
($status, $msg) = run_one();
is($msg, "could not read the model's answer: the model refused: I cannot help with that.", 'refusal: message');

# Wrong types inside a well-formed answer are typed to null, not a failure.
server_script($srv, { answer => { general => { total_amount => 'lots', invoice_date => 'soon',
	paid => 'perhaps', currency => 'DOGE', invoice_number => 'A-1' }, table => 'none' } });
my $id;
($status, $msg, $id) = run_one();
is($status, 'completed', 'untypable values: completed');
is($node->safe_psql('postgres', "SELECT docextract.get_result('$id')->'data'"),
	'{"table": [], "general": {"paid": null, "currency": null, "due_date": null, "subtotal": null, "invoice_date": null, "total_amount": null, "invoice_number": "A-1"}}',
	'untypable values become null; missing fields are null; every field present');

($status, $msg) = run_one('{"model": "down"}');
is($status, 'failed', 'unreachable endpoint: failed');
like($msg, qr{^request to http://127\.0\.0\.1:$dead_port/v1/chat/completions failed: .*(Couldn't connect|Connection refused)},
	'unreachable endpoint: the URL and the connection error');

server_script($srv, { delay_ms => 3000 });
($status, $msg) = run_one('{"model": "impatient"}');
is($status, 'failed', 'slower than timeout_ms: failed');
like($msg, qr/failed: .*(timed out|Timeout)/i, 'slower than timeout_ms: a timeout message');

($status, $msg) = run_one();
is($status, 'completed', 'after all that, the next extraction completes');
is(worker_pid($node), $pid, 'one worker throughout: no failure ended it');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results r JOIN docextract.extractions e
	ON e.id = r.extraction_id WHERE e.status <> 'completed'"), '0', 'failed jobs store no result');
like(slurp_file($node->logfile), qr/extraction [0-9a-f-]+ failed: model endpoint answered HTTP 500/,
	'failures are logged');

$node->stop;
done_testing();
