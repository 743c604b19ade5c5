# Gemini and Anthropic: each provider's happy path for a PDF and an image,
# with the request's headers and body shape asserted, and its errors.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use MIME::Base64 qw(decode_base64);
use PostgreSQL::Test::Utils;
use Test::More;

my $key = 'test-provider-key-4242424242';
my $srv = start_model_server(api_key => $key);
# log_statement = none: the server's default (004 explains why it matters).
my $node = new_node('providers', conf => "log_statement = none\n");
$node->safe_psql('postgres', qq{
	SELECT docextract.add_model('flash', 'gemini', '$srv->{url}/v1beta', 'gemini-2.5-flash', '$key',
	                            '{"max_retries": 0, "temperature": 0.1}');
	SELECT docextract.add_model('claude', 'anthropic', '$srv->{url}/v1', 'claude-sonnet-4-5', '$key',
	                            '{"max_retries": 0}');
	SELECT docextract.add_model('claude-badkey', 'anthropic', '$srv->{url}/v1', 'claude-sonnet-4-5',
	                            'wrong-key', '{"max_retries": 0}');});
my $tid = add_invoice_template($node);
my %doc;
for my $f ('invoice.pdf', 'receipt.png')
{
	$doc{$f} = $node->safe_psql('postgres',
		"SELECT docextract.add_document('$f', pg_read_binary_file('" . fixture($f) . "'))");
}
my $pdf_bytes = slurp_file(fixture('invoice.pdf'));

sub extract
{
	my ($file, $model, $extra) = @_;
	my $id = $node->safe_psql('postgres',
		"SELECT docextract.extract_document('$doc{$file}', '$tid', '{\"model\": \"$model\", \"force\": true$extra}')");
	my $status = wait_for_status($node, $id, 'completed', 'failed');
	return ($id, $status, json_of(server_requests($srv)->[-1]{body}), server_requests($srv)->[-1]);
}

# -- Gemini --------------------------------------------------------------------------
my ($id, $status, $body, $req) = extract('invoice.pdf', 'flash', ', "seed": 5');
is($status, 'completed', 'gemini PDF: completed');
is($req->{path}, '/v1beta/models/gemini-2.5-flash:generateContent', 'gemini: POST {base_url}/models/{model}:generateContent');
is($req->{headers}{'x-goog-api-key'}, $key, 'gemini: x-goog-api-key header');
ok(!exists $req->{headers}{authorization}, 'gemini: no Authorization header');
my $inline = $body->{contents}[0]{parts}[1]{inline_data};
is($inline->{mime_type}, 'application/pdf', 'gemini: PDF inline with its mime type');
is(decode_base64($inline->{data}), $pdf_bytes, 'gemini: inline data is the PDF, base64');
like($body->{systemInstruction}{parts}[0]{text}, qr/Read the invoice header\./, 'gemini: system instruction from the template');
is($body->{generationConfig}{responseMimeType}, 'application/json', 'gemini: responseMimeType application/json');
my $schema = $body->{generationConfig}{responseSchema};
is($schema->{type}, 'OBJECT', 'gemini: responseSchema in the OpenAPI subset');
is_deeply($schema->{properties}{general}{properties}{currency},
	{ type => 'STRING', nullable => JSON::PP::true, format => 'enum', enum => [ 'EUR', 'USD', 'GBP' ],
	  description => 'Currency (exactly one of the listed choices; null if not in the document)' },
	'gemini: a multiple_choice field as a nullable enum');
is_deeply([ @{ $schema->{properties}{general}{propertyOrdering} }[ 0 .. 1 ] ], [ 'invoice_number', 'invoice_date' ],
	'gemini: propertyOrdering follows position');
is($body->{generationConfig}{temperature}, 0.1, 'gemini: the model temperature');
is($body->{generationConfig}{seed}, 5, 'gemini: the seed');
my $r = json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$id')"));
is($r->{data}{general}{total_amount}, 1469.06, 'gemini PDF: typed result');
is(scalar @{ $r->{data}{table} }, 3, 'gemini PDF: line items');
ok($r->{usage}{input_tokens} > 0 && $r->{usage}{output_tokens} > 0, 'gemini: usage from usageMetadata');

($id, $status, $body) = extract('receipt.png', 'flash');
is($status, 'completed', 'gemini PNG: completed');
is($body->{contents}[0]{parts}[1]{inline_data}{mime_type}, 'image/png', 'gemini: image inline as image/png');
is($node->safe_psql('postgres', "SELECT docextract.get_result('$id')->'data'->'general'->>'invoice_number'"),
	'R-7731', 'gemini PNG: typed result');

server_script($srv, { body => '{"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}' });
($id, $status) = extract('invoice.pdf', 'flash');
is($node->safe_psql('postgres', "SELECT error_message FROM docextract.extractions WHERE id = '$id'"),
	"could not read the model's answer: the model stopped early: SAFETY", 'gemini: a blocked answer says why');
server_script($srv, { status => 400, body => '{"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}' });
($id, $status) = extract('invoice.pdf', 'flash');
is($node->safe_psql('postgres', "SELECT error_message FROM docextract.extractions WHERE id = '$id'"),
	'model endpoint answered HTTP 400: Request contains an invalid argument.', 'gemini: the provider message');

# -- Anthropic ------------------------------------------------------------------------
($id, $status, $body, $req) = extract('invoice.pdf', 'claude', ', "temperature": 0');
is($status, 'completed', 'anthropic PDF: completed');
is($req->{path}, '/v1/messages', 'anthropic: POST {base_url}/messages');
is($req->{headers}{'x-api-key'}, $key, 'anthropic: x-api-key header');
is($req->{headers}{'anthropic-version'}, '2023-06-01', 'anthropic: anthropic-version header');
is($body->{model}, 'claude-sonnet-4-5', 'anthropic: model');
ok($body->{max_tokens} > 0, 'anthropic: max_tokens');
like($body->{system}, qr/Read every line item\./, 'anthropic: system prompt');
my $block = $body->{messages}[0]{content}[0];
is($block->{type}, 'document', 'anthropic: PDF as a document block');
is($block->{source}{type}, 'base64', '... base64 source');
is($block->{source}{media_type}, 'application/pdf', '... application/pdf');
is(decode_base64($block->{source}{data}), $pdf_bytes, '... the PDF itself');
is($body->{tools}[0]{name}, 'record_extraction', 'anthropic: one tool');
is($body->{tools}[0]{input_schema}{properties}{general}{properties}{total_amount}{type}[0], 'number',
	'anthropic: input_schema built from the template');
is_deeply($body->{tool_choice}, { type => 'tool', name => 'record_extraction' }, 'anthropic: tool_choice forces it');
is($body->{temperature}, 0, 'anthropic: temperature from the options');
$r = json_of($node->safe_psql('postgres', "SELECT docextract.get_result('$id')"));
is($r->{data}{general}{invoice_date}, '2026-03-14', 'anthropic PDF: typed result');
ok($r->{usage}{input_tokens} > 0 && $r->{usage}{output_tokens} > 0, 'anthropic: usage');

($id, $status, $body) = extract('receipt.png', 'claude');
is($status, 'completed', 'anthropic PNG: completed');
is($body->{messages}[0]{content}[0]{type}, 'image', 'anthropic: an image block');
is($body->{messages}[0]{content}[0]{source}{media_type}, 'image/png', '... image/png');
is($node->safe_psql('postgres', "SELECT docextract.get_result('$id')->'data'->'general'->>'total_amount'"),
	'11.34', 'anthropic PNG: typed result');

server_script($srv, { raw_content => 'I think the total is 11.34.' });
($id, $status) = extract('invoice.pdf', 'claude');
is($node->safe_psql('postgres', "SELECT error_message FROM docextract.extractions WHERE id = '$id'"),
	"could not read the model's answer: the model did not call the record_extraction tool",
	'anthropic: prose instead of the tool says so');
($id, $status) = extract('invoice.pdf', 'claude-badkey');
is($node->safe_psql('postgres', "SELECT error_message FROM docextract.extractions WHERE id = '$id'"),
	'model endpoint answered HTTP 401: invalid x-api-key', 'anthropic: the provider message');

# per_key_attribution in both dialects
($id, $status, $body) = extract('invoice.pdf', 'flash', ', "per_key_attribution": true');
is($body->{generationConfig}{responseSchema}{properties}{attributions}{properties}{paid}{properties}{confidence}{type},
	'NUMBER', 'gemini: attributions in the responseSchema');
is($node->safe_psql('postgres', "SELECT docextract.get_result('$id')->'attributions'->'total_amount'->'evidence'->>'quote'"),
	'Total Amount: EUR 1,469.06', 'gemini: attributions stored');
($id, $status, $body) = extract('receipt.png', 'claude', ', "per_key_attribution": true');
is($body->{tools}[0]{input_schema}{properties}{attributions}{properties}{paid}{properties}{evidence}{required}[0],
	'quote', 'anthropic: attributions in the input_schema');
is($node->safe_psql('postgres', "SELECT docextract.get_result('$id')->'attributions'->'invoice_number'->>'confidence'"),
	'0.9', 'anthropic: attributions stored');

unlike(slurp_file($node->logfile), qr/\Q$key\E/, 'no key in the server log');
$node->stop;
done_testing();
