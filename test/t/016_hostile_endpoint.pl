# A hostile model endpoint (test/hostile_server.py): JSON null and wrong types
# at every level, U+0000, invalid UTF-8, nesting 100k deep, hundreds of MB,
# truncation, a garbage status line, a slowloris, redirects; then a randomized
# run that mutates valid answers of all three providers.  Every such answer
# fails its job with a clear message, the worker never restarts, and nothing
# invalid is stored.  Webhook receivers' answers are read the same way.
#
# DX_HOSTILE_CASES sets the randomized run's count (default 300),
# DX_HOSTILE_SEED its first seed.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use Encode;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $http = HTTP::Tiny->new(timeout => 30);
my $hostile_pid;

sub start_hostile_server
{
	my $port_file = "$PostgreSQL::Test::Utils::tmp_check/hostile_port_$$";
	my $log = "$PostgreSQL::Test::Utils::log_path/hostile_server.log";
	unlink $port_file;
	$hostile_pid = fork();
	die "fork failed: $!" unless defined $hostile_pid;
	if ($hostile_pid == 0)
	{
		open(STDOUT, '>>', $log);
		open(STDERR, '>>', $log);
		exec('python3', "$DxTest::root/test/hostile_server.py", '--port-file', $port_file)
		  or die "exec: $!";
	}
	wait_until(sub { -s $port_file }, 'the hostile server');
	die "hostile server did not start (see $log)" unless -s $port_file;
	my $port = slurp_file($port_file);
	return "http://127.0.0.1:$port";
}

END { kill 'TERM', $hostile_pid if $hostile_pid; }

my $url = start_hostile_server();

sub requested_paths { return decode_json($http->get("$url/_paths")->{content}); }

my $node = new_node('hostile', conf => "docextract.webhook_retry_backoff = '1h'\n");
my $pid = worker_pid($node);
my %base = (openai => "$url/v1", gemini => "$url/v1beta", anthropic => "$url/v1");
my $tid = add_invoice_template($node);
my $doc = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");

# Each request names its case as its model, so that many extractions can be
# in flight at once and each still gets its own case.  A model per case and
# provider, an extraction of each: statements of a few psql calls in all.
sub run_cases
{
	my (@pairs) = @_;			# [case, provider]
	my $values = join(',', map { "('$_->[0]', '$_->[1]')" } @pairs);
	$node->safe_psql('postgres', qq{
		CREATE TEMP TABLE c (ord serial, kase text, provider text);
		INSERT INTO c (kase, provider) VALUES $values;
		SELECT docextract.add_model('hx_' || provider || '_' || kase, provider,
		    CASE provider WHEN 'gemini' THEN '$base{gemini}' ELSE '$base{openai}' END, kase, NULL,
		    -- 3 s for the slowloris only: the others may wait their turn behind
		    -- the 10 MB answers on a slow machine, and must not time out.
		    CASE kase WHEN 'slowloris' THEN '{"timeout_ms": 3000, "max_retries": 0}'
		              ELSE '{"timeout_ms": 60000, "max_retries": 0}' END::jsonb)
		  FROM c WHERE NOT EXISTS (SELECT 1 FROM docextract.models WHERE name = 'hx_' || provider || '_' || kase);
		CREATE TABLE IF NOT EXISTS public.runs (kase text, provider text, id uuid);
		INSERT INTO public.runs SELECT kase, provider, docextract.extract_document('$doc', '$tid',
		    jsonb_build_object('force', true, 'model', 'hx_' || provider || '_' || kase)) FROM c ORDER BY ord;
	});
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM docextract.extractions WHERE status IN ('pending', 'processing', 'retrying')")
	  or die 'the extractions did not end';
	my %out;
	for my $line (split /\n/, $node->safe_psql('postgres', qq{
		SELECT r.kase, r.provider, e.status, e.id, coalesce(e.error_message, '')
		  FROM public.runs r JOIN docextract.extractions e ON e.id = r.id
		 WHERE r.kase || '/' || r.provider IN (} . join(',', map { "'$_->[0]/$_->[1]'" } @pairs) . ')'))
	{
		my ($case, $p, $status, $id, $msg) = split /\|/, $line, 5;
		$out{"$case/$p"} = { status => $status, id => $id, msg => Encode::decode('UTF-8', $msg) };
	}
	return \%out;
}

my @all = qw(openai gemini anthropic);
my $no_reply = qr/has no|no text|did not call|input is not a JSON object|not a JSON object/;
my @cases = (
	[ 'null_root', \@all, qr/the response is not a JSON object/ ],
	[ 'null_list', \@all, qr/has no (choices\[0\]\.message|candidates\[0\]|content blocks)/ ],
	[ 'null_container', \@all, $no_reply ],
	[ 'null_text', \@all, $no_reply ],
	[ 'number_text', \@all, $no_reply ],
	[ 'string_list', \@all, qr/has no (choices|candidates|content)/ ],
	[ 'nulls_everywhere', \@all, qr/has no/ ],
	[ 'answer_null', \@all, qr/not a JSON object with a "general" object|input is not a JSON object/ ],
	[ 'answer_general_null', \@all, qr/not a JSON object with a "general" object/ ],
	[ 'answer_wrong_types', \@all, 'completed' ],
	[ 'usage_wrong_types', \@all, 'completed' ],
	[ 'lone_surrogate', \@all, 'completed' ],
	[ 'nul_escaped', \@all, qr/U\+0000/ ],
	[ 'nul_escaped_envelope', \@all, qr/U\+0000/ ],
	[ 'nul_raw', \@all, qr/contains a NUL byte/ ],
	[ 'invalid_utf8', \@all, qr/not valid UTF-8 at byte \d+/ ],
	[ 'deep_answer', \@all, qr/nested deeper than 64 levels/ ],
	[ 'deep_envelope', \@all, qr/nested deeper than 64 levels/ ],
	[ 'nan', \@all, qr/not finite/ ],
	[ 'trailing_garbage', \@all, qr/the response is not a JSON object/ ],
	[ 'truncated_json', \@all, qr/the JSON text is truncated/ ],
	[ 'empty_body', \@all, qr/the body is empty/ ],
	[ 'error_message_null', ['openai'], qr/^model endpoint answered HTTP 400: \{"error"/ ],
	[ 'error_null', ['gemini'], qr/^model endpoint answered HTTP 500: / ],
	[ 'invalid_utf8_error', ['anthropic'], qr/^model endpoint answered HTTP 500: .*bad \x{FFFD}/ ],
	[ 'invalid_utf8_plain_error', ['openai'], qr/^model endpoint answered HTTP 502: <html>\x{FFFD}/ ],
	[ 'status_999', ['openai'], qr/^model endpoint answered HTTP 999: strange/ ],
	[ 'garbage_status_line', ['openai'], qr/^request to \S+ failed: / ],
	[ 'not_http', ['gemini'], qr/^request to \S+ failed: / ],
	[ 'huge_header', ['openai'], qr/^request to \S+ failed: / ],
	[ 'truncated_transfer', ['anthropic'], qr/^request to \S+ failed: .*(transfer closed|bytes remaining)/ ],
	[ 'huge_body', ['openai'], qr/the answer is larger than docextract\.max_response_size \(10240 kB\)/ ],
	[ 'huge_chunked', ['gemini'], qr/the answer is larger than docextract\.max_response_size \(10240 kB\)/ ],
	[ 'slowloris', ['openai'], qr/^request to \S+ failed: .*([Tt]imeout was reached|timed out)/ ],
	[ 'redirect', ['openai'],
		qr{^model endpoint answered HTTP 302 redirect to "http://127\.0\.0\.1:\d+/elsewhere/chat/completions" not followed} ],
	[ 'redirect_307', ['anthropic'], qr{^model endpoint answered HTTP 307 redirect to "http://127\.0\.0\.1:9/x" not followed} ],
);

my $got = run_cases(map { my $c = $_; map { [ $c->[0], $_ ] } @{ $c->[1] } } @cases);
for my $c (@cases)
{
	my ($case, $providers, $expect) = @$c;
	for my $p (@$providers)
	{
		my $r = $got->{"$case/$p"};
		if (!ref $expect)
		{
			is($r->{status}, $expect, "$case ($p): $expect") or diag($r->{msg});
		}
		else
		{
			is($r->{status}, 'failed', "$case ($p): failed");
			like($r->{msg}, $expect, "$case ($p): the message says why");
		}
	}
}
ok(!grep(m{/elsewhere}, @{ requested_paths() }), 'the redirect was not followed');
is(Encode::decode('UTF-8', $node->safe_psql('postgres',
		"SELECT docextract.get_result('$got->{'lone_surrogate/gemini'}{id}')->'data'->'general'->>'invoice_number'")),
	"A\x{FFFD}B\x{FFFD}", 'lone surrogates are read as U+FFFD');
is($node->safe_psql('postgres',
		"SELECT docextract.get_result('$got->{'usage_wrong_types/anthropic'}{id}')->'usage'->>'input_tokens'"),
	'0', 'token counts that are not counts are 0');

# Webhook receivers' answers: excerpts are valid UTF-8, redirects are not
# followed, a huge answer stops at the cap.
for my $case (qw(invalid_utf8_plain_error redirect huge_body))
{
	$node->safe_psql('postgres', "SELECT docextract.add_webhook('$url/hooks/$case', 'secret-0123456789abcdef', '{extraction.completed}')");
}
run_cases([ 'answer_wrong_types', 'gemini' ]);
$node->poll_query_until('postgres', "SELECT count(*) = 3 FROM docextract.webhook_deliveries WHERE last_error IS NOT NULL")
  or die 'the webhook deliveries were not tried';
my %hook_error = map { split /\|/, $_, 2 } split /\n/, $node->safe_psql('postgres',
	"SELECT regexp_replace(w.url, '.*/', ''), d.last_error FROM docextract.webhook_deliveries d
	  JOIN docextract.webhooks w ON w.id = d.webhook_id");
like(Encode::decode('UTF-8', $hook_error{invalid_utf8_plain_error}), qr/^HTTP 502: <html>\x{FFFD}/,
	'webhook: a bad body is quoted as valid UTF-8');
like($hook_error{redirect}, qr/^HTTP 302 redirect to "\S+\/elsewhere\/chat\/completions" not followed/,
	'webhook: a redirect is not followed');
like($hook_error{huge_body}, qr/larger than docextract\.max_response_size/, 'webhook: a huge answer stops at the cap');
ok(!grep(m{/elsewhere}, @{ requested_paths() }), 'nor was the webhook redirect');

# The randomized run: mutated valid answers of all three providers, one
# model each, its requests served seeds $seed, $seed + 3, ... (+1, +2).
my $n = $ENV{DX_HOSTILE_CASES} // 300;
my $seed = $ENV{DX_HOSTILE_SEED} // 1;
$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('hx_' || p || '_random', p,
	    CASE p WHEN 'gemini' THEN '$base{gemini}' ELSE '$base{openai}' END, 'random-$seed', NULL,
	    '{"timeout_ms": 3000, "max_retries": 0}')
	  FROM unnest(ARRAY['openai', 'gemini', 'anthropic']) p;
	CREATE TABLE public.random_runs AS
	  SELECT i, docextract.extract_document('$doc', '$tid', jsonb_build_object('force', true,
	           'model', 'hx_' || (ARRAY['openai', 'gemini', 'anthropic'])[1 + i % 3] || '_random')) AS id
	    FROM generate_series(0, $n - 1) i;
});
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM docextract.extractions WHERE status IN ('pending', 'processing', 'retrying')")
  or die 'the randomized run did not end';
diag("randomized run of $n cases from seed $seed: " . $node->safe_psql('postgres',
	"SELECT string_agg(status || ' ' || n, ', ') FROM (SELECT status, count(*) n FROM public.random_runs r
	   JOIN docextract.extractions e USING (id) GROUP BY status ORDER BY status) s"));
is($node->safe_psql('postgres', "SELECT count(*) FROM public.random_runs r JOIN docextract.extractions e USING (id)
	WHERE e.status IN ('completed', 'failed', 'awaiting_approval')"), $n, 'every randomized case ended');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.extractions
	WHERE status = 'failed' AND coalesce(error_message, '') = ''"), '0', 'every failure has a message');

# Nothing invalid stored: every jsonb and message is valid UTF-8 and reads back.
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results
	WHERE convert_from(convert_to(data::text || raw_output::text || usage::text || validation::text
	                              || coalesce(attributions::text, ''), 'UTF8'), 'UTF8') IS NULL
	   OR (data::text)::jsonb <> data OR (raw_output::text)::jsonb <> raw_output"),
	'0', 'every stored result is valid jsonb of valid UTF-8');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.extractions
	WHERE convert_from(convert_to(coalesce(error_message, ''), 'UTF8'), 'UTF8') IS NULL"),
	'0', 'every error message is valid UTF-8');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.webhook_deliveries
	WHERE convert_from(convert_to(coalesce(last_error, ''), 'UTF8'), 'UTF8') IS NULL"),
	'0', 'every delivery error is valid UTF-8');

is(worker_pid($node), $pid, 'the worker never restarted');
unlike(slurp_file($node->logfile), qr/terminated by signal|was terminated|server process .* exited/,
	'no process crashed');

$node->stop;
done_testing();
