# The write-back worker writes one owner's due write-backs back in batches:
# leased together in one transaction, run together in another, each in a
# subtransaction of its own: the rows of a batch are written by one
# transaction, never with another role's.  One row's failing trigger fails
# that row only, and what a trigger leaves in the transaction (an open
# cursor) or would (SET CONSTRAINTS) does not reach the next row's; a lock
# met in a batch loses nothing; a deferred trigger of a role's never runs at
# the worker's commit (with the worker's rights).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server(delay_ms => 0);
my $node = new_node('wbbatch', conf => "docextract.writeback_timeout = '60s'\n"
	  . "docextract.writeback_lock_timeout = '200ms'\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }
my $pdf = fixture('invoice.pdf');
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE TABLE public.fixture AS SELECT pg_read_binary_file('$pdf') AS pdf;
	GRANT SELECT ON public.fixture TO PUBLIC;
	CREATE TABLE public.go (x int); GRANT SELECT ON public.go TO PUBLIC;});
sq(qq{SELECT docextract.create_system_template('invoice', '$DxTest::INVOICE_SCHEMA')});
for my $role (qw(gate bulk nester deferrer stubborn))
{
	sq(qq{CREATE ROLE $role LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO $role;
		SELECT docextract.grant_credits('$role', 1000);
		SET ROLE $role;
		CREATE TABLE public.${role}_docs (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
		CREATE TRIGGER extract AFTER INSERT ON public.${role}_docs FOR EACH ROW
		  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state');});
}

# gate's write-back waits (polling, not on a lock) until the test fills public.go:
# while it runs, bulk's rows complete and all become due.
sq(q{SET ROLE gate;
	CREATE TABLE public.gate_log (xact text);
	CREATE FUNCTION public.gate_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  INSERT INTO public.gate_log VALUES (pg_current_xact_id()::text);
	  WHILE NOT EXISTS (SELECT 1 FROM public.go) LOOP PERFORM pg_sleep(0.02); END LOOP;
	  RETURN NULL;
	END $f$;
	CREATE TRIGGER gate AFTER UPDATE ON public.gate_docs FOR EACH ROW EXECUTE FUNCTION public.gate_trigger();});
# bulk's rows say which transaction wrote them back (its top-level xid: each
# write-back is a subtransaction).  Its trigger leaves a cursor open (the
# next write-back's OPEN of it would fail), row 5 cannot be written (the
# trigger refuses it), and row 7's trigger tries SET CONSTRAINTS, whose
# effect would outlive its write-back.
sq(q{SET ROLE bulk;
	ALTER TABLE public.bulk_docs ADD COLUMN written_by text;
	CREATE FUNCTION public.bulk_refuse() RETURNS trigger LANGUAGE plpgsql AS $f$
	DECLARE
	  left_open CURSOR FOR SELECT 1;
	BEGIN
	  OPEN left_open;
	  IF NEW.id = 5 THEN RAISE EXCEPTION 'row 5 refused'; END IF;
	  IF NEW.id = 7 THEN SET CONSTRAINTS ALL DEFERRED; END IF;
	  NEW.written_by := pg_current_xact_id()::text;
	  RETURN NEW;
	END $f$;
	CREATE TRIGGER refuse BEFORE UPDATE ON public.bulk_docs FOR EACH ROW EXECUTE FUNCTION public.bulk_refuse();});

sub wb_waits_on
{
	my ($what) = @_;
	$node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity
		WHERE backend_type = 'docextract write-back worker' AND $what})
	  or die "the write-back worker never waited on $what";
}

sub hold_gate
{
	sq(q{TRUNCATE public.go; SET ROLE gate; INSERT INTO public.gate_docs (pdf) SELECT pdf FROM public.fixture});
	wb_waits_on(q{wait_event = 'PgSleep'});
}

sub bulk_due
{
	my ($n) = @_;
	$node->poll_query_until('postgres', qq{SELECT count(*) = $n FROM docextract.extractions
		WHERE owner = 'bulk'::regrole AND status = 'completed' AND writeback_due IS NOT NULL})
	  or die "bulk's $n extractions never completed";
}

# -- ten due write-backs of one owner: a batch -------------------------------------
hold_gate();
sq(q{SET ROLE bulk; INSERT INTO public.bulk_docs (pdf) SELECT pdf FROM public.fixture, generate_series(1, 10)});
bulk_due(10);
sq('INSERT INTO public.go VALUES (1)');
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM docextract.extractions
	WHERE owner = 'bulk'::regrole AND writeback_due IS NOT NULL}) or die "bulk's write-backs never ended";
is(sq(q{SELECT count(*) FROM public.bulk_docs WHERE state = 'completed' AND extracted IS NOT NULL}), '8',
	'eight of ten rows written back, each finding no cursor left open by the one before');
my $most = sq(q{SELECT max(n) FROM (SELECT count(*) AS n FROM public.bulk_docs
	WHERE state = 'completed' GROUP BY written_by) t});
cmp_ok($most, '>=', 2, "... one transaction wrote several of them ($most), not one each");
note('transactions: ' . sq(q{SELECT count(DISTINCT written_by) FROM public.bulk_docs WHERE state = 'completed'}));
is(sq(q{SELECT count(*) FROM public.bulk_docs b JOIN public.gate_log g ON g.xact = b.written_by}), '0',
	'... none of them with the other role\'s write-backs');
is(sq(q{SELECT count(*) FROM public.bulk_docs WHERE id IN (5, 7) AND state IS NULL}), '2',
	'... rows 5 and 7 not written');
like(sq(q{SELECT e.writeback_error FROM docextract.extractions e
	WHERE e.target_table = 'public.bulk_docs'::regclass AND e.target_pk = ARRAY['5']}),
	qr/row 5 refused/, '... row 5 says its trigger refused it');
like(sq(q{SELECT e.writeback_error FROM docextract.extractions e
	WHERE e.target_table = 'public.bulk_docs'::regclass AND e.target_pk = ARRAY['7']}),
	qr/cannot execute SET CONSTRAINTS within a docextract write-back/, '... row 7 that SET CONSTRAINTS is refused');
is(sq(q{SELECT count(*) FROM docextract.extractions WHERE owner = 'bulk'::regrole AND writeback_error IS NOT NULL}),
	'2', '... and no other row has an error');

# -- a lock met in a batch: nothing lost, the rest tried again later -----------------
hold_gate();
sq(q{SET ROLE bulk; INSERT INTO public.bulk_docs (pdf) SELECT pdf FROM public.fixture, generate_series(1, 6)});
bulk_due(6);
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE public.bulk_docs IN SHARE MODE');
sq('INSERT INTO public.go VALUES (1)');
wb_waits_on(q{wait_event_type = 'Lock'});
# The lock is still held: the wait can only end by writeback_lock_timeout.
# Then the batch's rows are given back, due a second later (and leased again
# at each try), not left leased for writeback_timeout + 60 s: 120 s here, so
# a batch that kept its leases would fail this poll, cut to 30 s.
{
	local $PostgreSQL::Test::Utils::timeout_default = 30;
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM docextract.extractions
		WHERE owner = 'bulk'::regrole AND writeback_due > clock_timestamp() + interval '30 s'}),
		'a batch that met a lock: its rows are given back, not left leased');
}
$locker->query_safe('COMMIT');
$locker->quit;
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM docextract.extractions
	WHERE owner = 'bulk'::regrole AND writeback_due IS NOT NULL}) or die "bulk's write-backs never ended";
is(sq(q{SELECT count(*) FROM public.bulk_docs WHERE id > 10 AND state = 'completed' AND extracted IS NOT NULL}),
	'6', '... all six written back once it was free');
is(sq(q{SELECT count(*) FROM docextract.extractions WHERE owner = 'bulk'::regrole AND writeback_error IS NOT NULL}),
	'2', '... with no error recorded for them');

# -- triggers that take subtransactions: a batch ends at 32 of them ------------------
# Each write-back is a subtransaction with an xid, and this trigger takes 7
# more (blocks with an exception handler, each writing): 8 a row, so a batch
# ends after 4 rows, before its transaction advertises more than the 64
# subtransactions a backend's snapshot entry holds.
sq(q{SET ROLE nester;
	CREATE TABLE public.nester_log (n int);
	ALTER TABLE public.nester_docs ADD COLUMN written_by text;
	CREATE FUNCTION public.nester_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  FOR i IN 1 .. 7 LOOP
	    BEGIN INSERT INTO public.nester_log VALUES (i); EXCEPTION WHEN OTHERS THEN NULL; END;
	  END LOOP;
	  NEW.written_by := pg_current_xact_id()::text;
	  RETURN NEW;
	END $f$;
	CREATE TRIGGER nest BEFORE UPDATE ON public.nester_docs FOR EACH ROW EXECUTE FUNCTION public.nester_trigger();});
hold_gate();
sq(q{SET ROLE nester; INSERT INTO public.nester_docs (pdf) SELECT pdf FROM public.fixture, generate_series(1, 12)});
$node->poll_query_until('postgres', q{SELECT count(*) = 12 FROM docextract.extractions
	WHERE owner = 'nester'::regrole AND status = 'completed' AND writeback_due IS NOT NULL})
  or die "nester's extractions never completed";
sq('INSERT INTO public.go VALUES (1)');
$node->poll_query_until('postgres', q{SELECT count(*) = 12 FROM public.nester_docs WHERE state = 'completed'})
  or die "nester's rows never written back";
cmp_ok(sq(q{SELECT max(n) FROM (SELECT count(*) AS n FROM public.nester_docs GROUP BY written_by) t}), '<=', 4,
	'write-backs whose triggers take 7 subtransactions each: at most 4 a batch');

# -- a deferred trigger would run at the batch's commit, as the worker ---------------
sq(q{SET ROLE deferrer;
	CREATE TABLE public.deferrer_seen (who text, super boolean);
	CREATE FUNCTION public.deferrer_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  INSERT INTO public.deferrer_seen SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
	  BEGIN EXECUTE 'ALTER ROLE deferrer SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
	  RETURN NULL;
	END $f$;
	CREATE CONSTRAINT TRIGGER deferred AFTER UPDATE ON public.deferrer_docs DEFERRABLE INITIALLY DEFERRED
	  FOR EACH ROW EXECUTE FUNCTION public.deferrer_trigger();
	INSERT INTO public.deferrer_docs (pdf) SELECT pdf FROM public.fixture;});
$node->poll_query_until('postgres', q{SELECT status = 'completed' AND writeback_due IS NULL
	FROM docextract.extractions WHERE owner = 'deferrer'::regrole}) or die "deferrer's write-back never ended";
like(sq(q{SELECT writeback_error FROM docextract.extractions WHERE owner = 'deferrer'::regrole}),
	qr/deferred trigger/, 'a deferred trigger on the table: the write-back fails');
is(sq(q{SELECT count(*) FROM public.deferrer_seen}), '0', '... the trigger never ran');
is(sq(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'deferrer'}), 'f', '... and the role is no superuser');
is(sq(q{SELECT count(*) FROM public.deferrer_docs WHERE state IS NOT NULL}), '0', '... nor is its row written');

# -- a batch whose trigger stops the worker: the rest of it is due again at once ------
# Row 1's trigger catches the cancel and goes on, so the worker is stopped;
# row 2 shares its batch (both due while gate's write-back is held).  The
# timeout is lowered while gate's write-back runs (its own was armed with
# the old one); the worker reads it before its next batch.
sq(q{SET ROLE stubborn;
	CREATE FUNCTION public.stubborn_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  IF NEW.id = 1 THEN
	    LOOP
	      BEGIN PERFORM pg_sleep(100); EXCEPTION WHEN query_canceled THEN NULL; END;
	    END LOOP;
	  END IF;
	  RETURN NULL;
	END $f$;
	CREATE TRIGGER stubborn AFTER UPDATE ON public.stubborn_docs FOR EACH ROW
	  EXECUTE FUNCTION public.stubborn_trigger();});
my $wb_before = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract write-back worker'});
hold_gate();
sq(q{SET ROLE stubborn; INSERT INTO public.stubborn_docs (pdf) SELECT pdf FROM public.fixture, generate_series(1, 2)});
$node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM docextract.extractions
	WHERE owner = 'stubborn'::regrole AND status = 'completed' AND writeback_due IS NOT NULL})
  or die "stubborn's extractions never completed";
my $loaded = sq('SELECT pg_conf_load_time()');
sq(q{ALTER SYSTEM SET docextract.writeback_timeout = '300ms'; SELECT pg_reload_conf()});
# A new session starts with the postmaster's load time: the postmaster has
# reloaded, and has signalled its children, the write-back worker among them.
$node->poll_query_until('postgres', qq{SELECT pg_conf_load_time() > '$loaded'})
  or die 'the configuration was never reloaded';
sq('INSERT INTO public.go VALUES (1)');
$node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'docextract write-back worker' AND pid <> $wb_before})
  or die 'the write-back worker was not stopped';
{
	# Left leased, row 2 would wait writeback_timeout + 60 s.
	local $PostgreSQL::Test::Utils::timeout_default = 30;
	ok($node->poll_query_until('postgres', q{SELECT state = 'completed' FROM public.stubborn_docs WHERE id = 2}),
		'a trigger stopped the worker in a batch: the batch\'s other row is written back soon after the restart');
}
like(sq(q{SELECT writeback_error FROM docextract.extractions e
	WHERE e.target_table = 'public.stubborn_docs'::regclass AND e.target_pk = ARRAY['1']}),
	qr/ignored the cancel/, '... and the row whose trigger stopped it says why');

$node->stop;
done_testing();
