# Users' code never runs with the worker's rights, and cannot stop it.
# The trigger form writes results back into a role's own table, which fires
# that role's own triggers: each attack here is such a trigger.  It runs in
# the write-back worker as its role, in a security-restricted operation,
# bounded by docextract.writeback_timeout / writeback_lock_timeout, and
# leaves nothing behind; locks sessions hold (the role's table, its credit
# row after extract_document or approve, an extraction after
# cancel_extraction) never hold up other roles' work.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use HTTP::Tiny;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server(delay_ms => 0);
my $node = new_node('wbiso', conf => "docextract.max_inflight = 16\n"
	  . "docextract.writeback_timeout = '60s'\ndocextract.writeback_lock_timeout = '200ms'\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }
my $pdf = fixture('invoice.pdf');
my @roles = qw(evil planter good sleepy raiser locker holder slow);
sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE TABLE public.fixture AS SELECT pg_read_binary_file('$pdf') AS pdf;
	GRANT SELECT ON public.fixture TO PUBLIC;}
	. join('', map { "CREATE ROLE $_ LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO $_;" } @roles));
my $tid = sq(qq{SELECT docextract.create_system_template('invoice', '$DxTest::INVOICE_SCHEMA')});

# Each role's own table with the trigger form, and its own extra triggers.
sub make_table
{
	my ($role, $extra) = @_;
	sq(qq{SET ROLE $role;
		CREATE TABLE public.${role}_docs (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
		CREATE TRIGGER extract AFTER INSERT ON public.${role}_docs FOR EACH ROW
		  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state');
		$extra});
}

sub insert_row
{
	my ($role) = @_;
	my $id = sq("SET ROLE $role; INSERT INTO public.${role}_docs (pdf) SELECT pdf FROM public.fixture RETURNING id");
	return sq(qq{SELECT id FROM docextract.extractions
		WHERE target_table = 'public.${role}_docs'::regclass AND target_pk = ARRAY['$id']});
}

sub submit
{
	my ($role, $options) = @_;
	$options //= '{}';
	return sq(qq{SET ROLE $role; SELECT docextract.extract_document(
		docextract.add_document('$role.pdf', pdf), '$tid', '$options') FROM public.fixture});
}

# The model's answer to a held request comes when the test says so.
sub release
{
	server_release($srv, $_[0]);
}

sub pid_of
{
	my ($type) = @_;
	$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = '$type'")
	  or die "no $type";
	return sq("SELECT pid FROM pg_stat_activity WHERE backend_type = '$type'");
}
my $job_worker = pid_of('docextract worker');
my $wb_worker = pid_of('docextract write-back worker');

# -- escalation: a trigger that tries everything from inside the write-back --------
# PostgreSQL refuses temporary tables and types in a security-restricted
# operation, not functions in pg_temp: such a write-back fails, and leaves nothing.
make_table('planter', q{
	CREATE FUNCTION public.planter_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  CREATE FUNCTION pg_temp.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1';
	  RETURN NULL;
	END $f$;
	CREATE TRIGGER planter AFTER UPDATE ON public.planter_docs FOR EACH ROW EXECUTE FUNCTION public.planter_trigger();});
my $p1 = insert_row('planter');
$node->poll_query_until('postgres', qq{SELECT status = 'completed' AND writeback_due IS NULL
	FROM docextract.extractions WHERE id = '$p1'}) or die 'planter: never completed';
is(sq(qq{SELECT writeback_error FROM docextract.extractions WHERE id = '$p1'}),
	'a write-back may not create temporary objects', 'a trigger planting pg_temp functions: that write-back fails');
is(sq(q{SELECT count(*) FROM public.planter_docs WHERE state IS NOT NULL}), '0', '... and writes nothing');

make_table('evil', q{
	CREATE TABLE public.evil_log (n serial, what text, result text);
	CREATE FUNCTION public.evil_try(what text, cmd text) RETURNS void LANGUAGE plpgsql AS $f$
	BEGIN
	  BEGIN
	    EXECUTE cmd;
	    INSERT INTO public.evil_log (what, result) VALUES (what, 'ok');
	  EXCEPTION WHEN OTHERS THEN
	    INSERT INTO public.evil_log (what, result) VALUES (what, SQLSTATE || ': ' || SQLERRM);
	  END;
	END $f$;
	CREATE FUNCTION public.evil_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  -- what this firing finds: its rights, and what earlier firings left
	  INSERT INTO public.evil_log (what, result) VALUES ('seen', format(
	    'user=%s super=%s pid=%s temp=%s listening=%s work_mem=%s advisory=%s prepared=%s path=%s',
	    current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), pg_backend_pid(),
	    pg_my_temp_schema() <> 0, (SELECT count(*) FROM pg_listening_channels()),
	    current_setting('work_mem'),
	    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
	    (SELECT count(*) FROM pg_prepared_statements), current_setting('search_path')));
	  PERFORM public.evil_try('temp table', 'CREATE TEMP TABLE planted (x int)');
	  PERFORM public.evil_try('temp type', 'CREATE DOMAIN pg_temp.text AS pg_catalog.text');
	  PERFORM public.evil_try('superuser', 'ALTER ROLE evil SUPERUSER');
	  PERFORM public.evil_try('reset role', 'RESET ROLE');
	  PERFORM public.evil_try('session authorization', 'SET SESSION AUTHORIZATION DEFAULT');
	  PERFORM public.evil_try('listen', 'LISTEN evil');
	  PERFORM public.evil_try('set', 'SET work_mem = ''1234kB''');
	  PERFORM public.evil_try('set search_path', 'SELECT set_config(''search_path'', ''public'', false)');
	  PERFORM public.evil_try('advisory', 'SELECT pg_advisory_lock(4242)');
	  PERFORM public.evil_try('prepare', 'PREPARE planted AS SELECT 1');
	  RETURN NULL;
	END $f$;
	CREATE TRIGGER evil AFTER UPDATE ON public.evil_docs FOR EACH ROW EXECUTE FUNCTION public.evil_trigger();});
insert_row('evil');
insert_row('evil');
$node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM public.evil_docs WHERE state = 'completed'})
  or die 'evil rows not written back';
my @seen = split /\n/, sq(q{SELECT result FROM public.evil_log WHERE what = 'seen' ORDER BY n});
cmp_ok(scalar @seen, '>=', 2, 'the trigger fired at each write-back (' . scalar(@seen) . ' times)');
is_deeply([ grep { $_ ne "user=evil super=f pid=$wb_worker temp=f listening=0 work_mem=4MB advisory=0 prepared=0 path=pg_catalog, docextract, pg_temp" } @seen ],
	[], 'every firing: as the role, not superuser, in the write-back worker, nothing left by the one before, path pinned');
my %tries = map { split /\|/, $_, 2 } split /\n/,
  sq(q{SELECT DISTINCT ON (what) what || '|' || result FROM public.evil_log WHERE what <> 'seen' ORDER BY what, n});
like($tries{'temp table'}, qr/^42501: cannot create temporary table within security-restricted operation/,
	'a temporary table: refused, security-restricted operation');
like($tries{'temp type'}, qr/^42501: .*within security-restricted operation/, 'a pg_temp type: refused');
like($tries{superuser}, qr/^42501: /, 'ALTER ROLE SUPERUSER: refused');
like($tries{'reset role'}, qr/^42501: cannot set parameter "role" within security-definer function/,
	'RESET ROLE: refused');
like($tries{'session authorization'}, qr/^42501: cannot set parameter "session_authorization" within security-definer function/,
	'SET SESSION AUTHORIZATION: refused');
like($tries{listen}, qr/^42501: cannot execute LISTEN within security-restricted operation/, 'LISTEN: refused');
is($tries{set}, 'ok', 'SET runs ... (rolled back: the next firing saw work_mem=4MB)');
is($tries{advisory}, 'ok', 'a session advisory lock is taken ... (released: the next firing saw none)');
like($tries{prepare}, qr/^42501: cannot execute PREPARE within security-restricted operation/, 'PREPARE: refused');
is(sq(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'evil'}), 'f', 'evil is not superuser');
is(sq(q{SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'pg_temp%'})
	  + sq(q{SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname LIKE 'pg_temp%'})
	  + sq(q{SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname LIKE 'pg_temp%'}),
	0, 'no temporary object anywhere (the planted ones included)');
is(sq("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), '0', 'no advisory lock held by any worker');
unlike(sq(q{SELECT string_agg(result, ',') FROM public.evil_log WHERE what = 'seen'}), qr/pid=$job_worker /,
	'the job worker never ran the trigger');

# -- a trigger that sleeps: other roles' work goes on; a cancel fails only it ----------
# writeback_timeout 1 h here: on a stalled machine the 60 s could end the sleep
# before the test's cancel does (the next section sets its own).
sq("ALTER SYSTEM SET docextract.writeback_timeout = '1h'; SELECT pg_reload_conf()");
make_table('good');
make_table('sleepy', q{
	CREATE FUNCTION public.sleepy_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  IF NEW.state = 'completed' THEN PERFORM pg_sleep(3600); END IF;
	  RETURN NULL;
	END $f$;
	CREATE TRIGGER sleepy AFTER UPDATE ON public.sleepy_docs FOR EACH ROW EXECUTE FUNCTION public.sleepy_trigger();});
my $s1 = insert_row('sleepy');
$node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE pid = $wb_worker AND wait_event = 'PgSleep'}) or die 'the sleepy trigger never slept';
my $g1 = submit('good');
is(wait_for_status($node, $g1, 'completed'), 'completed', "another role's extraction completes while the trigger sleeps");
is(sq(qq{SELECT count(*) FROM pg_stat_activity WHERE pid = $wb_worker AND wait_event = 'PgSleep'}), '1',
	'... the trigger is still asleep then');
is(sq(qq{SELECT status FROM docextract.extractions WHERE id = '$s1'}), 'completed',
	"the sleeping role's own extraction completed too: only its write-back waits");
sq("SELECT pg_cancel_backend($wb_worker)");
$node->poll_query_until('postgres', qq{SELECT writeback_error IS NOT NULL FROM docextract.extractions WHERE id = '$s1'})
  or die 'no writeback_error after the cancel';
is(sq(qq{SELECT status || ': ' || writeback_error FROM docextract.extractions WHERE id = '$s1'}),
	'completed: canceling statement due to user request', 'a cancel (57014) fails that write-back only');
is(pid_of('docextract write-back worker') . '/' . pid_of('docextract worker'), "$wb_worker/$job_worker",
	'... neither worker restarted');

# bounded by docextract.writeback_timeout
sq("ALTER SYSTEM SET docextract.writeback_timeout = '1s'; SELECT pg_reload_conf()");
my $s2 = insert_row('sleepy');
$node->poll_query_until('postgres', qq{SELECT writeback_error IS NOT NULL FROM docextract.extractions WHERE id = '$s2'})
  or die 'the sleeping write-back was never stopped';
is(sq(qq{SELECT writeback_error FROM docextract.extractions WHERE id = '$s2'}),
	'canceling statement due to statement timeout', 'a trigger sleeping forever: stopped by writeback_timeout');
is(sq(qq{SELECT state IS DISTINCT FROM 'completed' FROM public.sleepy_docs WHERE id = 2}), 't',
	'... its update rolled back');

# a trigger raising 57014 itself, or anything else
make_table('raiser', q{
	CREATE FUNCTION public.raiser_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	  IF NEW.state = 'completed' THEN RAISE EXCEPTION 'raiser says stop' USING ERRCODE = '57014'; END IF;
	  RETURN NULL;
	END $f$;
	CREATE TRIGGER raiser AFTER UPDATE ON public.raiser_docs FOR EACH ROW EXECUTE FUNCTION public.raiser_trigger();});
my $r1 = insert_row('raiser');
my $g2 = insert_row('good');
$node->poll_query_until('postgres', qq{SELECT writeback_error IS NOT NULL FROM docextract.extractions WHERE id = '$r1'})
  or die 'raiser: no writeback_error';
is(sq(qq{SELECT status || ': ' || writeback_error FROM docextract.extractions WHERE id = '$r1'}),
	'completed: raiser says stop', "a trigger raising 57014: that write-back fails, the extraction stands");
$node->poll_query_until('postgres', q{SELECT state = 'completed' FROM public.good_docs WHERE id = 1})
  or die "good's row never written back";
pass("another role's row is written back meanwhile");
is(pid_of('docextract write-back worker') . '/' . pid_of('docextract worker'), "$wb_worker/$job_worker",
	'... no worker took the 57014 for its own cancel');

# -- locks a session holds ----------------------------------------------------------
# a role's own table locked by that role: others' work goes on, its write-back waits
make_table('locker');
server_script($srv, { hold => 'l1' });
my $l1 = insert_row('locker');
wait_for_status($node, $l1, 'processing');
my $lock = $node->background_psql('postgres');
$lock->query_safe('SET ROLE locker; BEGIN; LOCK TABLE public.locker_docs');
release('l1');
is(wait_for_status($node, $l1, 'completed'), 'completed', 'a locked table: the extraction still completes');
my $g3 = insert_row('good');
$node->poll_query_until('postgres', q{SELECT state = 'completed' FROM public.good_docs WHERE id = 2})
  or die "good's row never written back";
is(sq(qq{SELECT writeback_due IS NOT NULL AND writeback_error IS NULL FROM docextract.extractions WHERE id = '$l1'}), 't',
	"another role's row is written back while the table is locked; this write-back waits");
$lock->query_safe('COMMIT');
$node->poll_query_until('postgres', q{SELECT state = 'completed' FROM public.locker_docs WHERE id = 1})
  or die 'locker: never written back';
is(sq(qq{SELECT writeback_due IS NULL AND writeback_error IS NULL FROM docextract.extractions WHERE id = '$l1'}), 't',
	'... and is written once the lock is released');

# a session left open after cancel_extraction holds the extraction's row
my $sess = $node->background_psql('postgres');
sub held_up
{
	my ($what, $open, $close, $id, $hold) = @_;
	my $offset = -s $node->logfile;
	$sess->query_safe("SET ROLE holder; BEGIN; $open");
	release($hold);
	$node->wait_for_log(qr/extraction $id waits for a lock a session holds/, $offset);
	my $g = submit('good');
	is(wait_for_status($node, $g, 'completed'), 'completed', "$what: another role's extraction completes");
	is(sq(qq{SELECT status FROM docextract.extractions WHERE id = '$id'}), 'processing',
		"... the answered one waits for the lock");
	$sess->query_safe($close);
	is(wait_for_status($node, $id, 'completed'), 'completed', "... and is stored once the session ends");
}
# ... after extract_document, which holds one of the role's credit slots:
# settling takes none (credit_slot_deltas), so the role's answer is stored.
server_script($srv, { hold => 'h1' });
my $h1 = submit('holder');
wait_for_status($node, $h1, 'processing');
$sess->query_safe(qq{SET ROLE holder; BEGIN;
	SELECT docextract.extract_document(docextract.add_document('h2.pdf', pdf), '$tid') FROM public.fixture});
release('h1');
is(wait_for_status($node, $h1, 'completed'), 'completed',
	"an open transaction after extract_document: the role's answered extraction is stored");
is(wait_for_status($node, submit('good'), 'completed'), 'completed', "... and another role's completes");
$sess->query_safe('COMMIT');
is(sq(qq{SELECT count(*) FROM docextract.credit_ledger WHERE extraction_id = '$h1' AND kind = 'charge'}), '1',
	'... its credits settled (charged once)');

# ... after cancel_extraction (the extraction's row), rolled back
server_script($srv, { hold => 'h3' });
my $h3 = submit('holder');
wait_for_status($node, $h3, 'processing');
held_up('an open transaction after cancel_extraction', "SELECT docextract.cancel_extraction('$h3')",
	'ROLLBACK', $h3, 'h3');

# ... after approve (the approved extraction and the role's credit row)
my $h4 = submit('holder', '{"auto_approve": false}');
wait_for_status($node, $h4, 'awaiting_approval');
server_script($srv, { hold => 'h5' });
my $h5 = submit('holder');
wait_for_status($node, $h5, 'processing');
# (approve charges nothing: the answer was charged when it was stored, so it
# holds only the approved extraction, and the role's other work goes on.)
$sess->query_safe("SET ROLE holder; BEGIN; SELECT docextract.approve('$h4')");
release('h5');
is(wait_for_status($node, $h5, 'completed'), 'completed',
	"an open transaction after approve: the role's answered extraction is stored");
is(wait_for_status($node, submit('good'), 'completed'), 'completed', "... and another role's completes");
$sess->query_safe('COMMIT');
is(sq(qq{SELECT status FROM docextract.extractions WHERE id = '$h4'}), 'completed', '... the approval stands');

# ... after drop_webhook (the webhook's row and its deliveries', which every
# status change of that role's extractions would otherwise wait on)
my $hook = sq(q{SET ROLE holder;
	SELECT docextract.add_webhook('http://localhost:1/hooks', 'a-long-shared-secret-for-holder')});
server_script($srv, { hold => 'h6' });
my $h6 = submit('holder');
wait_for_status($node, $h6, 'processing');
$sess->query_safe("SET ROLE holder; BEGIN; SELECT docextract.drop_webhook('$hook')");
release('h6');
my $g = submit('good');
is(wait_for_status($node, $g, 'completed'), 'completed',
	"an open transaction after drop_webhook: another role's extraction completes");
is(wait_for_status($node, $h6, 'completed'), 'completed',
	'... and so does the answered one, its event not queued for the webhook being dropped');
$sess->query_safe('ROLLBACK');
$sess->quit;
$lock->quit;

# -- 1,000 rows whose trigger sleeps just under the timeout: only that role waits -------
sq("ALTER SYSTEM SET docextract.writeback_timeout = '250ms'; SELECT pg_reload_conf(); GRANT pg_read_server_files TO slow");
make_table('slow', q{
	CREATE FUNCTION public.slow_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $f$;
	CREATE TRIGGER slow AFTER UPDATE ON public.slow_docs FOR EACH ROW EXECUTE FUNCTION public.slow_trigger();});
my $hex = unpack('H*', slurp_file($pdf));
my $copy = "$PostgreSQL::Test::Utils::tmp_check/slow.copy";
open(my $fh, '>', $copy) or die;
print $fh "\\\\x$hex\n" for 1 .. 1000;
close $fh;
chmod 0644, $copy;
sq("SET ROLE slow; COPY public.slow_docs (pdf) FROM '$copy'");
note('COPY committed');
$node->poll_query_until('postgres', q{SELECT count(*) = 1000 FROM docextract.extractions
	WHERE owner = 'slow'::regrole AND status = 'completed'}) or die 'the COPY did not complete';
note('1,000 extractions completed');
my $g4 = insert_row('good');
$node->poll_query_until('postgres', q{SELECT state = 'completed' FROM public.good_docs WHERE id = 3})
  or die "good's row never written back";
cmp_ok(sq(q{SELECT count(*) FROM docextract.extractions WHERE owner = 'slow'::regrole AND writeback_due IS NOT NULL}),
	'>', 0, "another role's row is written back before the slow role's 1,000 write-backs are through");

# -- a trigger that catches the cancel and goes on: the write-back worker is
# stopped (a FATAL it cannot catch) and the row waits its turn again ----------------
my $wb_before = pid_of('docextract write-back worker');
my $started = sq('SELECT pg_postmaster_start_time()');
sq('CREATE ROLE stubborn LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO stubborn');
make_table('stubborn', q{
	CREATE FUNCTION public.stubborn_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	    LOOP
	        BEGIN PERFORM pg_sleep(100); EXCEPTION WHEN query_canceled THEN NULL; END;
	    END LOOP;
	END $f$;
	CREATE TRIGGER stubborn AFTER UPDATE ON public.stubborn_docs FOR EACH ROW
	    EXECUTE FUNCTION public.stubborn_trigger();});
my $st = insert_row('stubborn');
my $g5 = insert_row('good');
$node->poll_query_until('postgres', qq{SELECT status = 'completed' AND writeback_due IS NULL
	AND writeback_error IS NULL FROM docextract.extractions WHERE id = '$g5'})
  or die "good's row never written back";
pass("a trigger that catches the cancel holds up no other role's write-back");
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'docextract write-back worker' AND pid <> $wb_before")
  or die 'the write-back worker was not stopped';
pass('... its write-back stopped the write-back worker, which started again');
$node->poll_query_until('postgres', qq{SELECT writeback_error LIKE '%ignored the cancel%'
	FROM docextract.extractions WHERE id = '$st'}) or die 'the stubborn row does not say why';
pass('... and the row says why');
is(sq('SELECT pg_postmaster_start_time()'), $started, '... without restarting the server');

# -- a library a write-back's code loads keeps state in the process (dblink's
# connections, open as that role): the write-back worker ends after that
# batch, so the next role's code never meets it ------------------------------------
sq(q{CREATE ROLE linker LOGIN; CREATE ROLE peeker LOGIN;
	GRANT CREATE, USAGE ON SCHEMA public TO linker, peeker;
	CREATE EXTENSION dblink; GRANT EXECUTE ON FUNCTION public.dblink_connect_u(text, text) TO linker;});
my $connstr = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres user=linker';
make_table('linker', qq{
	CREATE TABLE public.linker_log (pid int, connections text[]);
	CREATE FUNCTION public.linker_trigger() RETURNS trigger LANGUAGE plpgsql AS \$f\$
	BEGIN
	    IF NOT 'left' = ANY (coalesce(public.dblink_get_connections(), '{}')) THEN
	        PERFORM public.dblink_connect_u('left', '$connstr');
	    END IF;
	    INSERT INTO public.linker_log SELECT pg_backend_pid(), public.dblink_get_connections();
	    RETURN NULL;
	END \$f\$;
	CREATE TRIGGER linker AFTER UPDATE ON public.linker_docs FOR EACH ROW EXECUTE FUNCTION public.linker_trigger();});
make_table('peeker', q{
	CREATE TABLE public.peeker_log (pid int, connections text[], r float8);
	CREATE FUNCTION public.peeker_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	    INSERT INTO public.peeker_log SELECT pg_backend_pid(), public.dblink_get_connections(), random();
	    RETURN NULL;
	END $f$;
	CREATE TRIGGER peeker AFTER UPDATE ON public.peeker_docs FOR EACH ROW EXECUTE FUNCTION public.peeker_trigger();});
my $log_at = -s $node->logfile;
my $linked = insert_row('linker');
$node->poll_query_until('postgres', qq{SELECT status = 'completed' AND writeback_due IS NULL
	FROM docextract.extractions WHERE id = '$linked'}) or die "linker's row never written back";
my $peeked = insert_row('peeker');
$node->poll_query_until('postgres', qq{SELECT status = 'completed' AND writeback_due IS NULL
	FROM docextract.extractions WHERE id = '$peeked'}) or die "peeker's row never written back";
is(sq(q{SELECT string_agg(DISTINCT connections::text, ',') FROM public.linker_log}), '{left}',
	"a role's trigger opens a dblink connection in the write-back worker");
is(sq(q{SELECT count(*) > 0 AND count(connections) = 0 FROM public.peeker_log}), 't',
	"another role's trigger, run after it, finds none open");
is(sq(q{SELECT count(*) FROM public.peeker_log p JOIN public.linker_log l USING (pid)}), '0',
	'... as it never ran in a process where one was left');
ok($node->log_contains(qr/the write-back code of role "linker" loaded a library into this process; it exits before another role's write-backs run/, $log_at),
	'the write-back worker says why it exits');

# Without a library: random()'s seed one role's trigger set (setseed) is not
# the next role's, nor is an ERROR of 57P01 a stop (dblink passes a remote
# server's on): a transient error of that write-back, tried again later,
# while the worker goes on (it used to be left in an aborted subtransaction,
# and die at the next write-back with XX000, which the log check catches).
sq(q{CREATE ROLE seeder LOGIN; CREATE ROLE shouter LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO seeder, shouter});
make_table('seeder', q{
	CREATE FUNCTION public.seeder_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN PERFORM setseed(0.25); RETURN NULL; END $f$;
	CREATE TRIGGER seeder AFTER UPDATE ON public.seeder_docs FOR EACH ROW EXECUTE FUNCTION public.seeder_trigger();});
make_table('shouter', q{
	CREATE FUNCTION public.shouter_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN RAISE EXCEPTION 'the remote server stops' USING ERRCODE = 'admin_shutdown'; END $f$;
	CREATE TRIGGER shouter AFTER UPDATE ON public.shouter_docs FOR EACH ROW EXECUTE FUNCTION public.shouter_trigger();});
my ($seeded) = sq('SELECT setseed(0.25); SELECT random()') =~ /([0-9.e-]+)\s*$/;
sub written_back
{
	my @ids = @_;
	$node->poll_query_until('postgres', qq{SELECT bool_and(status = 'completed' AND writeback_due IS NULL)
		FROM docextract.extractions WHERE id IN ('@{[ join "','", @ids ]}')}) or die 'never written back';
}
# The seeder's write-backs all done first: the peeker's come after them.
my @rows = (insert_row('seeder'));
written_back(@rows);
my $shouted = insert_row('shouter');
push @rows, insert_row('peeker');
written_back(@rows);
is(sq(q{SELECT count(*) FROM public.peeker_log WHERE r = } . $seeded), '0',
	"random() after another role's setseed(): not the sequence it set");
ok($node->poll_query_until('postgres', "SELECT status = 'completed' AND writeback_due IS NOT NULL
	AND writeback_error IS NULL FROM docextract.extractions WHERE id = '$shouted'"),
	"an ERROR of 57P01 from a role's trigger: that write-back is tried again later, the others go on");

# -- a role whose write-back loads a library and is due again every second
# (55P03: a lock it "could not get"): the worker ends before each other
# role's batch, and the turns go on across its restarts -------------------------
sq(q{CREATE ROLE hog LOGIN; CREATE ROLE victim LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO hog, victim});
make_table('hog', q{
	CREATE FUNCTION public.hog_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
	    PERFORM public.dblink_get_connections();
	    RAISE EXCEPTION 'busy' USING ERRCODE = 'lock_not_available';
	END $f$;
	CREATE TRIGGER hog AFTER UPDATE ON public.hog_docs FOR EACH ROW EXECUTE FUNCTION public.hog_trigger();});
make_table('victim');
my $hogged = insert_row('hog');
$node->poll_query_until('postgres', "SELECT status = 'completed' AND writeback_due IS NOT NULL
	FROM docextract.extractions WHERE id = '$hogged'") or die 'the hog never completed';
my $victim = insert_row('victim');
ok($node->poll_query_until('postgres', "SELECT status = 'completed' AND writeback_due IS NULL
	AND writeback_error IS NULL FROM docextract.extractions WHERE id = '$victim'"),
	"a role whose write-back loads a library and is due every second holds up no other role's");

$node->stop;
done_testing();
