# API keys: unreadable by ordinary roles, sent only where they belong, never
# in an error message, an event or the server log; other roles' work unseen.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $key = 'sk-live-supersecret-abcdef123456';
my $wrong = 'sk-wrong-key-zyxwvu987654';
my $srv = start_model_server(api_key => $key);
# The server's real default: statements are not logged.  (PostgreSQL logs any
# statement text under log_statement = all, keys and passwords alike.)
$ENV{DOCEXTRACT_TEST_KEY} = $key;
my $node = new_node('secrets', conf => "log_statement = none\nlog_min_messages = debug1\n");

$node->safe_psql('postgres', qq{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', '$key');
	SELECT docextract.add_model('wrong', 'openai', '$srv->{url}/v1', 'test-model', '$wrong');
	SELECT docextract.add_model('from-env', 'openai', '$srv->{url}/v1', 'test-model', 'env:DOCEXTRACT_TEST_KEY');
	SELECT docextract.add_model('env-unset', 'openai', '$srv->{url}/v1', 'test-model', 'env:DOCEXTRACT_NOT_SET');});
# A failing add_model does not log its statement, which holds the key.
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT docextract.add_model('x', 'openai', 'ftp://nowhere', 'm', '$key')");
like($err, qr/base_url must be an http/, 'a bad add_model fails');

($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM docextract.model_keys', extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied for table model_keys/, 'an ordinary role cannot read model_keys');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT docextract.add_model('default', 'openai', 'http://evil.example/v1', 'm')", extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied for function add_model/, 'an ordinary role cannot replace a model');
$out = $node->safe_psql('postgres', "SELECT row_to_json(m)::text FROM docextract.models m", extra_params => [ '-U', 'alice' ]);
unlike($out, qr/\Q$key\E/, 'the models table an ordinary role reads has no key');

my $tid = add_invoice_template($node, 'alice');
my $doc = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");
$node->safe_psql('postgres', "ALTER TABLE docextract.documents DISABLE TRIGGER ALL;
	UPDATE docextract.documents SET owner = 'alice'; ALTER TABLE docextract.documents ENABLE TRIGGER ALL");

my $ok = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc', '$tid')", extra_params => [ '-U', 'alice' ]);
is(wait_for_status($node, $ok, 'completed', 'failed'), 'completed', "alice's extraction with the right key completes");
is(server_requests($srv)->[0]{headers}{authorization}, "Bearer $key", 'the key went in the Authorization header');

my $bad = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc', '$tid', '{\"model\": \"wrong\"}')",
	extra_params => [ '-U', 'alice' ]);
is(wait_for_status($node, $bad, 'completed', 'failed'), 'failed', 'a wrong key fails');
my $msg = $node->safe_psql('postgres', "SELECT docextract.extraction_status('$bad')->>'error_message'",
	extra_params => [ '-U', 'alice' ]);
like($msg, qr/^model endpoint answered HTTP 401: Incorrect API key provided: \[redacted\]/,
	'the 401 message reaches the user');
unlike($msg, qr/sk-wrong|zyxwvu987654/, '... with the echoed key redacted');

# a key kept in the server's environment
my $env = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc', '$tid', '{\"model\": \"from-env\"}')",
	extra_params => [ '-U', 'alice' ]);
is(wait_for_status($node, $env, 'completed', 'failed'), 'completed', 'api_key env:NAME is read from the server environment');
is(server_requests($srv)->[-1]{headers}{authorization}, "Bearer $key", '... and sent as the bearer token');
my $unset = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc', '$tid', '{\"model\": \"env-unset\"}')",
	extra_params => [ '-U', 'alice' ]);
is(wait_for_status($node, $unset, 'completed', 'failed'), 'failed', 'an unset env: key fails the job');
like($node->safe_psql('postgres', "SELECT error_message FROM docextract.extractions WHERE id = '$unset'"),
	qr/environment variable DOCEXTRACT_NOT_SET, which is not set/, '... saying which variable');

# bob sees nothing of alice's
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.extractions", extra_params => [ '-U', 'bob' ]),
	'0', 'bob sees none of alice\'s extractions');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results", extra_params => [ '-U', 'bob' ]),
	'0', 'bob sees none of alice\'s results');
($ret, $out, $err) = $node->psql('postgres', "SELECT docextract.get_result('$ok')", extra_params => [ '-U', 'bob' ]);
like($err, qr/extraction $ok does not exist/, 'bob cannot fetch alice\'s result by id');
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.results", extra_params => [ '-U', 'alice' ]),
	'2', 'alice sees her two results');

my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$key\E/, 'the key never appears in the server log');
unlike($log, qr/\Q$wrong\E|zyxwvu987654/, 'nor does the wrong key the server echoed');
like($log, qr/failed: model endpoint answered HTTP 401/, '(the failure itself is logged)');

$node->stop;
done_testing();
