# Scanned pages and HEIC: a PDF page without a text layer is rendered (at
# docextract.render_dpi, in the sandboxed helper) and sent as an image
# beside the other pages' text; HEIC goes as PNG to OpenAI-compatible
# servers and Anthropic, as it is to Gemini.  A document the helper cannot
# render or decode fails its extraction with a clear message.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64 qw(decode_base64 encode_base64);
use Compress::Zlib qw(uncompress);

my $srv = start_model_server();
my $node = new_node('media', conf => "docextract.render_dpi = 36\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }
sq(qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	SELECT docextract.add_model('file-mode', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 0, "document_mode": "file"}');
	SELECT docextract.add_model('flash', 'gemini', '$srv->{url}/v1beta', 'gemini-2.5-flash', NULL, '{"max_retries": 0}');
	SELECT docextract.add_model('claude', 'anthropic', '$srv->{url}/v1', 'claude-sonnet-4-5', NULL, '{"max_retries": 0}');});
my $tid = add_invoice_template($node);
sub add_doc { my ($name, $file) = @_; return sq("SELECT docextract.add_document('$name', pg_read_binary_file('$file'))"); }
sub extract
{
	my ($doc, $options) = @_;
	my $e = sq("SELECT docextract.extract_document('$doc', '$tid', '$options')");
	my $status = wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval');
	return ($e, $status, json_of(server_requests($srv)->[-1]{body}));
}
# A PNG's width and height, and whether its pixels are not all white.
sub png_facts
{
	my ($png) = @_;
	return undef unless substr($png, 0, 8) eq "\x89PNG\r\n\x1a\n";
	my ($w, $h) = unpack('NN', substr($png, 16, 8));
	my ($idat, $at) = ('', 8);
	while ($at < length $png)
	{
		my ($len, $type) = unpack('Na4', substr($png, $at, 8));
		$idat .= substr($png, $at + 8, $len) if $type eq 'IDAT';
		$at += 12 + $len;
	}
	return [ $w, $h, non_white(uncompress($idat) // '', $w, unpack('C', substr($png, 25, 1))) > 100 ? 1 : 0 ];
}
# Pixels that are not white, in PNG scanlines of 8-bit RGB (colour type 2)
# or RGBA (6), once each row's filter is undone.
sub non_white
{
	my ($data, $w, $type) = @_;
	my $bpp = $type == 6 ? 4 : 3;
	my $stride = $w * $bpp;
	my @prev = (0) x $stride;
	my $count = 0;
	for (my $at = 0; $at + 1 + $stride <= length $data; $at += 1 + $stride)
	{
		my $filter = ord(substr($data, $at, 1));
		my @row = unpack('C*', substr($data, $at + 1, $stride));
		for my $i (0 .. $#row)
		{
			my $a = $i >= $bpp ? $row[ $i - $bpp ] : 0;
			my ($b, $c) = ($prev[$i], $i >= $bpp ? $prev[ $i - $bpp ] : 0);
			my $p = $a + $b - $c;
			my ($pa, $pb, $pc) = (abs($p - $a), abs($p - $b), abs($p - $c));
			my $pred = $filter == 1 ? $a : $filter == 2 ? $b : $filter == 3 ? int(($a + $b) / 2)
			  : $filter == 4 ? ($pa <= $pb && $pa <= $pc ? $a : $pb <= $pc ? $b : $c) : 0;
			$row[$i] = ($row[$i] + $pred) & 0xff;
		}
		for (my $x = 0; $x < $w; $x++)
		{
			$count++ if grep { $_ != 255 } @row[ $x * $bpp .. $x * $bpp + 2 ];
		}
		@prev = @row;
	}
	return $count;
}
sub data_url_png { my ($url) = @_; $url =~ s{^data:image/png;base64,}{} or return undef; return decode_base64($url); }

# -- a scanned page in text mode ------------------------------------------------------
my $scan = add_doc('scanned.pdf', fixture('scanned.pdf'));
my ($e, $status, $body) = extract($scan, '{}');
is($status, 'completed', 'a PDF with a scanned page completes');
my $content = $body->{messages}[1]{content};
is(ref $content, 'ARRAY', 'the user message is text and images');
like($content->[0]{text}, qr/Invoice Number: INV-2026-0042/, "page 1's text is sent as text");
like($content->[0]{text}, qr/page 2 has no text layer: it follows as an image/, '... saying page 2 follows as an image');
is(scalar(@$content), 2, 'one image: the one page without text');
is($content->[1]{type}, 'image_url', '... as an image_url part');
is_deeply(png_facts(data_url_png($content->[1]{image_url}{url})), [ 297, 421, 1 ],
	'a PNG of the page at 36 dpi (595 x 842 points), showing the scan');

sq("ALTER SYSTEM SET docextract.render_dpi = 72; SELECT pg_reload_conf();");
$node->poll_query_until('postgres', "SELECT setting = '72' FROM pg_settings WHERE name = 'docextract.render_dpi'");
($e, $status, $body) = extract($scan, '{"force": true}');
# The worker reads the new setting at its next wake, which this submit is.
is_deeply(png_facts(data_url_png($body->{messages}[1]{content}[1]{image_url}{url}))->[0], 595,
	'render_dpi = 72: the page at one pixel per point');

my $text_only = add_doc('invoice.pdf', fixture('invoice.pdf'));
(undef, undef, $body) = extract($text_only, '{}');
is(ref $body->{messages}[1]{content}, '', 'a PDF with text on every page goes as text alone, as before');
(undef, $status, $body) = extract($scan, '{"model": "file-mode"}');
is($body->{messages}[1]{content}[1]{type}, 'file', 'file mode sends the PDF itself, scans included');

# -- pages and scans together ---------------------------------------------------------
(undef, $status, $body) = extract($scan, '{"pages": "2"}');
is($status, 'completed', 'only the scanned page');
like($body->{messages}[1]{content}[0]{text}, qr/\(1 page\).*page 1 has no text layer/s,
	'... is the one page sent, as an image');

# -- HEIC -----------------------------------------------------------------------------
my $heic_file = fixture('photo.heic');
my $heic = add_doc('photo.heic', $heic_file);
is(sq("SELECT content_type FROM docextract.documents WHERE id = '$heic'"), 'image/heic', 'a HEIC photo is stored as HEIC');
($e, $status, $body) = extract($heic, '{}');
is($status, 'completed', 'HEIC to an OpenAI-compatible server completes');
is_deeply([ @{ png_facts(data_url_png($body->{messages}[1]{content}[1]{image_url}{url})) }[ 0, 1 ] ], [ 64, 48 ],
	'... sent as a PNG of the photo (64 x 48)');
($e, $status, $body) = extract($heic, '{"model": "claude"}');
is($status, 'completed', 'HEIC to Anthropic completes');
my ($block) = grep { $_->{type} eq 'image' } @{ $body->{messages}[0]{content} };
is($block->{source}{media_type}, 'image/png', '... as a PNG image block');
($e, $status, $body) = extract($heic, '{"model": "flash"}');
is($status, 'completed', 'HEIC to Gemini completes');
my ($inline) = grep { $_->{inline_data} } @{ $body->{contents}[0]{parts} };
is($inline->{inline_data}{mime_type}, 'image/heic', '... sent as HEIC');
open(my $fh, '<:raw', $heic_file) or die $!;
my $raw = do { local $/; <$fh> };
close $fh;
is(decode_base64($inline->{inline_data}{data}), $raw, '... byte for byte');

# -- what the helper cannot decode or render ------------------------------------------
my $bad = sq(q{SELECT docextract.add_document('broken.heic',
	'\x0000001c667479706865696300000000686569636d696631'::bytea || decode(repeat('00', 64), 'hex'))});
($e, $status) = extract($bad, '{}');
is($status, 'failed', 'a HEIC that is not one fails its extraction');
like(sq("SELECT error_message FROM docextract.extractions WHERE id = '$e'"),
	qr/could not convert image "broken\.heic" to PNG/, '... saying why');
# 14,400 points at 150 dpi is 30,000 pixels a side: past the helper's cap.
sq("ALTER SYSTEM SET docextract.render_dpi = 150; SELECT pg_reload_conf();");
$node->poll_query_until('postgres', "SELECT setting = '150' FROM pg_settings WHERE name = 'docextract.render_dpi'");
my $huge = sq(q{SELECT docextract.add_document('huge.pdf', convert_to(
	'%PDF-1.4' || chr(10) || '1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj' || chr(10) ||
	'2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj' || chr(10) ||
	'3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] >> endobj' || chr(10) ||
	'trailer << /Root 1 0 R >>' || chr(10) || '%%EOF', 'UTF8'))});
($e, $status) = extract($huge, '{}');
is($status, 'failed', 'a blank page too large to render fails its extraction');
like(sq("SELECT error_message FROM docextract.extractions WHERE id = '$e'"), qr/could not parse document "huge\.pdf"/,
	'... with the parser\'s reason');
is(sq("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'docextract worker'"), '1', 'the worker lives on');

done_testing();
