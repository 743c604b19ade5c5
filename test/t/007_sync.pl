# extract_sync: the pipeline in a background worker of the call's own, its
# document and extraction stored by that worker's own transactions.  It
# returns the result; statement_timeout and pg_cancel_backend end it while it
# waits on HTTP, and then the extraction is cancelled (020_paid: its credits
# released).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $srv = start_model_server();
my $node = new_node('sync');
$node->safe_psql('postgres', qq{
	CREATE ROLE alice LOGIN;
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 1, "retry_backoff_ms": 100}');});
my $tid = add_invoice_template($node, 'alice');
my $bytes = "pg_read_binary_file('" . fixture('invoice.pdf') . "')";
my $as_alice = [ '-U', 'alice' ];
# alice may not read server files; a superuser-made copy of the bytes in a table she can read
$node->safe_psql('postgres', "CREATE TABLE pdf AS SELECT $bytes AS b; GRANT SELECT ON pdf TO alice");

sub counts
{
	return $node->safe_psql('postgres',
		"SELECT (SELECT count(*) FROM docextract.documents) || '/' || (SELECT count(*) FROM docextract.extractions)");
}

my $r = json_of($node->safe_psql('postgres',
	"SELECT docextract.extract_sync((SELECT b FROM public.pdf), '$tid')", extra_params => $as_alice));
is($r->{status}, "completed", "extract_sync returns a completed result") or diag($r->{error_message});
is($r->{data}{general}{total_amount}, 1469.06, '... typed');
is($r->{data}{general}{invoice_date}, '2026-03-14', '... all of it');
is($node->safe_psql('postgres', "SELECT owner FROM docextract.extractions WHERE id = '$r->{extraction_id}'"),
	'alice', 'the extraction belongs to the caller');
is(counts(), '1/1', 'its document and extraction are kept, like any other');

# a retryable failure is retried in the backend, a final one returned as the result
server_script($srv, { status => 503, body => '{"error": {"message": "overloaded"}}' });
$r = json_of($node->safe_psql('postgres', "SELECT docextract.extract_sync((SELECT b FROM public.pdf), '$tid')"));
is($r->{status}, 'completed', 'a 503 is retried inside extract_sync');
is($r->{usage}{attempts}, 2, '... on the second attempt');
server_script($srv, { status => 400, body => '{"error": {"message": "Invalid image"}}' });
$r = json_of($node->safe_psql('postgres', "SELECT docextract.extract_sync((SELECT b FROM public.pdf), '$tid')"));
is($r->{status}, 'failed', 'a final failure is returned as a failed result');
is($r->{error_message}, 'model endpoint answered HTTP 400: Invalid image', '... with its message');
is(counts(), '3/3', 'three documents, three extractions');

# statement_timeout while waiting on a slow model
# (The timeout leaves the call's worker time to start, parse and send the
# request even on a loaded machine; the model would need a minute.)
server_script($srv, { delay_ms => 60000 });
my $t0 = time;
my ($ret, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '4s'; SELECT docextract.extract_sync((SELECT b FROM public.pdf), '$tid')");
my $took = time - $t0;
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout ends extract_sync');
ok($took < 30, sprintf('... promptly (%.1fs for a 4s timeout, the model needing 60s)', $took));
wait_abandoned($srv, 1);
is(server_stats($srv)->{abandoned}, 1, '... and the request was abandoned on the wire');
# Changed with 020_paid: the document and extraction were committed by the
# call's worker, which cancels the extraction when its caller leaves.
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM docextract.extractions WHERE status = 'processing'")
  or die 'the timed-out extraction was never cancelled';
is(counts(), '4/4', '... its document and extraction stay');
is($node->safe_psql('postgres', "SELECT status || ': ' || error_message FROM docextract.extractions
	ORDER BY created_at DESC LIMIT 1"), "cancelled: extract_sync's caller stopped waiting",
	'... the extraction cancelled, saying why');

# pg_cancel_backend while waiting (the model would answer after 60 s)
server_script($srv, { delay_ms => 60000 });
my ($in, $o, $e) = ('', '', '');
my $h = IPC::Run::start([ 'psql', '-X', '-d', $node->connstr('postgres'), '-c',
	"SELECT docextract.extract_sync((SELECT b FROM public.pdf), '$tid')" ], '<', \$in, '>', \$o, '2>', \$e);
wait_inflight($srv, 1);
is(server_stats($srv)->{inflight}, 1, 'a second call is waiting on the model');
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%extract_sync%' AND pid <> pg_backend_pid()");
$h->finish;
like($e, qr/canceling statement due to user request/, 'pg_cancel_backend ends it');
ok(time - $t0 < 30, sprintf('... promptly (%.1fs, the model needing 60s)', time - $t0));
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM docextract.extractions WHERE status = 'processing'")
  or die 'the cancelled call\'s extraction was never cancelled';
is($node->safe_psql('postgres', "SELECT string_agg(status, ',' ORDER BY created_at)
	FROM docextract.extractions WHERE status NOT IN ('completed', 'failed')"), 'cancelled,cancelled',
	'... its extraction cancelled');

# bad input
($ret, $out, $err) = $node->psql('postgres', "SELECT docextract.extract_sync('hello', '$tid')");
like($err, qr/document "document" is not a PDF, JPEG, PNG, HEIC or HEIF file/, 'not a document: 22023 from add_document');
($ret, $out, $err) = $node->psql('postgres', "SELECT docextract.extract_sync(NULL, '$tid')");
like($err, qr/extract_sync needs the document's content/, 'NULL content: a clear error');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT docextract.extract_sync((SELECT b FROM public.pdf), '00000000-0000-0000-0000-000000000000')");
like($err, qr/template 00000000-0000-0000-0000-000000000000 does not exist/, 'unknown template');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT docextract.extract_sync((SELECT b FROM public.pdf), '$tid', '{\"max_retries\": 11}')");
like($err, qr/option "max_retries" has an invalid value 11/, 'max_retries beyond 10: refused');
is(counts(), '5/5', 'bad input stores nothing');

$node->stop;
done_testing();
