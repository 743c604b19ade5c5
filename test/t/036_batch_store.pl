# The worker stores the answers of one wake as a batch (src/batch_finish.c):
# one transaction, one statement for every job.  Whatever the batches turn
# out to be, the outcome must be each job's own: a job whose result cannot be
# stored fails alone, with why; the others complete; every status change has
# exactly one outbox row and (but extraction.queued) one NOTIFY; credits are
# charged or released once each; the counters agree.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $n = 12;
my $srv = start_model_server();
my $node = new_node('batch', credits => 'enforce', conf => "docextract.max_inflight = 16\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE ROLE alice LOGIN; GRANT pg_read_server_files TO alice;
	GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO alice;
	SELECT docextract.grant_credits('alice', 1000, 'test');});
my $tid = add_invoice_template($node, 'alice');
my $pdf = sq("SET ROLE alice; SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('"
	  . fixture('invoice.pdf') . "'))");

# A superuser's trigger refuses to store the result of the extractions named
# in public.poison: that job's storing fails, inside whatever batch it is in.
sq(q{CREATE TABLE public.poison (id uuid PRIMARY KEY);
	CREATE TABLE public.submitted (i int PRIMARY KEY, id uuid NOT NULL);
	GRANT ALL ON public.poison, public.submitted TO alice;
	CREATE FUNCTION public.refuse_poisoned() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	    IF EXISTS (SELECT 1 FROM public.poison p WHERE p.id = NEW.extraction_id) THEN
	        RAISE EXCEPTION 'planted failure storing the result of %', NEW.extraction_id;
	    END IF;
	    RETURN NEW;
	END $$;
	CREATE TRIGGER refuse_poisoned BEFORE INSERT ON docextract.results
	    FOR EACH ROW EXECUTE FUNCTION public.refuse_poisoned();});

# Every credit delta written, with its transaction: a batch's charges are
# one delta per slot, not one per job (settled by the store statement).
sq(q{CREATE TABLE public.delta_log (n serial, xid xid8, slot smallint, balance_delta bigint, reserved_delta bigint);
	GRANT INSERT ON public.delta_log TO PUBLIC; GRANT USAGE ON SEQUENCE public.delta_log_n_seq TO PUBLIC;
	CREATE FUNCTION public.log_delta() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	    INSERT INTO public.delta_log (xid, slot, balance_delta, reserved_delta)
	    VALUES (pg_current_xact_id(), NEW.slot, NEW.balance_delta, NEW.reserved_delta);
	    RETURN NULL;
	END $$;
	CREATE TRIGGER log_delta AFTER INSERT ON docextract.credit_slot_deltas
	    FOR EACH ROW EXECUTE FUNCTION public.log_delta();});

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN docextract');

# Answers held a while, so that they come back close together (batches of
# several; nothing below depends on how they are grouped).
server_script($srv, map { { delay_ms => 400 } } 1 .. $n);
sq(qq{SET ROLE alice;
	BEGIN;
	INSERT INTO public.submitted
	SELECT i, docextract.extract_document('$pdf', '$tid', '{"force": true}') FROM generate_series(1, $n) i;
	INSERT INTO public.poison SELECT id FROM public.submitted WHERE i = 5;
	COMMIT;});
my $poisoned = sq('SELECT id FROM public.submitted WHERE i = 5');

$node->poll_query_until('postgres', qq{SELECT count(*) = $n FROM docextract.extractions
	WHERE status IN ('completed', 'failed', 'awaiting_approval', 'cancelled')})
  or die 'the extractions did not end';

is(sq(q{SELECT string_agg(status, ',' ORDER BY s.i) FROM public.submitted s
	JOIN docextract.extractions e ON e.id = s.id WHERE s.i <> 5}),
	join(',', ('completed') x ($n - 1)), 'every other job of the batch completes');
is(sq("SELECT status FROM docextract.extractions WHERE id = '$poisoned'"), 'failed',
	'the job whose result could not be stored fails');
like(sq("SELECT error_message FROM docextract.extractions WHERE id = '$poisoned'"),
	qr/planted failure storing the result of $poisoned/, '... with why');
is(sq('SELECT count(*) FROM docextract.results'), $n - 1, 'one result per completed job');
is(sq("SELECT count(*) FROM docextract.results WHERE extraction_id = '$poisoned'"), '0',
	'... none for the failed one');

# Every status change: one outbox row, in order.
is(sq(q{SELECT count(*) FROM public.submitted s
	WHERE (SELECT string_agg(event, ',' ORDER BY id) FROM docextract.events v WHERE v.extraction_id = s.id)
	    = 'extraction.queued,extraction.started,extraction.completed'}), $n - 1,
	'each completed job has its three events, in order, no more');
is(sq("SELECT string_agg(event, ',' ORDER BY id) FROM docextract.events WHERE extraction_id = '$poisoned'"),
	'extraction.queued,extraction.started,extraction.failed', '... the failed one its three');
is(sq('SELECT count(*) FROM docextract.events'), 3 * $n, 'events = status changes');
is(sq(q{SELECT count(*) FROM docextract.events v JOIN docextract.extractions e ON e.id = v.extraction_id
	WHERE v.payload->>'status' IS DISTINCT FROM
	      CASE v.event WHEN 'extraction.queued' THEN 'pending' WHEN 'extraction.started' THEN 'processing'
	                   ELSE e.status END
	   OR (v.payload->>'extraction_id')::uuid <> v.extraction_id OR (v.payload->>'event_id')::bigint <> v.id
	   OR v.payload->>'event' <> v.event OR (v.payload->>'document_id')::uuid <> e.document_id}), '0',
	"each payload names its own row, status and event");

# One NOTIFY per change but extraction.queued, received at the commits.
$node->poll_query_until('postgres', qq{SELECT count(*) = $n FROM docextract.extractions
	WHERE status IN ('completed', 'failed')}) or die;
my $got = '';
wait_until(sub {
	$got .= $listener->query_safe('SELECT 1');
	my $count = () = $got =~ /"event" : "extraction\./g;
	return $count >= 2 * $n;
}, 'the NOTIFYs');
my %seen;
$seen{$1}++ while $got =~ /"event" : "(extraction\.[a-z_]+)"/g;
is($seen{'extraction.started'}, $n, 'LISTEN: one extraction.started per job');
is($seen{'extraction.completed'}, $n - 1, 'LISTEN: one extraction.completed per completed job');
is($seen{'extraction.failed'}, 1, 'LISTEN: one extraction.failed');
ok(!$seen{'extraction.queued'}, 'LISTEN: no extraction.queued (it is in the outbox only)');
$listener->quit;

# Credits: each reservation charged (completed) or released (failed) once.
is(sq(q{SELECT kind || ':' || count(*) FROM docextract.credit_ledger WHERE role = 'alice'::regrole
	AND kind <> 'grant' GROUP BY kind ORDER BY kind}), "charge:" . ($n - 1) . "\nrelease:1\nreserve:$n",
	'the ledger: a reservation per job, a charge per completed job, a release for the failed one');
is(sq(q{SELECT reserved FROM docextract.credit_accounts WHERE role = 'alice'::regrole}), '0',
	'nothing stays reserved');
my $charges = q{FROM public.delta_log WHERE balance_delta = reserved_delta AND reserved_delta < 0};
is(sq("SELECT -sum(reserved_delta) $charges"), $n - 1, 'the charge deltas add up to the pages charged');

is(sq(q{SELECT count(*) FROM docextract.extractions WHERE credits_reserved <> 0
	OR credits_used <> CASE status WHEN 'completed' THEN 1 ELSE 0 END}), '0',
	'each extraction carries what it was charged');

# The counters: the usage of each stored result and each outcome, once.
# (folded on the worker's polls: the totals are the folded plus the deltas)
is(sq(q{SELECT sum(completed) || ' ' || sum(failed) FROM (
	SELECT completed, failed FROM docextract.model_stats
	UNION ALL SELECT completed, failed FROM docextract.model_stat_deltas) s}), ($n - 1) . ' 1',
	'worker_stats counts 11 completed and 1 failed');
is(sq(q{SELECT sum(latency_n) FROM (SELECT latency_n FROM docextract.model_stats
	UNION ALL SELECT latency_n FROM docextract.model_stat_deltas) s}), $n - 1,
	'... and the usage of each stored result once');
note('results stored per transaction: '
	  . sq('SELECT string_agg(c::text, \' \') FROM (SELECT count(*) c FROM docextract.results GROUP BY xmin::text) s'));

# A batch that stores (nothing poisoned: no job by job): its charges are one
# delta per slot, made by the store statement, not one per job (the row
# trigger).  All in one slot: submitted in one transaction.
my $mark = sq('SELECT coalesce(max(n), 0) FROM public.delta_log');
server_script($srv, map { { delay_ms => 400 } } 1 .. $n);
sq(qq{SET ROLE alice;
	SELECT count(docextract.extract_document('$pdf', '$tid', '{"force": true}')) FROM generate_series(1, $n)});
$node->poll_query_until('postgres', qq{SELECT count(*) = 2 * $n - 1 FROM docextract.extractions WHERE status = 'completed'})
  or die 'the second round did not complete';
is(sq("SELECT -sum(reserved_delta) $charges AND n > $mark"), $n, '... all charged');
is(sq("SELECT count(*) FROM (SELECT 1 $charges AND n > $mark GROUP BY xid, slot HAVING count(*) > 1) x"), '0',
	"a batch's charges: one delta per slot and transaction, not one per job");
diag('jobs charged in one delta, at most: ' . sq("SELECT -min(reserved_delta) $charges AND n > $mark"));
is(sq(q{SELECT reserved FROM docextract.credit_accounts WHERE role = 'alice'::regrole}), '0',
	'... and nothing stays reserved');

done_testing();
