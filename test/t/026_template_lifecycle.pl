# Templates over their life: set_template_active deactivates and
# reactivates (a deactivated template takes no new work, a reactivated
# version becomes the group's only active one, other roles can do neither),
# and a field's char_limit cuts longer values at a word boundary and flags
# each cut in the validation, sending the extraction to review.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server();
my $node = new_node('lifecycle');
sub sq { return $node->safe_psql('postgres', $_[0]); }
sq(qq{
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 0}');
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
	CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS \$\$
	BEGIN EXECUTE sql; RETURN 'no error';
	EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END \$\$;});
my $pdf = fixture('invoice.pdf');
my $doc = sq("SELECT pg_read_binary_file('$pdf') AS b \\gset
	SET ROLE alice; SELECT docextract.add_document('invoice.pdf', :'b')");

# -- set_template_active ------------------------------------------------------
my $v1 = add_invoice_template($node, 'alice');
my $v2 = sq("SET ROLE alice; SELECT docextract.update_template('$v1', schema_definition)
             FROM docextract.templates WHERE id = '$v1'");
sub active { return sq("SELECT string_agg(version::text, ',' ORDER BY version)
                        FROM docextract.templates WHERE group_id =
                          (SELECT group_id FROM docextract.templates WHERE id = '$v1') AND is_active"); }
sub as_role { my ($role, $sql) = @_; return sq("SET ROLE $role; SELECT sqlstate_of(\$q\$$sql\$q\$)"); }

is(active(), '2', 'after update_template only version 2 is active');
like(as_role('bob', "SELECT docextract.set_template_active('$v2', false)"),
	qr/^42704: template \S+ does not exist/, "another role can't deactivate alice's template");
like(as_role('alice', "SELECT docextract.set_template_active(NULL, false)"),
	qr/^22004: /, 'NULL template_id: 22004');
like(as_role('alice', "SELECT docextract.set_template_active('$v2', NULL)"),
	qr/^22004: /, 'NULL active: 22004');
is(sq("SET ROLE alice; SELECT docextract.set_template_active('$v2', false)"), 't',
	'alice deactivates her template');
is(active(), '', '... and no version of it is active');
is(sq("SET ROLE alice; SELECT docextract.set_template_active('$v2', false)"), 'f',
	'deactivating again changes nothing');
like(as_role('alice', "SELECT docextract.extract_document('$doc', '$v2')"),
	qr/^55000: template "invoice" is deactivated/, 'a deactivated template takes no new extraction');
like(as_role('alice', "SELECT docextract.extract_document('$doc', '$v1')"),
	qr/^55000: template "invoice" is deactivated/, '... by any of its versions');
is(sq('SELECT count(*) FROM docextract.extractions'), '0', '... and nothing is queued');
like(as_role('alice', "SELECT docextract.update_template('$v2', '{}')"),
	qr/^55000: template "invoice" version 2 is not the active version/,
	'update_template still needs the active version');

is(sq("SET ROLE alice; SELECT docextract.set_template_active('$v1', true)"), 't',
	'alice reactivates version 1');
is(active(), '1', '... which is now the only active version');
is(sq("SET ROLE alice; SELECT docextract.set_template_active('$v2', true)"), 't',
	'reactivating version 2');
is(active(), '2', '... steps version 1 down');
my $sys = sq(qq{SELECT docextract.create_system_template('shared', '$DxTest::INVOICE_SCHEMA')});
like(as_role('alice', "SELECT docextract.set_template_active('$sys', false)"),
	qr/^42501: permission denied to deactivate template "shared"/,
	"a role can't deactivate a system template");
is(sq("SELECT docextract.set_template_active('$sys', false)"), 't',
	'the extension owner can');

# -- char_limit -------------------------------------------------------------------
like(as_role('alice', q{SELECT docextract.create_template('bad',
	'{"general_part": {"a": {"name": "A", "format_type": "text", "char_limit": 0}}}')}),
	qr/^22023: .*schema_definition\.general_part\.a\.char_limit must be a positive integer/,
	'char_limit 0 is refused, naming the key');
my $limited = sq(q{SET ROLE alice; SELECT docextract.create_template('limited', '{
	"general_part": {
	  "vendor": {"name": "Vendor", "format_type": "text", "char_limit": 12},
	  "note": {"name": "Note", "format_type": "text", "char_limit": 5},
	  "city": {"name": "City", "format_type": "text", "char_limit": 6}},
	"table_part": {
	  "description": {"name": "Description", "format_type": "text", "char_limit": 9}}}')});
server_script($srv, { answer => {
	general => { vendor => 'Acme Widgets International', note => 'Supercalifragilistic',
		city => "Z\x{fc}rich" },
	table => [ { description => 'Short' }, { description => 'Blue paint, two litres' } ] } });
my $e = sq("SET ROLE alice; SELECT docextract.extract_document('$doc', '$limited')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'awaiting_approval',
	'values over their char_limit send the extraction to review');
my $r = json_of(sq("SELECT docextract.get_result('$e')"));
is($r->{data}{general}{vendor}, 'Acme Widgets', 'cut at the last word boundary within 12 characters');
is($r->{data}{general}{note}, 'Super', 'one long word is cut at the limit');
is($r->{data}{general}{city}, "Z\x{fc}rich", 'characters are counted, not bytes (6 characters, 7 bytes)');
is($r->{data}{table}[0]{description}, 'Short', 'a short cell is kept');
is($r->{data}{table}[1]{description}, 'Blue', 'a table cell is cut too, without the trailing comma space');
my @flags = sort { $a->{details}{field} cmp $b->{details}{field} }
	grep { $_->{rule_type} eq 'char_limit' } @{ $r->{validation} };
is(scalar(@flags), 3, 'each cut value is flagged once');
is_deeply([ map { [ $_->{details}{field}, $_->{details}{char_limit}, $_->{details}{length},
	$_->{details}{row_index}, $_->{passed} ? 1 : 0 ] } @flags ],
	[ [ 'general_part.note', 5, 20, undef, 0 ], [ 'general_part.vendor', 12, 26, undef, 0 ],
	  [ 'table_part.description', 9, 22, 1, 0 ] ],
	'... naming the field, the limit, the original length and the row');
my $a = json_of(sq(qq{SET ROLE alice; SELECT docextract.approve('$e',
	'{"general": {"note": "A longer note"}}')}));
is(sq("SELECT status FROM docextract.extractions WHERE id = '$e'"), 'completed', 'approve completes it');
$r = json_of(sq("SELECT docextract.get_result('$e')"));
is($r->{data}{general}{note}, 'A', "a reviewer's correction is held to the limit too");
ok((grep { $_->{rule_type} eq 'char_limit' && $_->{details}{field} eq 'general_part.note' }
	@{ $r->{validation} }), '... and flagged');

done_testing();
