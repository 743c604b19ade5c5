# options.citations: every general field and line-item cell gets
# {page, bbox, quote, verified}; boxes are checked against poppler's own
# word boxes (pdftotext -bbox) on a real PDF with two columns, a value over
# two lines, a hyphenated word, a ligature, a rotated page and a crop box.
# A quote not on its page, on it twice, or on a page that isn't there is
# verified false with no box.  per_key_attribution covers line items too.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server();
my $node = new_node('citations');
sub sq { return $node->safe_psql('postgres', $_[0]); }
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	SELECT docextract.add_model('file-mode', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 0, "document_mode": "file"}');});
my $pdf = fixture('citations.pdf');
my $doc = sq("SELECT docextract.add_document('citations.pdf', pg_read_binary_file('$pdf'))");
my @general = qw(invoice_number bill_to ship_to notes reference status label subtotal total_amount balance missing elsewhere nothing);
my $schema = '{"general_part": {' . join(', ', map { "\"$_\": {\"name\": \"$_\", \"format_type\": \"text\"}" } @general)
  . '}, "table_part": {"description": {"name": "Description", "format_type": "text"},'
  . ' "amount": {"name": "Amount", "format_type": "text"}}}';
my $tid = sq("SELECT docextract.create_template('cited', '$schema')");

# poppler's own word boxes: page => [[text, x0, y0, x1, y1], ...]
my %words;
{
	my $xml = `pdftotext -bbox $pdf -`;
	my $page = 0;
	for my $line (split /\n/, $xml)
	{
		$page++ if $line =~ /<page /;
		push @{ $words{$page} }, [ $5, $1, $2, $3, $4 ]
		  if $line =~ /<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)<\/word>/;
	}
}
# The union of the boxes of these consecutive words, as pdftotext gives them.
sub union_of
{
	my ($page, @texts) = @_;
	my $list = $words{$page};
	for my $i (0 .. $#$list - $#texts)
	{
		next if grep { $list->[ $i + $_ ][0] ne $texts[$_] } 0 .. $#texts;
		my @w = @$list[ $i .. $i + $#texts ];
		my @box = (1e9, 1e9, -1e9, -1e9);
		for (@w)
		{
			$box[0] = $_->[1] if $_->[1] < $box[0];
			$box[1] = $_->[2] if $_->[2] < $box[1];
			$box[2] = $_->[3] if $_->[3] > $box[2];
			$box[3] = $_->[4] if $_->[4] > $box[3];
		}
		return \@box;
	}
	die "words @texts not on page $page";
}
sub near
{
	my ($got, $want, $name) = @_;
	ok(ref $got eq 'ARRAY' && @$got == 4 && !grep({ abs($got->[$_] - $want->[$_]) > 0.01 } 0 .. 3), $name)
	  or diag(explain({ got => $got, want => $want }));
}
sub ev { return { confidence => 0.9, evidence => { quote => $_[0], page => $_[1] } }; }

my %quotes = (
	invoice_number => [ 'INV-2026-0042', 1 ],
	bill_to => [ 'Northwind Traders', 1 ],
	ship_to => [ 'Contoso Ltd', 1 ],
	notes => [ 'Deliver to the loading dock before noon', 1 ],
	reference => [ 'international shipment', 1 ],
	status => [ 'well-known customer', 1 ],
	label => [ 'Confidential', 1 ],
	subtotal => [ '100.00', 1 ],
	total_amount => [ 'EUR 1,469.06', 2 ],
	balance => [ '4,210.00', 3 ],
	missing => [ 'Not on any page', 1 ],
	elsewhere => [ 'INV-2026-0042', 2 ],
	nothing => [ undef, undef ]);
my %answer = (
	general => { map { $_ => $quotes{$_}[0] } @general },
	table => [ { description => 'Steel widgets, boxed', amount => '1,469.06' },
		{ description => 'Ghost line', amount => '1.00' } ],
	attributions => { map { $_ => ev(@{ $quotes{$_} }) } @general },
	table_attributions => [
		{ description => ev('Steel widgets, boxed', 2), amount => ev('1,469.06', 2) },
		{ description => ev('Ghost line', 9), amount => 'not an object' } ]);
server_script($srv, { answer => \%answer });
my $e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"citations\": true}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed', 'a cited extraction completes');
my $body = json_of(server_requests($srv)->[-1]{body});
my $props = $body->{response_format}{json_schema}{schema}{properties};
ok($props->{attributions} && $props->{table_attributions}, 'the model is asked for evidence of fields and line items');
like($body->{messages}[0]{content}, qr/give in "table_attributions"/, '... and the prompt says so');

my $r = json_of(sq("SELECT docextract.get_result('$e')"));
my $c = $r->{citations}{general};
ok(!exists $r->{attributions}, 'citations alone store no attributions');
is_deeply([ sort keys %$c ], [ sort @general ], 'a citation for every general field');
for my $case (
	[ invoice_number => 1, [ 'INV-2026-0042' ], 'a single word' ],
	[ bill_to => 1, [ 'Northwind', 'Traders' ], 'two words of the left column' ],
	[ ship_to => 1, [ 'Contoso', 'Ltd' ], 'two words of the right column' ],
	[ notes => 1, [ qw(Deliver to the loading dock before noon) ], 'a value over two lines: the union of both lines\' words' ],
	[ reference => 1, [ 'inter-', 'national', 'shipment' ], 'a word hyphenated at a line end' ],
	[ status => 1, [ 'well-', 'known', 'customer' ], 'a compound broken at its hyphen at a line end' ],
	[ label => 1, [ 'Confidential' ], 'a word printed with a ligature' ],
	[ total_amount => 2, [ 'EUR', '1,469.06' ], 'a rotated page, as displayed' ])
{
	my ($field, $page, $texts, $what) = @$case;
	ok($c->{$field}{verified}, "$field verified: $what");
	is($c->{$field}{page}, $page, "... on page $page");
	near($c->{$field}{bbox}, union_of($page, @$texts), "... its box is pdftotext's");
}
is($c->{invoice_number}{quote}, 'INV-2026-0042', 'the quote is returned');
ok($c->{total_amount}{bbox}[2] > 595, 'the rotated page is measured as displayed (842 points wide)');

# The crop box: poppler measures from its top-left corner; pdftotext -bbox
# from the media box's (crop box [20 30 500 800] on a 595 x 842 page).
ok($c->{balance}{verified}, 'a page with a crop box: verified');
my $media = union_of(3, '4,210.00');
near($c->{balance}{bbox}, [ $media->[0] - 20, $media->[1] - 42, $media->[2] - 20, $media->[3] - 42 ],
	'... measured from the crop box as the page is displayed');

for my $case ([ subtotal => 'found twice on its page' ], [ missing => 'not on its page' ],
	[ elsewhere => 'on another page than the one cited' ])
{
	my ($field, $what) = @$case;
	ok(!$c->{$field}{verified}, "$field: $what: not verified");
	ok(!defined $c->{$field}{bbox}, '... and no box');
}
is_deeply($c->{nothing}, { page => undef, bbox => undef, quote => undef, verified => JSON::PP::false },
	'no evidence: nulls, not verified');

my $t = $r->{citations}{table};
is(scalar(@$t), 2, 'a citation row per line item');
ok($t->[0]{description}{verified}, 'a cell on the rotated page is verified');
near($t->[0]{description}{bbox}, union_of(2, 'Steel', 'widgets,', 'boxed'), '... with its box');
ok(!$t->[0]{amount}{verified} && !defined $t->[0]{amount}{bbox}, 'a cell value printed twice on its page is not');
ok(!$t->[1]{description}{verified}, 'a cell cited on a page the document lacks is not verified');
is($t->[1]{amount}{verified}, JSON::PP::false, 'an attribution that is not an object: not verified');

# -- pages: the model cites the pages it was sent; citations name the document's --------
server_script($srv, { answer => { general => {}, table => [],
	attributions => { total_amount => ev('EUR 1,469.06', 1), invoice_number => ev('INV-2026-0042', 1) },
	table_attributions => [] } });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"citations\": true, \"pages\": \"2\", \"model\": \"file-mode\"}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed', 'pages 2 with citations completes');
$c = json_of(sq("SELECT docextract.get_result('$e')"))->{citations}{general};
is($c->{total_amount}{page}, 2, "the model's page 1 of what it was sent is the document's page 2");
near($c->{total_amount}{bbox}, union_of(2, 'EUR', '1,469.06'), '... and the box is on that page');
ok(!$c->{invoice_number}{verified}, 'a quote from a page that was not sent is not verified');

# -- per_key_attribution covers line items -------------------------------------------
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"per_key_attribution\": true}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed', 'per_key_attribution completes');
$r = json_of(sq("SELECT docextract.get_result('$e')"));
ok(!exists $r->{citations}, 'no citations unless asked');
ok(exists $r->{attributions}{invoice_number}, 'attributions of the general fields, as before');
is(ref $r->{table_attributions}, 'ARRAY', 'and table_attributions, one entry per line item');

# -- hostile evidence -----------------------------------------------------------------
server_script($srv, { answer => { general => { invoice_number => 'x' }, table => [ { description => 'y' } ],
	attributions => { invoice_number => { evidence => { quote => 5, page => '1' } }, bill_to => [] },
	table_attributions => { description => 1 } } });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"citations\": true, \"force\": true}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed',
	'evidence of the wrong shapes does not fail the extraction');
$c = json_of(sq("SELECT docextract.get_result('$e')"))->{citations};
ok(!grep({ $c->{general}{$_}{verified} } @general), '... and verifies nothing');

# -- when the words can't be had, the answer is kept, unverified ------------------------
$node->safe_psql('postgres', "ALTER SYSTEM SET docextract.parser_fault = 'crash'; SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('docextract.parser_fault') = 'crash'");
server_script($srv, { answer => { general => { invoice_number => 'INV-2026-0042' }, table => [],
	attributions => { invoice_number => ev('INV-2026-0042', 1) }, table_attributions => [] } });
$e = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"citations\": true, \"seed\": 1}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed',
	'the parser crashing over the word boxes does not fail the extraction');
$r = json_of(sq("SELECT docextract.get_result('$e')"));
is($r->{data}{general}{invoice_number}, 'INV-2026-0042', "... the model's answer is kept");
is_deeply([ $r->{citations}{general}{invoice_number}{verified}, $r->{citations}{general}{invoice_number}{bbox} ],
	[ JSON::PP::false, undef ], '... and nothing is verified');
$node->safe_psql('postgres', "ALTER SYSTEM RESET docextract.parser_fault; SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('docextract.parser_fault') = 'none'");

# -- an image has no text layer ------------------------------------------------------
my $png = sq("SELECT docextract.add_document('r.png', pg_read_binary_file('" . fixture('receipt.png') . "'))");
server_script($srv, { answer => { general => {}, table => [],
	attributions => { invoice_number => ev('R-7731', 1) }, table_attributions => [] } });
$e = sq("SELECT docextract.extract_document('$png', '$tid', '{\"citations\": true}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'completed', 'an image with citations completes');
$c = json_of(sq("SELECT docextract.get_result('$e')"))->{citations}{general};
is_deeply([ $c->{invoice_number}{page}, $c->{invoice_number}{bbox}, $c->{invoice_number}{verified} ],
	[ 1, undef, JSON::PP::false ], '... its quotes are not verified (no text layer to find them in)');

done_testing();
