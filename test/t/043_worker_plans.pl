# The workers' plans.  The job worker plans each statement once (force_generic_plan)
# and keeps the plan until an ANALYZE of the table replans it: on a new
# install that is while the tables are small, when a sequential scan is the
# cheaper plan.  Kept, that scan would read every row of a growing table on
# every wake (the backlog drained at 2,600/s with 2,000 rows stored and at
# 1,750/s with 12,000: doc/benchmarks.md).  Here auto_explain logs every
# plan the worker runs on a new, small database: none reads a table whole.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server();
my $node = new_node('worker_plans', conf => q{
shared_preload_libraries = 'docextract,auto_explain'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
log_line_prefix = '%m [%p] %b: '
});
sub sq { return $node->safe_psql('postgres', $_[0]); }
# The log's entries from an offset (an entry's plan is on the lines after
# its prefix), without a last line the server may still be writing.
sub log_entries
{
	my $text = substr(slurp_file($node->logfile), $_[0]);
	$text =~ s/[^\n]*\z//;
	return split /^(?=\S+ \S+ UTC \[\d+\] )/m, $text;
}

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model')});
my $tid = add_invoice_template($node);
my $doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");
my $log_from = -s $node->logfile;

# Forty jobs in four commits: claims, stores and their triggers, each
# planned while the tables hold a few dozen rows.
for my $round (0 .. 3)
{
	sq(join('', map { "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": "
		. (10 * $round + $_) . "}');" } 1 .. 10));
}
$node->poll_query_until('postgres', q{SELECT count(*) = 40 FROM docextract.extractions
	WHERE status IN ('completed', 'failed')}) or die 'the jobs never ended';
is(sq("SELECT count(*) FROM docextract.extractions WHERE status = 'completed'"), '40', 'forty jobs complete');

# The log's entries (an entry's plan is on the lines after its prefix),
# those of the job worker.
my @entries = log_entries($log_from);
my @worker = grep { /^\S+ \S+ UTC \[\d+\] docextract worker: LOG:  duration: .* plan:/ } @entries;
cmp_ok(scalar @worker, '>=', 20, scalar(@worker) . ' plans of the job worker logged');
ok((grep { /docextract\.extractions|on extractions\b/ && /Index (Only )?Scan/ } @worker),
	'... its claims and stores among them, reading the queue by index');
# models and webhooks hold settings, a row per model or webhook: read whole.
my %settings = map { $_ => 1 } qw(models webhooks);
my @scans = grep { !$settings{$_} } map { /Seq Scan on (\w+)/g } @worker;
is(join(', ', @scans), '', 'none reads a table of the queue or its history whole (no Seq Scan)');

# -- after an ANALYZE of a long history ----------------------------------------------
# Loaded finished (no reservation, no event: as a restore loads them) and
# analyzed with none processing, the table makes the planner estimate the
# jobs in flight (extractions_in_flight) at a row.  A batch store that
# tested e.status = 'processing' then started from that index and looked up
# every job in flight for each batch, 7.6 times the lookups of its own jobs
# at 1M rows stored (bench/history.sh).  Its plans start from the batch.
# The statements that find one row by its id and test its status (a
# classification's, one awaiting a pick, a job with citations stored alone,
# a split's parent, a sync retry) go by the primary key too, not through
# that status's partial index.
sq(qq{INSERT INTO docextract.extractions (document_id, template_id, model_name, owner, status,
		attempts, completion_percentage, completed_at)
	SELECT '$doc', '$tid', 'default', current_user::regrole, 'completed', 1, 100, now() FROM generate_series(1, 20000);
	ANALYZE docextract.extractions});
# With docextract.retention set, each poll looks for ended extractions past
# it (here none: all ended now).
sq(q{ALTER SYSTEM SET docextract.retention = '30d'; ALTER SYSTEM SET docextract.poll_interval = '200ms';
	SELECT pg_reload_conf()});
$log_from = -s $node->logfile;
for my $round (0 .. 3)
{
	sq(join('', map { "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": "
		. (100 + 10 * $round + $_) . "}');" } 1 .. 10));
}
sq(join('', map { "SELECT docextract.extract_document('$doc', NULL, '{\"force\": true, \"seed\": $_}');"
	. "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"citations\": true, \"seed\": $_}');" }
	200 .. 202));
$node->poll_query_until('postgres', q{SELECT count(*) = 86 FROM docextract.extractions
	WHERE status IN ('completed', 'failed') AND started_at IS NOT NULL}) or die 'the jobs never ended';
is(sq(q{SELECT count(*) FILTER (WHERE classification->>'chosen_by' IS NOT NULL) || '|'
	|| count(*) FILTER (WHERE options ? 'citations') FROM docextract.extractions
	WHERE status = 'completed' AND (options ? 'citations' OR classification IS NOT NULL)}), '3|3',
	'three classified and three with citations completed');
# A classification that nothing fits, with auto_approve false: it waits for a pick.
server_script($srv, { answer => { general => { template => undef, confidence => 0 } } });
my $review = sq("SELECT docextract.extract_document('$doc', NULL, '{\"force\": true, \"auto_approve\": false, \"seed\": 300}')");
is(wait_for_status($node, $review, 'awaiting_approval', 'completed', 'failed'), 'awaiting_approval',
	'... and one that nothing fits awaits a pick');
# A split (its sub-documents' ends lock the parent: split_follow), and an
# extract_sync whose first answer is a 503 (its retry, in its own worker).
my $three = sq("SELECT docextract.add_document('three.pdf', pg_read_binary_file('" . fixture('three-invoices.pdf') . "'))");
my $split = sq("SELECT docextract.extract_document('$three', '$tid', '{\"split\": true}')");
is(wait_for_status($node, $split, 'completed', 'failed'), 'completed', '... a split completes');
sq(qq{SELECT docextract.add_model('quick', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	'{"max_retries": 1, "retry_backoff_ms": 100}')});
server_script($srv, { status => 503, body => '{"error": {"message": "overloaded"}}' });
is(json_of(sq("SELECT docextract.extract_sync(pg_read_binary_file('" . fixture('invoice.pdf') . "'), '$tid',
	'{\"model\": \"quick\"}')"))->{status}, 'completed', '... and an extract_sync retried after a 503');
my $cleanup = qr/Query Text: DELETE FROM docextract\.extractions e WHERE e\.id IN/;
$node->wait_for_log($cleanup, $log_from);
@entries = log_entries($log_from);
my @cleanups = grep { /$cleanup/ } @entries;
is(join(', ', map { /Seq Scan on (\w+)/g } @cleanups), '',
	scalar(@cleanups) . ' retention passes logged: none reads the extractions whole to find what ended before it');
sq(q{ALTER SYSTEM RESET docextract.retention; ALTER SYSTEM RESET docextract.poll_interval; SELECT pg_reload_conf()});
my @stores = grep { /^\S+ \S+ UTC \[\d+\] docextract worker: LOG:  duration: .* plan:/
	&& /Update on extractions e/ && /Insert on results/ } @entries;
cmp_ok(scalar @stores, '>=', 1, scalar(@stores) . ' plans of batch stores logged after the ANALYZE');
is(scalar(grep { /extractions_in_flight/ } @stores), 0,
	'... none reads extractions_in_flight: each finds its jobs by their ids');
my @plans = grep { /^\S+ \S+ UTC \[\d+\] docextract[^:]*: LOG:  duration: .* plan:/ } @entries;
my @by_status = map { /(Scan using (?:extractions_(?:in_flight|classifying|retry_due|queue|ended)|webhook_deliveries_due) .*\n(?:(?!.*->).*\n)*)/g } @plans;
is(join('', grep { /Filter: .*\b(?:event_)?id = / } @by_status), '',
	'no row found by its id (or event) is looked for through a partial index of its status');
# The job worker's (extract_sync's worker plans as a session does, with its
# settings): the polls' fold of worker_stats' deltas takes them all.
@worker = grep { /^\S+ \S+ UTC \[\d+\] docextract worker: / } @plans;
@scans = grep { !$settings{$_} && $_ ne 'model_stat_deltas' } map { /Seq Scan on (\w+)/g } @worker;
is(join(', ', @scans), '', scalar(@worker) . ' plans of the job worker after the ANALYZE: none reads a table whole');

# -- the write-back worker ----------------------------------------------------------
# Its own statements (lease, outcome, the next due write-back) are kept
# plans too; the write-backs themselves (a role's UPDATE of its table, and
# its triggers) are planned as that role's code, with its settings.
sq("SELECT docextract.create_system_template('invoice', '$DxTest::INVOICE_SCHEMA');
	CREATE TABLE public.fixture AS SELECT pg_read_binary_file('" . fixture('invoice.pdf') . "') AS pdf;
	GRANT SELECT ON public.fixture TO PUBLIC");
sq(q{CREATE ROLE filer LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO filer;
	SELECT docextract.grant_credits('filer', 1000);
	SET ROLE filer;
	CREATE TABLE public.filed (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
	CREATE TRIGGER extract AFTER INSERT ON public.filed FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state');
	CREATE TABLE public.filed_settings (enable_seqscan text);
	CREATE FUNCTION public.filed_note() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  INSERT INTO public.filed_settings VALUES (current_setting('enable_seqscan'));
	  RETURN NULL;
	END $f$;
	CREATE TRIGGER note AFTER UPDATE ON public.filed FOR EACH ROW EXECUTE FUNCTION public.filed_note();});
$log_from = -s $node->logfile;
for my $round (0 .. 3)
{
	sq('SET ROLE filer; INSERT INTO public.filed (pdf) SELECT f.pdf FROM public.fixture f, generate_series(1, 10)');
}
$node->poll_query_until('postgres', q{SELECT count(*) = 40 FROM public.filed WHERE state = 'completed'})
	or die 'the rows were never written back';
@entries = log_entries($log_from);
my @writer = grep { /^\S+ \S+ UTC \[\d+\] docextract write-back worker: LOG:  duration: .* plan:/ } @entries;
my @own = grep { /docextract\.extractions|on extractions\b/ } @writer;
cmp_ok(scalar @own, '>=', 10, scalar(@own) . ' plans of the write-back worker\'s own statements logged');
@scans = grep { !$settings{$_} } map { /Seq Scan on (\w+)/g } @own;
is(join(', ', @scans), '', '... none reads a table of the queue whole');
# The role's write-back and its triggers run with the configured settings.
is(sq('SELECT count(*) >= 40, string_agg(DISTINCT enable_seqscan, \',\') FROM public.filed_settings'), 't|on',
	"the role's triggers see enable_seqscan as configured (on) in every write-back");

$node->stop;
done_testing();
