# One notifying commit per turn of the worker's loop (issue 12): the
# transaction that stores a turn's answers also claims the jobs their model
# slots make room for, so a job's extraction.started is committed (and
# NOTIFYed) with the previous job's extraction.completed, not in a commit of
# its own.  Observed through the outbox: rows stored by one transaction share
# its xmin.  With max_concurrency 1 every claim after the first follows an
# answer.  A batch whose store fails takes its claim back with it: the
# claimed job is claimed again apart, nothing is lost or started twice.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $n = 8;
my $srv = start_model_server();
my $node = new_node('turn_commit', conf => "docextract.workers = 1\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }

# One request a job (no line items), one request at a time.
my $schema = encode_json({ general_part => {
	invoice_number => { name => 'Invoice Number', format_type => 'text', position => 1 } } });
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	'{"max_concurrency": 1, "max_retries": 0}')});
my $tid = sq(qq{SELECT docextract.create_template('one_part', '$schema')});
my $pdf = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('"
	  . fixture('invoice.pdf') . "'))");

# The i-th job submitted (1-based), in public.submitted.
sq(q{CREATE TABLE public.submitted (i int PRIMARY KEY, id uuid NOT NULL)});
sub submit_all
{
	sq(qq{TRUNCATE public.submitted;
		INSERT INTO public.submitted
		SELECT i, docextract.extract_document('$pdf', '$tid', '{"force": true}')
		  FROM generate_series(1, $n) i;});
	$node->poll_query_until('postgres', q{SELECT bool_and(e.status IN ('completed', 'failed'))
		FROM public.submitted s JOIN docextract.extractions e ON e.id = s.id})
	  or die 'the extractions did not end';
}

# How many of this round's extraction.started rows were stored by a
# transaction that stored an extraction.completed too.
my $with_completed = q{SELECT count(*) FROM docextract.events st
	JOIN public.submitted s ON s.id = st.extraction_id
	WHERE st.event = 'extraction.started'
	  AND EXISTS (SELECT 1 FROM docextract.events c
	               WHERE c.event = 'extraction.completed' AND c.xmin = st.xmin)};

submit_all();
is(sq(q{SELECT count(*) FROM public.submitted s JOIN docextract.extractions e ON e.id = s.id
	WHERE e.status = 'completed'}), $n, "$n jobs complete, one at a time");
is(sq($with_completed), $n - 1,
	'every claim after the first is committed with the store of the answer before it');
is(sq(q{SELECT count(DISTINCT st.xmin::text) FROM docextract.events st
	JOIN public.submitted s ON s.id = st.extraction_id WHERE st.event = 'extraction.started'}), $n,
	'... one job a claim (max_concurrency 1)');

# A store that fails (a superuser's trigger refuses job 3's result) rolls
# its claim back too: job 4 is claimed again, apart; job 3 fails alone.
sq(q{CREATE TABLE public.poison (i int PRIMARY KEY);
	INSERT INTO public.poison VALUES (3);
	CREATE FUNCTION public.refuse_poisoned() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	    IF EXISTS (SELECT 1 FROM public.poison p JOIN public.submitted s USING (i)
	                WHERE s.id = NEW.extraction_id) THEN
	        RAISE EXCEPTION 'planted failure storing the result of %', NEW.extraction_id;
	    END IF;
	    RETURN NEW;
	END $$;
	CREATE TRIGGER refuse_poisoned BEFORE INSERT ON docextract.results
	    FOR EACH ROW EXECUTE FUNCTION public.refuse_poisoned();});
submit_all();
is(sq(q{SELECT string_agg(e.status, ',' ORDER BY s.i) FROM public.submitted s
	JOIN docextract.extractions e ON e.id = s.id}),
	join(',', map { $_ == 3 ? 'failed' : 'completed' } 1 .. $n),
	'a failed store fails its own job only');
is(sq(q{SELECT count(*) FROM public.submitted s
	WHERE (SELECT string_agg(v.event, ',' ORDER BY v.id) FROM docextract.events v
	        WHERE v.extraction_id = s.id) !~ '^extraction.queued,extraction.started,extraction.(completed|failed)$'}),
	'0', '... every job has its three events, none twice (no job claimed twice)');
is(sq(q{SELECT count(*) FROM docextract.events st JOIN public.submitted s ON s.id = st.extraction_id
	WHERE s.i = 4 AND st.event = 'extraction.started'
	  AND EXISTS (SELECT 1 FROM docextract.events c WHERE c.xmin = st.xmin AND c.event <> 'extraction.started')}),
	'0', '... the job claimed with the failed store was claimed again in a transaction of its own');
is(scalar(grep { $_->{path} =~ m{/chat/completions} } @{ server_requests($srv) }), 2 * $n,
	'one request per job: none sent twice');
is(server_stats($srv)->{max_inflight}, 1, 'never more than one request at a time (max_concurrency)');

done_testing();
