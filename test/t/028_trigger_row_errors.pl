# Per-row errors in the trigger form: a COPY of 10,000 rows, some of them not
# documents (junk, empty, a broken PDF), with the role's credits running out
# half-way under docextract.credits = enforce, does not abort: every row gets
# one extraction with a definite status and the reason, its status column
# says it, events go out, no credit is charged twice and the good rows
# complete.  A template the inserting role cannot see fails its rows the
# same way.  docextract.trigger_errors = 'raise' makes the same COPY fail
# whole and store nothing.  The COPY is one transaction without a
# subtransaction per row: it uses a handful of transaction ids, not one per
# bad row (and its time is printed).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $srv = start_model_server(delay_ms => 0);
my $node = new_node('rowerr', credits => 'enforce', conf => "docextract.max_inflight = 32\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE ROLE app LOGIN; CREATE ROLE other LOGIN;
	CREATE TABLE public.inbox (id int PRIMARY KEY, doc bytea, extracted jsonb, state text);
	GRANT SELECT, INSERT, UPDATE ON public.inbox TO app;});
sq(qq{SELECT docextract.create_system_template('invoice', '$DxTest::INVOICE_SCHEMA')});
sq(q{CREATE TRIGGER inbox_extract AFTER INSERT ON public.inbox FOR EACH ROW
	EXECUTE FUNCTION docextract.extract_document('invoice', 'doc', 'extracted', 'state')});

# -- the rows: mostly the one-page PNG, some two-page PDFs, and bad ones -------------
my $png = unpack('H*', slurp_file(fixture('receipt.png')));
my $pdf2 = unpack('H*', slurp_file(fixture('two-pages.pdf')));
my (%kind, $good_pages);
my $rows = 10_000;
my $copy = "$PostgreSQL::Test::Utils::tmp_check/rows.copy";
open(my $fh, '>', $copy) or die;
for my $i (1 .. $rows)
{
	my ($k, $hex) =
	    $i % 20 == 7 ? ('junk', unpack('H*', "not a document $i"))
	  : $i % 20 == 13 ? ('empty', '')
	  : $i % 100 == 41 ? ('broken', unpack('H*', "%PDF-1.4\n% broken $i\n"))
	  : $i % 100 == 50 ? ('pdf2', $pdf2)
	  : ('png', $png);
	$kind{$i} = $k;
	$good_pages += $k eq 'pdf2' ? 2 : $k eq 'png' ? 1 : 0;
	print $fh "$i\t\\\\x$hex\n";
}
close $fh;
chmod 0644, $copy;
my $bad = grep { $kind{$_} =~ /^(junk|empty|broken)$/ } keys %kind;
my $grant = int($good_pages / 2);
sq("SELECT docextract.grant_credits('app', $grant)");
sq('GRANT pg_read_server_files TO app');

my %before = (
	extractions => sq('SELECT count(*) FROM docextract.extractions'),
	documents => sq('SELECT count(*) FROM docextract.documents'),
	ledger => sq('SELECT count(*) FROM docextract.credit_ledger'),
	events => sq('SELECT count(*) FROM docextract.events'));
sub unchanged
{
	my ($what) = @_;
	is(sq('SELECT count(*) FROM public.inbox'), '0', "$what: no row stored");
	for my $t (sort keys %before)
	{
		my $table = $t eq 'ledger' ? 'credit_ledger' : $t;
		is(sq("SELECT count(*) FROM docextract.$table"), $before{$t}, "$what: no $t");
	}
	is(sq(q{SELECT docextract.credit_balance('app')}), $grant, "$what: nothing reserved");
}

# -- trigger_errors = 'raise': the same COPY fails whole, nothing stored ------------
my ($rc, $out, $err) = $node->psql('postgres',
	"SET ROLE app; SET docextract.trigger_errors = 'raise'; COPY public.inbox (id, doc) FROM '$copy'",
	on_error_stop => 1);
isnt($rc, 0, 'raise: the COPY fails');
like($err, qr/document "inbox\/7" is not a PDF, JPEG, PNG, HEIC or HEIF file/, 'raise: with the first bad row\'s error');
unchanged('raise');

# -- record (the default): the COPY goes through ------------------------------------
my $t0 = time;
# Both ids are read before the commit (which wakes the workers, whose
# transactions would count too): the transaction's own, and the next one
# assigned, as the xmin of a row written in a subtransaction after the COPY.
my $xids = sq(qq{SET ROLE app;
	CREATE TEMP TABLE xid_probe (i int);
	BEGIN;
	COPY public.inbox (id, doc) FROM '$copy';
	SELECT pg_current_xact_id();
	SAVEPOINT probe;
	INSERT INTO xid_probe VALUES (1) RETURNING xmin;
	RELEASE probe;
	COMMIT;});
my $copy_s = time - $t0;
my ($xid_copy, $xid_after) = split /\n/, $xids;
like("$xid_copy $xid_after", qr/^\d+ \d+$/, 'the transaction id and the next one assigned are read');
diag('transaction ids the COPY took: ' . ($xid_after - $xid_copy));
diag(sprintf('COPY of %d rows (%d bad, credits for %d of %d good pages): %.1f s, %.0f rows/s',
	$rows, $bad, $grant, $good_pages, $copy_s, $rows / $copy_s));
cmp_ok($xid_after - $xid_copy, '<', 50,
	'the COPY took a handful of transaction ids, not a subtransaction per row');

is(sq('SELECT count(*) FROM public.inbox'), $rows, 'every row is stored');
is(sq(q{SELECT count(*) || ' ' || count(DISTINCT target_pk) FROM docextract.extractions
	WHERE target_table = 'public.inbox'::regclass}), "$rows $rows", 'every row has exactly one extraction');

# The bad rows: failed at once, with why, holding nothing.
my %reason = (junk => 'is not a PDF, JPEG, PNG, HEIC or HEIF file', empty => 'is empty',
	broken => 'is not a readable PDF');
my $status_of = sq(q{SELECT string_agg(x.target_pk[1] || ':' || x.status || ':' || x.credits_reserved
	|| ':' || (d.rejection IS NOT NULL) || ':' || (d.content IS NULL) || ':' || coalesce(x.error_message, ''), E'\n')
	FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
	WHERE x.target_table = 'public.inbox'::regclass});
my (%status, %msg, %held, %rejected, %nobytes);
for (split /\n/, $status_of)
{
	my ($id, $s, $r, $rej, $nob, $m) = split /:/, $_, 6;
	$status{$id} = $s; $msg{$id} = $m; $held{$id} = $r; $rejected{$id} = $rej; $nobytes{$id} = $nob;
}
my @wrong = grep {
	my $k = $kind{$_};
	$reason{$k}
	  ? !($status{$_} eq 'failed' && $msg{$_} =~ /^document "inbox\/$_" \Q$reason{$k}\E/ && $held{$_} == 0
		&& $rejected{$_} eq 'true' && $nobytes{$_} eq 'true')
	  : !($status{$_} =~ /^(pending|processing|completed|insufficient_credits)$/ && $rejected{$_} eq 'false')
} 1 .. $rows;
# (The worker starts on the submitted ones as soon as the COPY commits.)
is(scalar(@wrong), 0, 'bad rows: failed with the reason, a rejected record without bytes; good rows: submitted or insufficient_credits')
  or diag("e.g. row $wrong[0] ($kind{$wrong[0]}): $status{$wrong[0]} $msg{$wrong[0]}");

# Credits ran out part-way: the first good rows were submitted, the later ones
# recorded insufficient_credits with the balance, reserving nothing.
my @good = grep { !$reason{$kind{$_}} } 1 .. $rows;
my @short = grep { $status{$_} eq 'insufficient_credits' } @good;
my @sent = grep { $status{$_} ne 'insufficient_credits' } @good;
cmp_ok(scalar(@short), '>', 1000, 'credits ran out: many rows insufficient_credits');
cmp_ok(scalar(@sent), '>', 1000, '... after many were submitted');
cmp_ok($short[0], '>', $rows / 3, '... half-way through the COPY');
like($msg{ $short[0] }, qr/^insufficient credits: role app needs [12] credit\(s\) for [12] page\(s\), its balance is [01]$/,
	'... each with the reason');
is(sq(q{SELECT count(*) FROM docextract.extractions x WHERE x.target_table = 'public.inbox'::regclass
	AND x.status IN ('failed', 'insufficient_credits')
	AND EXISTS (SELECT 1 FROM docextract.credit_ledger l WHERE l.extraction_id = x.id)}), '0',
	'a row not submitted has no ledger entry');
my $reserved = sq(q{SELECT sum(credits) FROM docextract.credit_ledger WHERE kind = 'reserve'});
my $sent_pages = 0;
$sent_pages += $kind{$_} eq 'pdf2' ? 2 : 1 for @sent;
is($reserved, $sent_pages, 'the reservations are the submitted rows\' pages');
cmp_ok($grant - $reserved, '<', 2, '... which took all but at most a credit of the grant');

# Events: one per recorded row, in the outbox with the change.
is(sq(q{SELECT count(*) FROM docextract.events e JOIN docextract.extractions x ON x.id = e.extraction_id
	WHERE e.event = 'extraction.failed' AND x.target_table = 'public.inbox'::regclass}), $bad,
	'an extraction.failed event per bad row');
is(sq(q{SELECT count(*) FROM docextract.events e WHERE e.event = 'extraction.insufficient_credits'}), scalar(@short),
	'an extraction.insufficient_credits event per row short of credits');

# -- everything drains: the good rows complete, every status column says it -----------
my $t1 = time;
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM docextract.extractions
	WHERE status IN ('pending', 'processing', 'retrying') OR writeback_due IS NOT NULL}, 't')
  or die 'the extractions did not drain';
diag(sprintf('drained %d extractions and %d write-backs in %.1f s', scalar(@sent), $rows, time - $t1));
is(sq(q{SELECT count(*) FROM public.inbox i JOIN docextract.extractions x
	ON x.target_table = 'public.inbox'::regclass AND x.target_pk = ARRAY[i.id::text]
	WHERE i.state IS NOT DISTINCT FROM x.status}), $rows, "every row's status column holds its extraction's status");
is(sq(q{SELECT count(*) FROM public.inbox WHERE state = 'completed'
	AND jsonb_typeof(extracted->'general') = 'object'}), scalar(@sent), 'every submitted row completed, its result written back');
is(sq(q{SELECT count(*) FROM public.inbox WHERE state = 'failed'}), $bad, 'the bad rows say failed');
is(sq(q{SELECT count(*) FROM public.inbox WHERE state = 'insufficient_credits'}), scalar(@short),
	'the rows short of credits say insufficient_credits');

# Nothing charged twice: one charge per completed extraction, its pages; the
# account adds up.
is(sq(q{SELECT count(*) FROM (SELECT extraction_id, kind FROM docextract.credit_ledger
	WHERE extraction_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) s}), '0', 'no extraction has two entries of a kind');
is(sq(q{SELECT sum(credits) FROM docextract.credit_ledger WHERE kind = 'charge'}), $sent_pages,
	'charged: the submitted rows\' pages, once');
is(sq(q{SELECT balance || ' ' || reserved FROM docextract.credit_accounts WHERE role = 'app'::regrole}),
	($grant - $sent_pages) . ' 0', 'the account: the grant less the charges, nothing held');

# get_result and extraction_status say why.
my $id = sq(q{SELECT id FROM docextract.extractions WHERE target_pk = '{7}'});
my $r = decode_json(sq("SET ROLE app; SELECT docextract.get_result('$id')"));
is($r->{status} . ' ' . $r->{error_message},
	'failed document "inbox/7" is not a PDF, JPEG, PNG, HEIC or HEIF file (its first bytes are 0x6e6f74206120646f)',
	'get_result: failed, with the reason');
my $s = decode_json(sq("SET ROLE app; SELECT docextract.extraction_status('$id')"));
is("$s->{status} $s->{credits_used} $s->{credits_reserved}", 'failed 0 0', 'extraction_status: failed, nothing charged');
is(sq(qq{SET ROLE other; SELECT count(*) FROM docextract.documents WHERE rejection IS NOT NULL}), '0',
	"another role sees none of app's rejected records");

# -- a template the inserting role cannot see ---------------------------------------
sq('GRANT CREATE ON SCHEMA public TO other');
sq(q{SET ROLE other;
	CREATE TABLE public.shared (id int PRIMARY KEY, doc bytea, state text);
	GRANT SELECT, INSERT, UPDATE ON public.shared TO app;
	SELECT docextract.create_template('private', '{"general_part": {"n": {"name": "N", "format_type": "text"}}}');
	CREATE TRIGGER shared_extract AFTER INSERT ON public.shared FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document('private', 'doc', '', 'state')});
sq(q{SET ROLE app; INSERT INTO public.shared SELECT g, i.doc FROM public.inbox i, generate_series(1, 3) g WHERE i.id = 1});
is(sq(q{SELECT string_agg(status || ': ' || error_message, ', ') FROM docextract.extractions
	WHERE target_table = 'public.shared'::regclass}),
	join(', ', ('failed: template "private" does not exist') x 3), "another role's template: the rows fail, with why");
$node->poll_query_until('postgres', q{SELECT count(*) = 3 FROM public.shared WHERE state = 'failed'})
  or die 'no write-back of the failed rows';
pass('... and their status columns say failed');
is(sq(q{SELECT count(*) FROM docextract.credit_ledger l JOIN docextract.extractions x ON x.id = l.extraction_id
	WHERE x.target_table = 'public.shared'::regclass}), '0', '... reserving nothing');

# -- NOTIFY: a recorded row is announced at commit ---------------------------------
($rc, $out, $err) = $node->psql('postgres',
	q{LISTEN docextract; SET ROLE app; INSERT INTO public.inbox (id, doc) VALUES (20001, '\x00'); SELECT 1});
like($out, qr/"event" : "extraction.failed".*"status" : "failed"/, 'the failed row is sent by NOTIFY');

# -- a deactivated template: 55000 "is deactivated", not "does not exist" -----------
my $retired = sq(qq{SELECT docextract.create_system_template('retired', '$DxTest::INVOICE_SCHEMA')});
sq(qq{SELECT docextract.set_template_active('$retired', false);
	CREATE TABLE public.retired (id int PRIMARY KEY, doc bytea, state text);
	GRANT SELECT, INSERT, UPDATE ON public.retired TO app;
	CREATE TRIGGER retired_extract AFTER INSERT ON public.retired FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document('retired', 'doc', '', 'state')});
sq(q{SET ROLE app; INSERT INTO public.retired SELECT 1, doc FROM public.inbox WHERE id = 1});
is(sq(q{SELECT status || ': ' || error_message FROM docextract.extractions
	WHERE target_table = 'public.retired'::regclass}),
	'failed: template "retired" is deactivated', 'record: a row naming a deactivated template fails, saying so');
($rc, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SET ROLE app; SET docextract.trigger_errors = 'raise';
	INSERT INTO public.retired SELECT 2, doc FROM public.inbox WHERE id = 1});
like($err, qr/ERROR:  55000: trigger "retired_extract" on table "retired": template "retired" is deactivated/,
	'raise: 55000, the template is deactivated');
is(sq('SELECT count(*) FROM public.retired'), '1', '... and the row is not stored');

# -- a PDF that crashes the parser, or outlives docextract.parser_timeout -----------
# Under 'record' that row fails with the reason and the others go on; under
# 'raise' the statement fails with 22023.
sq(q{CREATE TABLE public.parsed (id int PRIMARY KEY, doc bytea, state text);
	GRANT SELECT, INSERT, UPDATE ON public.parsed TO app;
	CREATE TRIGGER parsed_extract AFTER INSERT ON public.parsed FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document('invoice', 'doc', '', 'state');
	SELECT docextract.grant_credits('app', 10);});
my $parsed_copy = "$PostgreSQL::Test::Utils::tmp_check/parsed.copy";
open($fh, '>', $parsed_copy) or die;
print $fh "$_\t\\\\x" . ($_ % 2 ? $png : $pdf2) . "\n" for 1 .. 4;
close $fh;
chmod 0644, $parsed_copy;
($rc, $out, $err) = $node->psql('postgres', qq{\\set VERBOSITY verbose
	SET docextract.parser_fault = 'crash'; SET ROLE app; SET docextract.trigger_errors = 'raise';
	COPY public.parsed (id, doc) FROM '$parsed_copy'});
like($err, qr/ERROR:  22023: could not parse document "parsed\/2": the parser was killed by signal 11/,
	'raise: a PDF that crashes the parser fails the COPY with 22023');
is(sq('SELECT count(*) FROM public.parsed'), '0', '... storing nothing');
sq(qq{SET docextract.parser_fault = 'crash'; SET ROLE app; COPY public.parsed (id, doc) FROM '$parsed_copy'});
is(sq(q{SELECT string_agg(x.target_pk[1] || ' ' || x.status || ' ' || coalesce(x.error_message, ''), E'\n'
	ORDER BY x.target_pk[1]) FROM docextract.extractions x WHERE x.target_table = 'public.parsed'::regclass
	AND x.status = 'failed'}),
	join("\n", map { qq{$_ failed could not parse document "parsed/$_": the parser was killed by signal 11} } 2, 4),
	'record: the COPY goes through, each PDF that crashed the parser failed with the reason');
$node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM public.parsed WHERE id IN (1, 3) AND state = 'completed'})
  or die 'the other rows of the COPY did not complete';
pass('... and the other rows complete');
sq(qq{SET docextract.parser_fault = 'hang'; SET docextract.parser_timeout = '1s'; SET ROLE app;
	INSERT INTO public.parsed SELECT 6, doc FROM public.inbox WHERE id = 50});
is(sq(q{SELECT status || ': ' || error_message FROM docextract.extractions WHERE target_pk = '{6}'
	AND target_table = 'public.parsed'::regclass}),
	'failed: could not parse document "parsed/6": the parser took longer than docextract.parser_timeout (1000 ms)',
	'record: a PDF past docextract.parser_timeout fails its row, saying so');
$node->poll_query_until('postgres', q{SELECT count(*) = 3 FROM public.parsed WHERE state = 'failed'})
  or die 'no write-back of the failed rows';
pass('... and the status columns of the failed rows say failed');

done_testing();
