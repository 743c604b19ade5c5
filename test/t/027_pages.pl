# options.pages: only the pages asked for are sent (their text, or a PDF of
# only them written by libqpdf in the parser helper) and charged; a bad
# range is refused at submit with 22023 naming it, and nothing is queued.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64 qw(decode_base64);

my $srv = start_model_server();
my $node = new_node('pages', credits => 'enforce');
sub sq { return $node->safe_psql('postgres', $_[0]); }
sq(qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	SELECT docextract.add_model('file-mode', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 0, "document_mode": "file"}');
	SELECT docextract.grant_credits(current_user, 100, 'test');
	CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS \$\$
	BEGIN EXECUTE sql; RETURN 'no error';
	EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END \$\$;});
my $tid = add_invoice_template($node);
my $two = fixture('two-pages.pdf');
my $doc = sq("SELECT docextract.add_document('two.pdf', pg_read_binary_file('$two'))");
my $png = sq("SELECT docextract.add_document('r.png', pg_read_binary_file('" . fixture('receipt.png') . "'))");

# -- bad ranges -------------------------------------------------------------------
for my $case (
	[ '"0"', qr/range "0" names page 0; pages start at 1/ ],
	[ '"2-1"', qr/range "2-1" is reversed/ ],
	[ '"1-3"', qr/range "1-3" is past the end of the document/ ],
	[ '"3"', qr/range "3" is past the end of the document/ ],
	[ '"x"', qr/range "x" is not a page number or a range/ ],
	[ '"1-"', qr/range "1-" is not a page number or a range/ ],
	[ '"-1"', qr/range "-1" is not a page number or a range/ ],
	[ '"1,,2"', qr/range "1,,2" has an empty range/ ],
	[ '"1,"', qr/range "1," has an empty range/ ],
	[ '""', qr/range "" names no page/ ],
	[ '"99999999999999999999"', qr/past the end of the document/ ],
	[ '2', qr/option "pages" has an invalid value 2/ ],
	[ 'null', qr/option "pages" has an invalid value null/ ])
{
	my ($value, $re) = @$case;
	my $got = sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$doc', '$tid', '{\"pages\": $value}')\$\$)");
	like($got, qr/^22023: .*$re/, "pages $value: 22023") or diag($got);
}
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$doc', '$tid', '{\"pages\": \"1-3\"}')\$\$)"),
	qr/^22023: /, 'the hint gives the page count') ;
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$png', '$tid', '{\"pages\": \"2\"}')\$\$)"),
	qr/^22023: .*past the end/, 'an image has one page');
is(sq('SELECT count(*) FROM docextract.extractions'), '0', 'nothing is queued for a bad range');
is(sq('SELECT docextract.credit_balance()'), '100', '... and nothing reserved');

# -- text mode: only page 2's text is sent, one credit charged -----------------------
my $e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"pages\": \" 2 \"}')");
is(sq("SELECT credits FROM docextract.credit_ledger WHERE extraction_id = '$e' AND kind = 'reserve'"), '1',
	'one page reserved');
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed', 'pages 2 completes');
my $body = json_of(server_requests($srv)->[-1]{body})->{messages}[1]{content};
like($body, qr/Closing balance/, "page 2's text is sent");
unlike($body, qr/Invoice Number/, "page 1's text is not");
like($body, qr/\(1 page\)/, 'the prompt counts one page');
is(sq("SELECT credits_used FROM docextract.extractions WHERE id = '$e'"), '1', 'one credit charged');
is(sq('SELECT docextract.credit_balance()'), '99', '... and only one');

# -- overlapping ranges are merged; all pages is the document as it is ----------------
my $all = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"pages\": \"1-2,2,1\"}')");
is(sq("SELECT page_numbers IS NULL FROM docextract.extractions WHERE id = '$all'"), 't',
	'overlapping ranges naming every page are the document as it is');
is(sq("SELECT docextract.extract_document('$doc', '$tid', '{}')"), $all, '... the same extraction as no pages at all');
is(wait_for_status($node, $all, 'completed', 'failed', 'awaiting_approval'), 'completed', '... and it completes');
is(sq("SELECT credits_used FROM docextract.extractions WHERE id = '$all'"), '2', '... charging both pages once');

# -- file mode: a PDF of only that page -----------------------------------------------
my $f = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"pages\": \"1\", \"model\": \"file-mode\"}')");
is(wait_for_status($node, $f, 'completed', 'failed', 'awaiting_approval'), 'completed', 'file mode, pages 1 completes');
my $sent = json_of(server_requests($srv)->[-1]{body})->{messages}[1]{content}[1]{file}{file_data};
like($sent, qr{^data:application/pdf;base64,JVBERi0}, 'a PDF is sent');
$sent =~ s{^data:application/pdf;base64,}{};
my $file = "$PostgreSQL::Test::Utils::tmp_check/sent_page.pdf";
open(my $fh, '>:raw', $file) or die $!;
print $fh decode_base64($sent);
close $fh;
like(`pdfinfo $file`, qr/^Pages:\s+1$/m, 'the PDF sent has one page');
my $text = `pdftotext $file -`;
like($text, qr/Invoice Number: INV-2026-0042/, "... page 1's");
unlike($text, qr/Closing balance/, '... without page 2');
is(sq("SELECT docextract.get_result('$f')->'data'->'general'->>'invoice_number'"), 'INV-2026-0042',
	'and the extraction reads it');

# -- what the catalog reaches does not come along ---------------------------------------
# Page 1 of a PDF whose bookmark points at page 2: removing page 2 from the
# page tree would leave it reachable, and sent.
my $outlined = sq("SELECT docextract.add_document('outlined.pdf', pg_read_binary_file('" . fixture('outlined.pdf') . "'))");
my $o = sq("SELECT docextract.extract_document('$outlined', '$tid', '{\"pages\": \"1\", \"model\": \"file-mode\"}')");
is(wait_for_status($node, $o, 'completed', 'failed', 'awaiting_approval'), 'completed', 'page 1 of a PDF with a bookmark to page 2');
$sent = json_of(server_requests($srv)->[-1]{body})->{messages}[1]{content}[1]{file}{file_data};
$sent =~ s{^data:application/pdf;base64,}{};
my $bytes = decode_base64($sent);
unlike($bytes, qr/SECRET page two/, 'the PDF sent holds nothing of page 2');
like($bytes, qr/Page one public/, '... and page 1 as it was (its stream copied, not re-encoded)');
unlike($bytes, qr{/Outlines}, '... and no bookmarks');
my $p21 = sq("SELECT docextract.extract_document('$outlined', '$tid', '{\"pages\": \"2,1\"}')");
is(sq("SELECT docextract.extract_document('$outlined', '$tid', '{\"pages\": \" 1-2 \"}')"), $p21,
	'"2,1" and "1-2" name the same pages: the same extraction');

# -- the same document and template with other pages is another extraction ------------
isnt(sq("SELECT docextract.extract_document('$doc', '$tid', '{\"pages\": \"1\"}')"), $e,
	'pages 1 is not the extraction of pages 2');
is(sq("SELECT docextract.extract_document('$doc', '$tid', '{\"pages\": \" 2 \"}')"), $e,
	'the same pages again is the same extraction');

done_testing();
