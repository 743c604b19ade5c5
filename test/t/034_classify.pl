# Classification: template_id NULL.  The model chooses, in one request,
# among the active templates the submitter may use (its own, system ones,
# never another role's), then the document is extracted with the choice in
# the same job.  Nothing fits: failed naming the candidates, or awaiting a
# reviewer's pick with auto_approve false.  All three providers,
# extract_sync, the trigger form; charged once; a crash while classifying;
# hostile answers.
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
my $node = new_node('classify', credits => 'enforce', conf => "restart_after_crash = on\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }
sub as_alice { return sq("SET ROLE alice; $_[0]"); }

sq(qq{
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
	GRANT CREATE, USAGE ON SCHEMA public TO alice, bob;
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	SELECT docextract.add_model('flash', 'gemini', '$srv->{url}/v1beta', 'gemini-2.5-flash', NULL, '{"max_retries": 0}');
	SELECT docextract.add_model('claude', 'anthropic', '$srv->{url}/v1', 'claude-sonnet-4-5', NULL, '{"max_retries": 0}');
	SELECT docextract.grant_credits('alice', 1000);
	CREATE TABLE files (name text PRIMARY KEY, b bytea);
	GRANT SELECT ON files TO alice, bob;});
for my $f ('invoice.pdf', 'receipt.png', 'two-pages.pdf')
{
	sq("INSERT INTO files VALUES ('$f', pg_read_binary_file('" . fixture($f) . "'))");
}
my $schema = $DxTest::INVOICE_SCHEMA;
my $invoice = add_invoice_template($node, 'alice');
my $receipt = sq(qq{SELECT docextract.create_system_template('receipt', '$schema', NULL, NULL,
	'A till receipt from a shop or a cafe')});
my $secret = sq(qq{SET ROLE bob; SELECT docextract.create_template('secret-bob', '$schema', NULL, NULL,
	'BOB SECRET DESCRIPTION')});
# Another role's template named like the document's title: still never offered.
sq(qq{SET ROLE bob; SELECT docextract.create_template('invoice-bob', '$schema')});
my %doc = map { $_ => as_alice("SELECT docextract.add_document('$_', (SELECT b FROM files WHERE name = '$_'))") }
  ('invoice.pdf', 'receipt.png', 'two-pages.pdf');

# Submit for classification (the model server's script first: @script).
sub classify
{
	my ($file, $opts, @script) = @_;
	server_reset($srv);
	server_script($srv, @script) if @script;
	my $id = as_alice("SELECT docextract.extract_document('$doc{$file}', NULL, '{\"force\": true$opts}')");
	my $status = wait_for_status($node, $id, 'completed', 'failed', 'awaiting_approval');
	return ($id, $status);
}
sub row { return sq("SELECT $_[1] FROM docextract.extractions WHERE id = '$_[0]'"); }
sub ledger { return sq("SELECT string_agg(kind || ':' || credits, ',' ORDER BY id) FROM docextract.credit_ledger WHERE extraction_id = '$_[0]'"); }

# -- each provider chooses between alice's invoice and the system receipt ---------------
for my $model ('default', 'flash', 'claude')
{
	my ($id, $status) = classify('invoice.pdf', ", \"model\": \"$model\"");
	is($status, 'completed', "$model: classified and extracted");
	is(row($id, 'template_id'), $invoice, "$model: alice's invoice template chosen");
	my $st = json_of(sq("SELECT docextract.extraction_status('$id')"));
	is($st->{template_id}, $invoice, "$model: extraction_status shows the chosen template");
	is($st->{classification}{confidence}, 0.9, "$model: and the model's confidence");
	is_deeply([ map { $_->{name} } @{ $st->{classification}{candidates} } ], [ 'invoice', 'receipt' ],
		"$model: the candidates: alice's own, then system ones; none of bob's");
	my $r = json_of(sq("SELECT docextract.get_result('$id')"));
	is($r->{template_id}, $invoice, "$model: get_result's template_id");
	is($r->{data}{general}{invoice_number}, 'INV-2026-0042', "$model: extracted with it");
	is($r->{usage}{requests}, 2, "$model: usage counts both requests");
	my $reqs = server_requests($srv);
	is(scalar @$reqs, 2, "$model: one classification request, then one extraction request");
	like($reqs->[0]{body}, qr/1\. invoice.*2\. receipt/s, "$model: the first lists the candidates");
	unlike($reqs->[0]{body}, qr/secret-bob|BOB SECRET|invoice-bob/, "$model: never another role's template");
	is(ledger($id), 'reserve:1,charge:1', "$model: one page reserved and charged once");
}
my ($id, $status) = classify('receipt.png', ', "model": "flash"');
is(row($id, 'template_id'), $receipt, 'a receipt: the system template chosen');
is(sq("SELECT string_agg(event || ':' || (payload->>'completion_percentage'), ',' ORDER BY id) FROM docextract.events WHERE extraction_id = '$id'"),
	'extraction.queued:0,extraction.classifying:0,extraction.progress:50,extraction.started:50,extraction.completed:100',
	'events: classifying, a progress event for it, then the extraction');
is(sq("SELECT payload->>'step' FROM docextract.events WHERE extraction_id = '$id' AND event = 'extraction.progress'"),
	'classification', 'the progress event names its step: the classification');

# -- nothing fits ------------------------------------------------------------------------
($id, $status) = classify('two-pages.pdf', '', { answer => { general => { template => undef, confidence => 0 } } });
is($status, 'failed', 'none fits: failed');
like(row($id, 'error_message'), qr/^no template fits the document: the model found that none of the candidates fits; candidates: "invoice", "receipt"$/,
	'the message lists the candidates');
is(ledger($id), 'reserve:2,release:2', 'none fits: nothing charged');
is(scalar @{ server_requests($srv) }, 1, 'none fits: no extraction request');

($id, $status) = classify('invoice.pdf', '', { answer => { general => { template => '1. invoice', confidence => 0.2 } } });
like(row($id, 'error_message'), qr/confidence in "invoice", 0\.2, is below docextract\.classify_min_confidence \(0\.5\)/,
	'a low confidence is no choice');

# -- hostile answers: bounded, clear failures, never another role's template ------------
my @hostile = (
	[ { answer => { general => { template => $secret, confidence => 1 } } }, qr/answered "\Q$secret\E", which is not one of the candidates/, "another role's template id" ],
	[ { answer => { general => { template => 'secret-bob', confidence => 1 } } }, qr/answered "secret-bob", which is not one/, "another role's template name" ],
	[ { answer => { general => { template => 'invoice-bob', confidence => 1 } } }, qr/answered "invoice-bob"/, "another role's similar name" ],
	[ { answer => { general => { template => 3, confidence => 1 } } }, qr/template number 3, which is not one of the 2 candidates/, 'an index out of range' ],
	[ { answer => { general => { template => '0. invoice', confidence => 1 } } }, qr/answered "0\. invoice"/, 'a label out of range' ],
	[ { answer => { general => { template => { id => $invoice }, confidence => 1 } } }, qr/"template" is not a label but/, 'an object' ],
	[ { answer => { general => { template => '1. invoice', confidence => 'sure' } } }, qr/without a confidence from 0 to 1/, 'a confidence of the wrong type' ],
	[ { answer => { general => { template => '1. invoice', confidence => 7 } } }, qr/without a confidence from 0 to 1/, 'a confidence out of range' ],
	[ { answer => { general => [] } }, qr/"general" object/, 'general of the wrong type' ],
	[ { raw_content => 'null' }, qr/could not read the model's answer/, 'JSON null' ],
	[ { answer => { general => { template => ('x' x 2_000_000), confidence => 1 } } }, qr/which is not one of the candidates/, 'an enormous answer' ],
);
for my $h (@hostile)
{
	($id, $status) = classify('invoice.pdf', '', $h->[0]);
	is($status, 'failed', "hostile: $h->[2]: failed");
	like(row($id, 'error_message'), $h->[1], "hostile: $h->[2]: says why");
	ok(length(row($id, 'error_message')) < 1000, "hostile: $h->[2]: a bounded message");
	is(row($id, 'template_id'), '', "hostile: $h->[2]: no template recorded");
	is(ledger($id), 'reserve:1,release:1', "hostile: $h->[2]: nothing charged");
}
ok(sq("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'docextract worker'") == 1,
	'the worker survived them all');

# -- auto_approve false: a reviewer picks ------------------------------------------------
($id, $status) = classify('invoice.pdf', ', "auto_approve": false', { answer => { general => { template => undef, confidence => 0 } } });
is($status, 'awaiting_approval', 'none fits, auto_approve false: awaiting approval');
like(row($id, 'error_message'), qr/candidates: "invoice", "receipt"/, 'it says why, naming the candidates');
is(ledger($id), 'reserve:1', 'nothing charged while it waits for a pick');
my ($ret, $out, $err) = $node->psql('postgres', "SET ROLE alice; SELECT docextract.approve('$id', '{\"template_id\": \"$secret\"}')");
like($err, qr/is not an active template the extraction's owner may use/, "the reviewer cannot pick another role's template");
($ret, $out, $err) = $node->psql('postgres', "SET ROLE alice; SELECT docextract.approve('$id')");
like($err, qr/awaits a template.*HINT:.*template_id/s, 'approve without a pick says how to pick');
server_reset($srv);
as_alice("SELECT docextract.approve('$id', '{\"template_id\": \"$invoice\"}')");
is(wait_for_status($node, $id, 'awaiting_approval', 'completed', 'failed'), 'awaiting_approval',
	'the pick runs the extraction, whose data awaits approval (auto_approve false)');
is(row($id, 'template_id'), $invoice, 'with the picked template');
is(sq("SELECT classification->>'chosen_by' FROM docextract.extractions WHERE id = '$id'"), 'reviewer', 'chosen by the reviewer');
is(scalar @{ server_requests($srv) }, 1, 'no second classification');
as_alice("SELECT docextract.approve('$id')");
is(row($id, 'status'), 'completed', 'approved: completed');
is(ledger($id), 'reserve:1,charge:1', 'charged once');

# -- duplicates --------------------------------------------------------------------------
my $d1 = as_alice("SELECT docextract.extract_document('$doc{'receipt.png'}', NULL, '{\"model\": \"flash\"}')");
my $d2 = as_alice("SELECT docextract.extract_document('$doc{'receipt.png'}', NULL, '{\"model\": \"flash\"}')");
is($d2, $d1, 'the same document classified again with the same options: the earlier id');
wait_for_status($node, $d1, 'completed', 'failed');
is(as_alice("SELECT docextract.extract_document('$doc{'receipt.png'}', NULL, '{\"model\": \"flash\"}')"), $d1,
	'also once it chose a template');

# -- extract_sync ------------------------------------------------------------------------
my $r = json_of(as_alice("SELECT docextract.extract_sync((SELECT b FROM files WHERE name = 'invoice.pdf'), NULL, '{\"model\": \"claude\"}')"));
is($r->{template_id}, $invoice, 'extract_sync with NULL: classified');
is($r->{data}{general}{invoice_number}, 'INV-2026-0042', 'extract_sync with NULL: extracted');
is(ledger($r->{extraction_id}), 'reserve:1,charge:1', 'extract_sync: charged once');

# -- the trigger form: template argument NULL --------------------------------------------
as_alice(q{CREATE TABLE inbox (id serial PRIMARY KEY, pdf bytea, extracted jsonb, status text);
	CREATE TRIGGER inbox_extract AFTER INSERT ON inbox FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document(NULL, 'pdf', 'extracted', 'status');
	INSERT INTO inbox (pdf) SELECT b FROM files WHERE name IN ('invoice.pdf', 'receipt.png') ORDER BY name});
$node->poll_query_until('postgres', "SELECT count(*) = 2 FROM inbox WHERE status = 'completed' AND extracted IS NOT NULL")
  or die 'the trigger form never completed';
is(sq("SELECT string_agg(extracted->'general'->>'invoice_number', ',' ORDER BY id) FROM inbox"), 'INV-2026-0042,R-7731',
	'trigger form with template NULL: each row classified and extracted');
is(sq("SELECT string_agg(t.name, ',' ORDER BY e.target_pk[1]::int) FROM docextract.extractions e JOIN docextract.templates t ON t.id = e.template_id WHERE e.target_table = 'inbox'::regclass"),
	'invoice,receipt', 'each with its own template');

# -- the candidates: a group's templates count, deactivated ones do not --------------------
sq(qq{CREATE ROLE team; GRANT team TO alice;
	SET ROLE team; SELECT docextract.create_template('team-form', '$schema');});
my $old = sq(qq{SET ROLE alice; SELECT docextract.create_template('old-invoice', '$schema')});
as_alice("SELECT docextract.set_template_active('$old', false)");
($id, $status) = classify('invoice.pdf', '', { answer => { general => { template => '2. team-form', confidence => 0.8 } } });
is_deeply([ map { $_->{name} } @{ json_of(row($id, 'classification'))->{candidates} } ], [ 'invoice', 'team-form', 'receipt' ],
	"candidates: alice's, her group's, system ones; not a deactivated one, not bob's");
is(sq("SELECT t.name FROM docextract.extractions e JOIN docextract.templates t ON t.id = e.template_id WHERE e.id = '$id'"),
	'team-form', "her group's template chosen by its label");
unlike(server_requests($srv)->[0]{body}, qr/old-invoice|secret-bob/, 'neither is in the request');
sq("REVOKE team FROM alice");

# alice becomes a member of bob, a login role (PostgreSQL 15 releases before the
# change let a role grant itself as its own session user; an administrator may
# grant it for some other purpose): bob's templates must still not reach her
# classification, nor win a trigger form's lookup by name.
sq('GRANT bob TO alice');
is(sq("SELECT pg_has_role('alice', 'bob', 'MEMBER')"), 't', 'alice is a member of bob, a login role');
($id, $status) = classify('invoice.pdf', '', { answer => { general => { template => 'secret-bob', confidence => 1 } } });
is($status, 'failed', "alice's classification: bob's template cannot be chosen, even named");
my $why = row($id, 'error_message');
like($why, qr/candidates: "invoice", "receipt"$/,
	"... nor is it offered: the candidates are alice's and the system's; only NOLOGIN groups share templates");
unlike(server_requests($srv)->[0]{body}, qr/secret-bob|invoice-bob/, '... nor in the request');
is(sq("SET ROLE alice; SELECT count(*) FROM docextract.templates t WHERE t.name = 'invoice-bob'"), '1',
	'(row security still lets alice see it: the rule is about using it)');
sq("REVOKE bob FROM alice");

# -- a classification holds one of the model's max_concurrency slots ---------------------
sq("SELECT docextract.add_model('one', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{\"max_retries\": 0, \"max_concurrency\": 1}')");
server_reset($srv);
server_script($srv, { hold => 'slot' });
my $held = as_alice("SELECT docextract.extract_document('$doc{'invoice.pdf'}', NULL, '{\"model\": \"one\", \"force\": true}')");
wait_inflight($srv, 1);
is(row($held, 'status'), 'classifying', 'a classification in flight on a model of max_concurrency 1');
my $other = as_alice("SELECT docextract.extract_document('$doc{'receipt.png'}', '$receipt', '{\"model\": \"one\", \"force\": true}')");
is(row($other, 'status'), 'pending', 'another extraction on that model waits');
HTTP::Tiny->new->post("$srv->{url}/_release/slot");
is(wait_for_status($node, $held, 'completed', 'failed'), 'completed', 'the classified one completes');
is(wait_for_status($node, $other, 'completed', 'failed'), 'completed', 'then the other');
# A false pass is possible (the worker not woken before the release), a false failure is not.
is(server_stats($srv)->{max_inflight}, 1, 'never two requests in flight: the classification held the slot');

# -- a crash while classifying -----------------------------------------------------------
server_reset($srv);
server_script($srv, { hold => 'classifying' });
my $pid = worker_pid($node);
$id = as_alice("SELECT docextract.extract_document('$doc{'invoice.pdf'}', NULL, '{\"force\": true}')");
wait_inflight($srv, 1);
is(row($id, 'status'), 'classifying', 'the classification request is in flight');
kill 'KILL', $pid;
$node->poll_query_until('postgres', 'SELECT 1', '1') or die 'server did not come back';
is(wait_for_status($node, $id, 'completed', 'failed'), 'completed', 'after the crash it is classified again and completes');
is(row($id, 'template_id'), $invoice, 'with the right template');
is(ledger($id), 'reserve:1,charge:1', 'charged once across the crash');
is(sq("SELECT count(*) FROM docextract.results WHERE extraction_id = '$id'"), '1', 'one result');

done_testing();
