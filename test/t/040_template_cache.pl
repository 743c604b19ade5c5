# The worker's parsed templates (src/template_cache.c): a template is
# parsed once per row version, and a row a superuser UPDATEs in place is
# parsed anew, never served from the cache: the request and the result
# follow the new definition, a definition made invalid fails the job, and
# one made valid again works again.  A template whose parse is too big to
# keep is parsed for every job.  The worker says "docextract: template <id>
# parsed" at DEBUG1 each time it parses one, which is what is counted here.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use HTTP::Tiny;

my $srv = start_model_server();
my $node = new_node('tcache', conf => "log_min_messages = debug1\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
                                  '{"max_retries": 0}')});
my $doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('"
	  . fixture('invoice.pdf') . "'))");
my $tid = add_invoice_template($node);

sub parses
{
	my ($id) = @_;
	my @hits = slurp_file($node->logfile) =~ /docextract: template \Q$id\E parsed/g;
	return scalar @hits;
}

# One extraction; its status, and the request it sent (unless $quick).
sub extract
{
	my ($template, $quick) = @_;
	# force: a new extraction each time, not the earlier one of the same pair
	my $e = sq("SELECT docextract.extract_document('$doc', '$template', '{\"force\": true}')");
	my $status = wait_for_status($node, $e, 'completed', 'failed');
	return ($e, $status) if $quick;
	return ($e, $status, decode_json(server_requests($srv)->[-1]{body}));
}
sub general_keys
{
	my ($body) = @_;
	my $schema = $body->{response_format}{json_schema}{schema};
	return join(',', sort keys %{ $schema->{properties}{general}{properties} });
}

my ($e1, $st1, $b1) = extract($tid);
is($st1, 'completed', 'first extraction completes');
is(parses($tid), 1, 'the template was parsed for it');
my ($e2, $st2, $b2) = extract($tid);
is($st2, 'completed', 'second extraction with the same template completes');
is(parses($tid), 1, '... without parsing the template again (served from the cache)');
is(general_keys($b2), general_keys($b1), '... and asked for the same fields');
my $sent = scalar @{ server_requests($srv) };

# -- a row changed in place: never the old parse --------------------------------
sq(qq{UPDATE docextract.templates
	     SET schema_definition = '{"general_part": {
	           "invoice_number": {"name": "Invoice Number", "format_type": "text"},
	           "vendor_city": {"name": "Vendor City", "format_type": "text",
	                           "prompt": "the city in the vendor address"}}}',
	         prompt_set = '{"global_instructions": "Changed in place."}'
	   WHERE id = '$tid'});
my ($e3, $st3, $b3) = extract($tid);
is($st3, 'completed', 'after an UPDATE in place the extraction completes');
is(scalar @{ server_requests($srv) }, $sent + 1, '... with one more request');
is(general_keys($b3), 'invoice_number,vendor_city', '... which asked for the new fields');
ok(!exists $b3->{response_format}{json_schema}{schema}{properties}{table},
	'... and for no table, which the new definition does not have');
like($b3->{messages}[0]{content}, qr/Changed in place\./, '... with the new instructions');
unlike($b3->{messages}[0]{content}, qr/Read every line item/, '... and not the old table prompt');
my $data = decode_json(sq("SELECT docextract.get_result('$e3')"))->{data};
is(join(',', sort keys %{ $data->{general} }), 'invoice_number,vendor_city',
	'the stored result has the new fields');
is(parses($tid), 2, 'the changed row was parsed anew');

sq(qq{UPDATE docextract.templates
	     SET schema_definition = '{"general_part": {"a": {"name": "A", "format_type": "bogus"}}}'
	   WHERE id = '$tid'});
my ($e4, $st4) = extract($tid);
is($st4, 'failed', 'a definition made invalid in place fails the job');
like(sq("SELECT error_message FROM docextract.extractions WHERE id = '$e4'"),
	qr/template no longer valid: .*format_type "bogus"/, '... naming what is wrong');
sq(qq{UPDATE docextract.templates SET schema_definition = '$DxTest::INVOICE_SCHEMA'
	   WHERE id = '$tid'});
my ($e5, $st5, $b5) = extract($tid);
is($st5, 'completed', 'made valid again in place, it works again');
is(general_keys($b5), general_keys($b1), '... asking for the restored fields');
is(parses($tid), 4, 'each version of the row was parsed once');

# -- too big to keep: parsed for every job ----------------------------------------
my $long = 'Read carefully. ' x 40000;	# 640 kB of instructions
my $big = sq(qq{SELECT docextract.create_template('big', '$DxTest::INVOICE_SCHEMA',
	'{"global_instructions": "$long"}')});
my ($e6, $st6, $b6) = extract($big);
my ($e7, $st7, $b7) = extract($big);
is("$st6 $st7", 'completed completed', 'a template too big to cache still works');
ok(length($b7->{messages}[0]{content}) > 600000, '... its instructions sent whole');
is(parses($big), 2, '... parsed for each job, not kept');
is(parses($tid), 4, 'the small template was not parsed again meanwhile');

# -- evicted while a job holds it ---------------------------------------------------
# The invoice template's job waits for its answer while 24 templates of
# 400 kB each push it out of the cache (8 MB in all): the job still has
# its template when the answer comes, and the next job parses it anew.
server_script($srv, { hold => 'invoice' });
my $held = sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
wait_inflight($srv, 1);
is(server_stats($srv)->{inflight}, 1, 'the invoice request is in flight, its answer held');
my $mid = 'Read carefully. ' x 25000;	# 400 kB
for my $i (1 .. 24)
{
	my $t = sq(qq{SELECT docextract.create_template('mid$i', '$DxTest::INVOICE_SCHEMA',
		'{"global_instructions": "$mid"}')});
	my ($e, $st) = extract($t, 1);
	die "extraction with template mid$i: $st" unless $st eq 'completed';
}
server_release($srv, 'invoice');
is(wait_for_status($node, $held, 'completed', 'failed'), 'completed',
	'the held job completes after its template was evicted');
my $r = decode_json(sq("SELECT docextract.get_result('$held')"));
is($r->{data}{general}{invoice_number}, 'INV-2026-0042', '... typed by its own template');
is(scalar @{ $r->{data}{table} }, 3, '... with its line items');
is(parses($tid), 4, 'the invoice template was not parsed while its job waited');
extract($tid, 1);
is(parses($tid), 5, 'it had been evicted: the next job parses it anew');

# -- the extension dropped and created again: a template of the same id -------------
sq('DROP EXTENSION docextract CASCADE; CREATE EXTENSION docextract');
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
                                  '{"max_retries": 0}')});
$doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('"
	  . fixture('invoice.pdf') . "'))");
my $again = sq(q{SELECT docextract.create_template('again',
	'{"general_part": {"vendor_city": {"name": "Vendor City", "format_type": "text"}}}')});
sq("UPDATE docextract.templates SET id = '$tid', group_id = '$tid' WHERE id = '$again'");
my ($e8, $st8, $b8) = extract($tid);
is($st8, 'completed', 'after DROP and CREATE EXTENSION, a template with the old id works');
is(general_keys($b8), 'vendor_city', '... with its own definition, not the dropped one');
is(parses($tid), 6, '... parsed anew');

done_testing();
