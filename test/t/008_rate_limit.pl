# requests_per_minute: at most that many requests to a model in any sliding
# 60 seconds; the rest wait in the queue and go when the window frees a slot.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server();
my $node = new_node('rate_limit');
$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model');
	SELECT docextract.add_model('limited', 'openai', '$srv->{url}/v1', 'limited-model', NULL,
	                            '{"requests_per_minute": 3}');});
my $tid = add_invoice_template($node);
my $doc = $node->safe_psql('postgres',
	"SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");

my @ids = map {
	$node->safe_psql('postgres',
		"SELECT docextract.extract_document('$doc', '$tid', '{\"model\": \"limited\", \"seed\": $_}')")
} 1 .. 5;
my $free = $node->safe_psql('postgres', "SELECT docextract.extract_document('$doc', '$tid')");
is(wait_for_status($node, $free, 'completed', 'failed'), 'completed', 'an unlimited model is not held up');
$node->poll_query_until('postgres',
	"SELECT completed >= 3 FROM docextract.worker_stats WHERE model_name = 'limited'") or die 'never 3 completed';
is($node->safe_psql('postgres', "SELECT completed || '/' || queued FROM docextract.worker_stats WHERE model_name = 'limited'"),
	'3/2', 'three requests in the first minute, two waiting');

wait_for_status($node, $_, 'completed', 'failed') for @ids;
is($node->safe_psql('postgres', "SELECT count(*) FROM docextract.extractions WHERE model_name = 'limited' AND status = 'completed'"),
	'5', 'all five complete in the end');
my @t = map { $_->{time} } grep { json_of($_->{body})->{model} eq 'limited-model' } @{ server_requests($srv) };
is(scalar @t, 5, 'five requests reached the model');
ok($t[3] - $t[0] >= 59.9 && $t[4] - $t[1] >= 59.9,
	sprintf('never more than 3 in 60s (4th %.1fs after 1st, 5th %.1fs after 2nd)', $t[3] - $t[0], $t[4] - $t[1]));
ok($t[3] - $t[0] < 75, sprintf('... and the 4th went soon after the window freed a slot (%.1fs)', $t[3] - $t[0]));

$node->stop;
done_testing();
