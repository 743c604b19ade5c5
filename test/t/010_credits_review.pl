# Credits, validation rules, review and tenancy on a real cluster with its
# worker: balances after success, failure, cancel and a crash mid-job;
# concurrent submits that cannot overdraw; a failed rule and auto_approve
# false sending work to review; approve() with corrections; the worker
# reading as the submitting role.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use HTTP::Tiny;

my $srv = start_model_server();
my $node = new_node('credits', credits => 'enforce', conf => "restart_after_crash = on\n");
$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 0}');
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE team;
	GRANT team TO alice;
	CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS \$\$
	BEGIN EXECUTE sql; RETURN 'no error';
	EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END \$\$;});
my $pdf = fixture('invoice.pdf');
my $two = fixture('two-pages.pdf');
my $me = $node->safe_psql('postgres', 'SELECT current_user');

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub balance { return sq("SELECT docextract.credit_balance('$_[0]')"); }

sub add_doc
{
	my ($file, $role) = @_;
	my $set = $role ? "SET ROLE $role;" : '';
	return sq("SELECT pg_read_binary_file('$file') AS b \\gset
		$set SELECT docextract.add_document('doc.pdf', :'b')");
}

# A template whose rules the invoice fixture passes: its lines sum to the subtotal.
my $rules = '{"rules": [
	{"rule_name": "number present", "rule_type": "required", "targets": ["general_part.invoice_number"]},
	{"rule_name": "lines = subtotal", "rule_type": "compare_totals",
	 "config": {"set_1": ["table_part.amount"], "set_2": ["general_part.subtotal"], "tolerance": 0.01}}]}';
my $tid = add_invoice_template($node);
$tid = sq("SELECT docextract.update_template('$tid', schema_definition, prompt_set, '$rules')
          FROM docextract.templates WHERE id = '$tid'");
my $doc = add_doc($pdf);

# -- enforce: nothing without credits ------------------------------------------
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$doc', '$tid')\$\$)"),
	qr/^53000: insufficient credits: role \S+ needs 1 credit\(s\) for 1 page\(s\), its balance is 0/,
	'no credits: 53000 naming pages and balance');
is(sq('SELECT count(*) FROM docextract.extractions'), '0', '... and nothing queued');
is(server_stats($srv)->{count}, 0, '... and nothing sent');

# -- success charges, failure and cancel release ----------------------------------
sq("SELECT docextract.grant_credits(current_user, 10, 'test')");
my $e = sq("SELECT docextract.extract_document('$doc', '$tid')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed',
	'rules pass: completed without review');
is(balance($me), '9', 'one page charged: 10 -> 9');
my $r = json_of(sq("SELECT docextract.get_result('$e')"));
is_deeply([ map { $_->{passed} ? 1 : 0 } @{ $r->{validation} } ], [ 1, 1 ], 'both rules passed');
is($r->{validation}[1]{details}{set_1_sum}, 1234.5, 'the table column summed (324.5 + 0.5 x 2 ... = 1234.5)');
is(sq("SELECT credits_used FROM docextract.extractions WHERE id = '$e'"), '1', 'credits_used 1');

server_script($srv, { status => 400, body => '{"error": {"message": "bad request"}}' });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
is(wait_for_status($node, $e, 'completed', 'failed'), 'failed', 'a 400 fails the extraction');
is(balance($me), '9', 'failure: the reserved credit returned');

# The answer is held until the cancel is done: the request stays in flight.
server_script($srv, { hold => 'cancel' });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 1}')");
wait_inflight($srv, 1);
is(sq("SELECT status FROM docextract.extractions WHERE id = '$e'"), 'processing', 'the request in flight: processing');
is(balance($me), '8', 'while in flight: reserved');
sq("SELECT docextract.cancel_extraction('$e')");
is(balance($me), '9', 'cancel in flight: returned');
is(sq("SELECT string_agg(kind, ',' ORDER BY id) FROM docextract.credit_ledger WHERE extraction_id = '$e'"),
	'reserve,release', 'ledger: reserve, release');
# The held answer goes nowhere (the worker dropped the request); it leaves
# the server's count of requests in flight, which the next part waits on.
server_release($srv, 'cancel');
wait_inflight($srv, 0);

# -- a crash between the answer and the commit never charges twice ------------------
# The first attempt's answer is held until the worker is dead: its retry, the
# second request, gets the default answer (the script is used up by then).
server_reset($srv);
server_script($srv, { hold => 'crash' });
my $pid = worker_pid($node);
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 2}')");
wait_inflight($srv, 1);
kill 'KILL', $pid;
$node->poll_query_until('postgres', 'SELECT 1', '1') or die 'server did not come back';
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'after kill -9 the job completes');
is(sq("SELECT attempts FROM docextract.extractions WHERE id = '$e'"), '2', '... in a second attempt');
is(sq("SELECT string_agg(kind, ',' ORDER BY id) FROM docextract.credit_ledger WHERE extraction_id = '$e'"),
	'reserve,charge', 'ledger: one reserve, one charge');
is(balance($me), '8', 'charged once: 9 -> 8');
is(server_stats($srv)->{count}, 2, '... after two requests, one per attempt');
server_release($srv, 'crash');
wait_inflight($srv, 0);    # the first attempt's late answer, sent to the dead worker
is(balance($me), '8', 'still charged once after the late answer');

# -- two sessions cannot overdraw ---------------------------------------------------------
sq("GRANT USAGE ON SCHEMA public TO alice; SELECT docextract.grant_credits('alice', 1)");
my $adoc = add_doc($pdf, 'alice');
my $atid = add_invoice_template($node, 'alice');
my $s1 = $node->background_psql('postgres');
my $s2 = $node->background_psql('postgres');
$s1->query_safe("SET ROLE alice; BEGIN; SELECT docextract.extract_document('$adoc', '$atid')");
$s2->query_until(qr/sent/, "SET ROLE alice;\n\\echo sent\n"
	  . "SELECT public.sqlstate_of(\$\$SELECT docextract.extract_document('$adoc', '$atid', '{\"seed\": 9}')\$\$) AS s2 \\gset\n");
$node->poll_query_until('postgres', 'SELECT count(*) = 1 FROM pg_locks WHERE NOT granted')
  or die 'the second submit never waited';
is(sq("SELECT count(*) FROM pg_locks WHERE NOT granted"), '1', 'the second submit waits for the first');
$s1->query_safe('COMMIT');
like($s2->query_safe("SELECT :'s2'"), qr/^53000: insufficient credits: role alice needs 1 credit\(s\) for 1 page\(s\), its balance is 0/,
	'... and is refused once the first commits');
$s1->quit;
$s2->quit;
is(sq("SELECT count(*) FROM docextract.extractions WHERE owner = 'alice'::regrole"), '1', 'one extraction queued');
$node->poll_query_until('postgres',
	"SELECT status = 'completed' FROM docextract.extractions WHERE owner = 'alice'::regrole");
is(balance('alice'), '0', 'alice: 1 - 1 = 0, never below');

# -- review: a failed rule, and auto_approve false --------------------------------------------
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN docextract');
sq("SELECT docextract.grant_credits(current_user, 10)");
server_script($srv, { answer => {
	general => { invoice_number => 'INV-1', invoice_date => '2026-01-02', due_date => undef,
		currency => 'EUR', paid => 'no', subtotal => '100.00', total_amount => '119.00' },
	table => [ { description => 'A', quantity => 1, amount => '60' }, { description => 'B', quantity => 1, amount => '30' } ] } });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 3}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'awaiting_approval',
	'lines 90 vs subtotal 100: awaiting_approval');
$r = json_of(sq("SELECT docextract.get_result('$e')"));
ok(!$r->{validation}[1]{passed}, 'the compare_totals rule failed');
is($r->{validation}[1]{details}{difference}, -10, '... by -10');
my $before = balance($me);
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.approve('$e', '{\"table\": [{\"description\": \"A\", \"quantity\": 1, \"amount\": \"60\"}, {\"description\": \"B\", \"quantity\": 1, \"amount\": \"abc\"}]}')\$\$)"),
	qr/^22023: correction table\[1\]\.amount: "abc" is not a valid value/, 'an untypable correction is refused');
$r = json_of(sq("SELECT docextract.approve('$e', '{\"table\": [{\"description\": \"A\", \"quantity\": 1, \"amount\": \"60\"}, {\"description\": \"B\", \"quantity\": 1, \"amount\": \"40.00\"}]}')"));
is($r->{status}, 'completed', 'approve() with corrected line items completes it');
is($r->{data}{table}[1]{amount}, 40, 'the correction is typed');
ok($r->{validation}[1]{passed}, 'the rules re-ran and pass now');
is(sq("SELECT approved_by::text = current_user FROM docextract.extractions WHERE id = '$e'"), 't', 'approved_by recorded');
is(balance($me), $before, 'approval changes no balance: charged when the answer was stored');
is(sq("SELECT string_agg(kind || ':' || reason, ',' ORDER BY id) FROM docextract.credit_ledger WHERE extraction_id = '$e'"),
	'reserve:submitted,charge:awaiting_approval', 'ledger: one charge, when the answer went to review');

$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"auto_approve\": false}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'awaiting_approval',
	'auto_approve false: awaiting_approval although the rules pass');
is(json_of(sq("SELECT docextract.approve('$e')"))->{status}, 'completed', 'approve() without corrections');
my $events = $listener->query_safe('SELECT 1');
like($events, qr/"event" : "extraction\.awaiting_approval"/, 'event extraction.awaiting_approval');
like($events, qr/"event" : "extraction\.approved", "extraction_id" : "$e"/, 'event extraction.approved');
$listener->quit;

# -- the worker reads as the submitting role ------------------------------------------------------
# alice submits a document of her group; before the retry, she leaves the group.
sq("SELECT docextract.grant_credits('alice', 5)");
my $tdoc = add_doc($pdf, 'team');
# The first answer is held until she has left: the retry comes after that.
server_script($srv, { hold => 'left', status => 503, headers => { 'Retry-After' => '1' }, body => '{}' });
$e = sq("SET ROLE alice; SELECT docextract.extract_document('$tdoc', '$atid', '{\"max_retries\": 3}')");
wait_inflight($srv, 1);
sq('REVOKE team FROM alice');
server_release($srv, 'left');
is(wait_for_status($node, $e, 'completed', 'failed'), 'failed',
	'alice left the group: the retry cannot read its document');
like(sq("SELECT error_message FROM docextract.extractions WHERE id = '$e'"),
	qr/not visible to role alice, which submitted it/, '... because the worker reads as alice');
is(balance('alice'), '5', "alice's credits returned");

# -- two roles, every way in ------------------------------------------------------------------------
my $ae = sq("SELECT id FROM docextract.extractions WHERE owner = 'alice'::regrole AND status = 'completed' LIMIT 1");
for my $sql ("SELECT count(*) FROM docextract.documents WHERE owner = 'alice'::regrole",
	"SELECT count(*) FROM docextract.extractions WHERE owner = 'alice'::regrole",
	"SELECT count(*) FROM docextract.results WHERE owner = 'alice'::regrole",
	"SELECT count(*) FROM docextract.credit_ledger WHERE role = 'alice'::regrole",
	"SELECT count(*) FROM docextract.credit_accounts WHERE role = 'alice'::regrole",
	"SELECT coalesce(sum(completed), 0) FROM docextract.worker_stats")
{
	is(sq("SET ROLE bob; $sql"), '0', "bob sees none of alice's rows: $sql");
}
for my $sql ("SELECT docextract.get_result('$ae')", "SELECT docextract.extraction_status('$ae')",
	"SELECT docextract.cancel_extraction('$ae')", "SELECT docextract.approve('$ae')",
	"SELECT docextract.extract_document('$adoc', '$atid')")
{
	like(sq("SET ROLE bob; SELECT sqlstate_of(\$q\$$sql\$q\$)"), qr/^42704: /, "bob cannot touch alice's: $sql");
}
like(sq("SET ROLE bob; SELECT sqlstate_of(\$\$SELECT docextract.credit_balance('alice')\$\$)"), qr/^42501: /,
	"bob cannot read alice's balance");
like(sq("SET ROLE bob; SELECT sqlstate_of(\$\$UPDATE docextract.credit_accounts SET balance = 1000\$\$)"),
	qr/^42501: permission denied/, 'nobody writes the accounts directly');

done_testing();
