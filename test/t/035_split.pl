# options.split: a PDF holding three invoices becomes three sub-documents,
# each a PDF of only its pages (libqpdf, in the parser helper) with its own
# extraction; the parent lists and aggregates them, is charged its pages
# once, reports progress, survives a worker crash between the model's answer
# and the commit without making children twice, and never trusts the
# model's page ranges.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64 qw(decode_base64);
use JSON::PP qw(decode_json);
use HTTP::Tiny;

my $srv = start_model_server();
my $node = new_node('split', credits => 'enforce',
	conf => "restart_after_crash = off\ndocextract.debug_crash_on_document = 'crash.pdf#split'\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }
sq(qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	SELECT docextract.add_model('one', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 0, "max_concurrency": 1}');
	SELECT docextract.grant_credits(current_user, 1000, 'test');
	CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS \$\$
	BEGIN EXECUTE sql; RETURN 'no error';
	EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END \$\$;});
my $tid = add_invoice_template($node);
my $file = fixture('three-invoices.pdf');
sub add_doc { return sq("SELECT docextract.add_document('$_[0]', pg_read_binary_file('$file'))"); }
sub children
{
	return sq("SELECT string_agg(page_start || '-' || page_end || ':' || page_count, ' ' ORDER BY page_start)"
		  . " FROM docextract.documents WHERE parent_id = '$_[0]'");
}
sub status_of { return decode_json(sq("SELECT docextract.extraction_status('$_[0]')")); }
sub ledger
{
	return sq("SELECT string_agg(kind || ' ' || credits, ', ' ORDER BY id) FROM docextract.credit_ledger"
		  . " WHERE extraction_id = '$_[0]'");
}

# A child's bytes as poppler sees them: its page count and its text.
sub child_pdf
{
	my ($doc_id) = @_;
	my $path = "$PostgreSQL::Test::Utils::tmp_check/child_$doc_id.pdf";
	open(my $fh, '>:raw', $path) or die;
	print $fh decode_base64(sq("SELECT encode(content, 'base64') FROM docextract.documents WHERE id = '$doc_id'"));
	close $fh;
	my ($pages) = `pdfinfo '$path'` =~ /^Pages:\s+(\d+)/m;
	return ($pages, scalar `pdftotext '$path' -`);
}

my $doc = add_doc('three.pdf');
is(sq("SELECT page_count FROM docextract.documents WHERE id = '$doc'"), '6', 'the fixture has six pages');

# -- the whole way -----------------------------------------------------------------
# The ledger is read in the submitting transaction: once it commits, the
# worker may split, extract and charge before any later query runs.
my ($e, $at_submit) = split /\n/, sq("BEGIN;\n"
	  . "SELECT docextract.extract_document('$doc', '$tid', '{\"split\": true}') AS e \\gset\n"
	  . "SELECT :'e';\n"
	  . "SELECT string_agg(kind || ' ' || credits, ', ' ORDER BY id) FROM docextract.credit_ledger"
	  . " WHERE extraction_id = :'e';\nCOMMIT;");
is($at_submit, 'reserve 6', 'the parent reserves its six pages at submit');
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'the parent completes');
is(children($doc), '1-2:2 3-3:1 4-6:3', 'three sub-documents with the right pages');

my @kids = split /\n/, sq("SELECT d.id || '|' || x.id || '|' || x.status || '|' || x.template_id"
	  . " FROM docextract.documents d JOIN docextract.extractions x ON x.document_id = d.id"
	  . " WHERE d.parent_id = '$doc' ORDER BY d.page_start");
is(scalar @kids, 3, 'one extraction per sub-document');
my @numbers = ('INV-A-001', 'INV-B-002', 'INV-C-003');
for my $i (0 .. 2)
{
	my ($d, $x, $st, $t) = split /\|/, $kids[$i];
	my ($pages, $text) = child_pdf($d);
	is($pages, (2, 1, 3)[$i], "sub-document $i is a PDF of its pages (pdfinfo)");
	like($text, qr/$numbers[$i]/, "... showing its own invoice");
	unlike($text, qr/@{[ join '|', grep { $_ ne $numbers[$i] } @numbers ]}/, '... and no other');
	is($st, 'completed', "sub-document $i is extracted");
	is($t, $tid, '... with the given template');
	is(sq("SELECT docextract.get_result('$x')->'data'->'general'->>'invoice_number'"), $numbers[$i],
		'... from its own pages');
	is(sq("SELECT parent_extraction_id || ' ' || owner || ' ' || (options ? 'split')::text"
		  . " FROM docextract.extractions WHERE id = '$x'"),
		"$e " . sq('SELECT current_user') . ' false', '... as the same owner, without split');
}
my $st = status_of($e);
is($st->{overall_status}, 'completed', 'overall_status completed');
is(join(' ', map { "$_->{page_start}-$_->{page_end}:$_->{status}" } @{ $st->{sub_documents} }),
	'1-2:completed 3-3:completed 4-6:completed', 'extraction_status lists the sub-documents');
is($st->{sub_documents}[0]{template_id}, $tid, '... with their template');
is($st->{credits_used}, 6, 'the parent used six credits');
is(ledger($e), 'reserve 6, charge 6', 'the ledger charges the six pages once');
is(sq("SELECT count(*) FROM docextract.credit_ledger l JOIN docextract.extractions x ON x.id = l.extraction_id"
	  . " WHERE x.parent_extraction_id = '$e'"), '0', 'sub-documents reserve and charge nothing');
is(sq('SELECT docextract.credit_balance()'), '994', 'the balance went down by six');
is(sq("SELECT string_agg(s, ', ' ORDER BY n) FROM (SELECT docextract.get_result('$e')->'sub_documents'->i->'data'->'general'->>'invoice_number' AS s, i AS n FROM generate_series(0, 2) i) r"),
	'INV-A-001, INV-B-002, INV-C-003', "get_result of the parent has each sub-document's data");
is(sq("SELECT string_agg(event || ':' || (payload->>'completion_percentage'), ' ' ORDER BY id)"
	  . " FROM docextract.events WHERE extraction_id = '$e'"),
	'extraction.queued:0 extraction.started:0 extraction.progress:10 extraction.progress:40 '
	  . 'extraction.progress:70 extraction.completed:100',
	'progress events: split, then each sub-document');
is(sq("SELECT string_agg(payload->>'step', ' ' ORDER BY id) FROM docextract.events"
	  . " WHERE extraction_id = '$e' AND event = 'extraction.progress'"),
	'split sub_document sub_document', 'each progress event names its step');
my $split_req = server_requests($srv)->[0];
like($split_req->{body}, qr/page_start/, 'the first request asks for the page ranges');
is(scalar @{ server_requests($srv) }, 4, 'one split request and one per sub-document');

is(sq("SELECT docextract.extract_document('$doc', '$tid', '{\"split\": true}')"), $e,
	'the same submit again returns the same extraction');

# -- a sub-document fails: partially completed, only read pages charged -------------
server_reset($srv);
server_script($srv, {}, { status => 400, body => '{"error": {"message": "bad page"}}' });
my $p = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"split\": true, \"force\": true}')");
is(wait_for_status($node, $p, 'completed', 'failed'), 'completed', 'partly failed: the parent completes');
is(children($doc), '1-2:2 3-3:1 4-6:3', 'the same pages split again reuse the sub-documents');
$st = status_of($p);
is($st->{overall_status}, 'partially_completed', 'overall_status partially_completed');
is(scalar(grep { $_->{status} eq 'failed' } @{ $st->{sub_documents} }), 1, 'one sub-document failed');
my ($bad) = grep { $_->{status} eq 'failed' } @{ $st->{sub_documents} };
my $lost = $bad->{page_end} - $bad->{page_start} + 1;
like($st->{error_message}, qr/^1 of 3 sub-documents did not complete: pages \d-\d failed/,
	'the parent says which did not');
is(ledger($p), 'reserve 6, release ' . $lost . ', charge ' . (6 - $lost),
	'the failed pages are released, the rest charged, once');
is($st->{credits_used}, 6 - $lost, 'credits_used counts the read pages');

# -- every sub-document fails: the parent fails, nothing is charged ---------------
server_reset($srv);
server_script($srv, {}, map { { status => 400, body => '{"error": {"message": "no"}}' } } 1 .. 3);
my $f = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"split\": true, \"force\": true, \"seed\": 1}')");
is(wait_for_status($node, $f, 'completed', 'failed'), 'failed', 'all failed: the parent fails');
is(status_of($f)->{overall_status}, 'failed', 'overall_status failed');
is(ledger($f), 'reserve 6, release 6', 'nothing charged');

# -- the model's ranges are never trusted ----------------------------------------------
server_reset($srv);
server_script($srv, { answer => { table => [
	{ page_start => 3, page_end => 1 },            # reversed
	{ page_start => 2, page_end => 4 },            # overlaps
	{ page_start => undef, page_end => 5 },        # JSON null
	{ page_start => '6', page_end => 6 },          # a string
	{ page_start => 6, page_end => 99 },           # past the end
	'junk',
	{ page_start => 0, page_end => 0 },            # page 0
	{ page_start => 2.5, page_end => 3 } ] } });   # not whole
my $hd = add_doc('hostile.pdf');
my $h = sq("SELECT docextract.extract_document('$hd', '$tid', '{\"split\": true}')");
is(wait_for_status($node, $h, 'completed', 'failed'), 'completed', 'a repaired split completes');
is(children($hd), '1-1:1 2-3:2 4-5:2 6-6:1',
	'repaired: turned round, clamped, overlaps trimmed, gaps to the range before, junk dropped');
is(ledger($h), 'reserve 6, charge 6', 'every page charged once');

for my $case (
	[ { table => [ { page_start => 7, page_end => 9 }, undef ] },
		qr/rejected: none of its 2 entries is a page range within the document's 6 page\(s\)/ ],
	[ { table => [ map { { page_start => 1, page_end => 1 } } 1 .. 1001 ] },
		qr/rejected: it lists 1001 documents; at most 1000 are read/ ],
	[ { table => undef }, qr/could not read the model's answer/ ],
	[ { table => [] }, qr/rejected: none of its 0 entries/ ])
{
	my ($answer, $re) = @$case;
	server_reset($srv);
	server_script($srv, { answer => $answer });
	my $d = add_doc('bad.pdf');
	my $x = sq("SELECT docextract.extract_document('$d', '$tid', '{\"split\": true}')");
	is(wait_for_status($node, $x, 'completed', 'failed'), 'failed', 'an unusable split fails');
	like(sq("SELECT error_message FROM docextract.extractions WHERE id = '$x'"), $re, '... saying why');
	is(children($d), '', '... with no sub-document');
	is(ledger($x), 'reserve 6, release 6', '... and nothing charged');
}

# More documents than sub-documents are made: rejected.
my $many = "$PostgreSQL::Test::Utils::tmp_check/many-pages.pdf";
system("python3", "-c", "import sys; sys.path.insert(0, '$FindBin::RealBin/../fixtures'); import make_fixtures as m;"
	  . " open('$many', 'wb').write(m.pdf([['Invoice Number: %d' % i] for i in range(1, 121)]))") == 0 or die;
server_reset($srv);
server_script($srv, { answer => { table => [ map { { page_start => $_, page_end => $_ } } 1 .. 120 ] } });
my $md = sq("SELECT docextract.add_document('many.pdf', pg_read_binary_file('$many'))");
my $m = sq("SELECT docextract.extract_document('$md', '$tid', '{\"split\": true}')");
is(wait_for_status($node, $m, 'completed', 'failed'), 'failed', '120 documents in 120 pages: refused');
like(sq("SELECT error_message FROM docextract.extractions WHERE id = '$m'"),
	qr/it names 120 documents; at most 100 sub-documents are made/, '... the bound is said');
is(children($md), '', '... and none is made');

# -- cancelling the parent cancels its sub-documents; nothing is charged ------------------
server_reset($srv);
server_script($srv, {}, map { { hold => 'kid' } } 1 .. 3);
my $kd = add_doc('cancel.pdf');
my $k = sq("SELECT docextract.extract_document('$kd', '$tid', '{\"split\": true}')");
$node->poll_query_until('postgres', "SELECT split_count = 3 FROM docextract.extractions WHERE id = '$k'") or die;
is(sq("SELECT docextract.cancel_extraction('$k')"), 't', 'the split parent can be cancelled');
is(sq("SELECT string_agg(status, ' ') FROM docextract.extractions WHERE parent_extraction_id = '$k'"),
	'cancelled cancelled cancelled', 'its sub-documents are cancelled with it');
is(ledger($k), 'reserve 6, release 6', 'nothing charged');
server_release($srv, 'kid');
is(sq("SELECT docextract.extraction_status('$k')->>'overall_status'"), 'cancelled', 'overall_status cancelled');

# -- cancelled once a sub-document was read: its pages are charged, the rest returned ----
server_reset($srv);
server_script($srv, {}, {}, map { { hold => 'late' } } 1 .. 2);
my $pd = add_doc('partly.pdf');
my $pc = sq("SELECT docextract.extract_document('$pd', '$tid', '{\"split\": true}')");
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM docextract.extractions"
	  . " WHERE parent_extraction_id = '$pc' AND status = 'completed'") or die;
my $read = sq("SELECT sum(d.page_end - d.page_start + 1) FROM docextract.extractions c"
	  . " JOIN docextract.documents d ON d.id = c.document_id"
	  . " WHERE c.parent_extraction_id = '$pc' AND c.status = 'completed'");
is(sq("SELECT docextract.cancel_extraction('$pc')"), 't', 'a split parent cancelled after one sub-document was read');
is(ledger($pc), "reserve 6, charge $read, release " . (6 - $read),
	'... the pages read are charged, the rest returned: cancelling gets no model work free');
is(sq("SELECT credits_used FROM docextract.extractions WHERE id = '$pc'"), $read, '... and counted as used');
server_release($srv, 'late');

# -- sub-documents in review: the parent waits for the reviewer -------------------------
server_reset($srv);
my $ad = add_doc('review.pdf');
my $a = sq("SELECT docextract.extract_document('$ad', '$tid', '{\"split\": true, \"auto_approve\": false}')");
$node->poll_query_until('postgres', "SELECT count(*) = 3 FROM docextract.extractions"
	  . " WHERE parent_extraction_id = '$a' AND status = 'awaiting_approval'") or die;
is(sq("SELECT status FROM docextract.extractions WHERE id = '$a'"), 'processing',
	'sub-documents awaiting approval: the parent is still processing');
is(status_of($a)->{overall_status}, 'awaiting_approval', '... overall_status awaiting_approval');
sq("SELECT docextract.approve(id) FROM docextract.extractions WHERE parent_extraction_id = '$a'");
is(sq("SELECT status FROM docextract.extractions WHERE id = '$a'"), 'completed',
	'the last approval completes the parent, in its transaction');
is(ledger($a), 'reserve 6, charge 6', '... charged once');

# -- template_id NULL: each range's template among the candidates -----------------------
my $rid = sq("SELECT docextract.create_template('receipt', '$DxTest::INVOICE_SCHEMA')");
server_reset($srv);
server_script($srv, { answer => { table => [
	{ page_start => 1, page_end => 2, template => 'invoice' },
	{ page_start => 3, page_end => 3, template => 'receipt' },
	{ page_start => 4, page_end => 6, template => 'no such template' } ] } });
my $nd = add_doc('unknown-kinds.pdf');
my $n = sq("SELECT docextract.extract_document('$nd', NULL, '{\"split\": true}')");
is(wait_for_status($node, $n, 'completed', 'failed'), 'completed', 'split without a template completes');
my $split_body = server_requests($srv)->[0]{body};
like($split_body, qr/page_start/, 'one request splits and names the kinds');
like($split_body, qr/invoice/, '... offering the invoice template');
like($split_body, qr/receipt/, '... and the receipt template');
is(sq("SELECT string_agg(d.page_start || ':' || x.template_id::text, ' ' ORDER BY d.page_start)"
	  . " FROM docextract.documents d JOIN docextract.extractions x ON x.document_id = d.id"
	  . " WHERE x.parent_extraction_id = '$n'"),
	"1:$tid 3:$rid 4:$tid", 'each sub-document has the template the model named; an unknown one is classified alone');
ok(sq("SELECT classification IS NOT NULL AND classification <> '{}' FROM docextract.extractions x"
	  . " JOIN docextract.documents d ON d.id = x.document_id WHERE x.parent_extraction_id = '$n' AND d.page_start = 4") eq 't',
	'... and records its classification');
is(status_of($n)->{overall_status}, 'completed', 'overall_status completed');
is(ledger($n), 'reserve 6, charge 6', 'the classification and split cost nothing more');

# -- what split does not take ------------------------------------------------------
my $png = sq("SELECT docextract.add_document('r.png', pg_read_binary_file('" . fixture('receipt.png') . "'))");
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$png', '$tid', '{\"split\": true}')\$\$)"),
	qr/^22023: option "split" needs a PDF; document \S+ is image\/png, which is one document/,
	'an image is one document: 22023');
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$doc', '$tid', '{\"split\": true, \"pages\": \"1\"}')\$\$)"),
	qr/^22023: options "split" and "pages" cannot be used together/, 'split with pages: 22023');
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$doc', '$tid', '{\"split\": 1}')\$\$)"),
	qr/^22023: option "split" has an invalid value 1/, 'split must be a boolean');
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_sync(pg_read_binary_file('$file'), '$tid', '{\"split\": true}')\$\$)"),
	qr/^0A000: option "split" is not available in extract_sync/, 'extract_sync does not split');
is(sq("SELECT docextract.extract_document('$doc', '$tid', '{\"split\": false, \"force\": true}') IS NOT NULL"),
	't', 'split false is a plain extraction');

# -- the split request holds the model's slot (max_concurrency 1) -----------------------
server_reset($srv);
server_script($srv, { hold => 'split' });
my $sd = add_doc('slot.pdf');
my $s = sq("SELECT docextract.extract_document('$sd', '$tid', '{\"split\": true, \"model\": \"one\"}')");
$node->poll_query_until('postgres', "SELECT status = 'processing' FROM docextract.extractions WHERE id = '$s'")
  or die;
my $o = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"model\": \"one\", \"force\": true}')");
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM docextract.events WHERE extraction_id = '$o'") or die;
is(sq("SELECT status FROM docextract.extractions WHERE id = '$o'"), 'pending',
	'while the split request is in flight, the model has no room for another');
server_release($srv, 'split');
is(wait_for_status($node, $s, 'completed', 'failed'), 'completed', 'the split completes');
is(wait_for_status($node, $o, 'completed', 'failed'), 'completed', 'and the other extraction after it');
is(server_stats($srv)->{max_inflight}, 1, 'never two requests at once');

# -- a worker crash between the answer and its commit makes no second set -------------
server_reset($srv);
my $cd = sq("SELECT docextract.add_document('crash.pdf', pg_read_binary_file('$file'))");
my $c = sq("SELECT docextract.extract_document('$cd', '$tid', '{\"split\": true}')");
# restart_after_crash is off: the worker's abort stops the server.
wait_until(sub { !-e $node->data_dir . '/postmaster.pid' }, 'the server to stop');
ok(!-e $node->data_dir . '/postmaster.pid', 'the worker stopped after writing the sub-documents');
like(slurp_file($node->logfile), qr/aborting on document "crash\.pdf#split"/, '... at the fault point');
$node->append_conf('postgresql.conf', "docextract.debug_crash_on_document = ''\n");
$node->_update_pid(0);
$node->start;
is(wait_for_status($node, $c, 'completed', 'failed'), 'completed', 'after the restart it is split again');
is(children($cd), '1-2:2 3-3:1 4-6:3', 'one set of sub-documents');
is(sq("SELECT count(*) FROM docextract.extractions WHERE parent_extraction_id = '$c'"), '3',
	'one extraction each');
is(scalar(grep { $_->{body} =~ /page_start/ } @{ server_requests($srv) }), 2,
	'the split request was sent again, its first answer never committed');
is(ledger($c), 'reserve 6, charge 6', 'charged once');

$node->stop;
done_testing();
