# Model work is always paid for.  An answered extraction costs its pages
# once, whatever the caller's transaction does afterwards (extract_sync's
# work commits in a background worker of its own), and whatever happens to
# the extraction afterwards (cancelling a result awaiting approval releases
# nothing); an attempt that got no answer costs nothing, also when
# extract_sync is ended by statement_timeout or pg_cancel_backend.
# max_retries is capped at 10.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $srv = start_model_server();
my $node = new_node('paid', credits => 'enforce');
my $bytes = "pg_read_binary_file('" . fixture('invoice.pdf') . "')";
$node->safe_psql('postgres', qq{
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	                            '{"max_retries": 1, "retry_backoff_ms": 100}');
	CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS \$\$
	BEGIN EXECUTE sql; RETURN 'no error';
	EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END \$\$;
	CREATE TABLE public.pdf AS SELECT $bytes AS b;
	GRANT SELECT ON public.pdf TO alice, bob;
	SELECT docextract.grant_credits('alice', 20);});
my $tid = add_invoice_template($node, 'alice');
my $bob_tid = add_invoice_template($node, 'bob');
my $as_alice = [ '-U', 'alice' ];
my $sync = "docextract.extract_sync((SELECT b FROM public.pdf), '$tid'";

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub alice { return $node->safe_psql('postgres', $_[0], extra_params => $as_alice); }
sub balance { return sq("SELECT docextract.credit_balance('$_[0]')"); }

sub ledger
{
	return sq("SELECT string_agg(kind, ',' ORDER BY id) FROM docextract.credit_ledger
	           WHERE extraction_id = '$_[0]'");
}

sub newest { return sq("SELECT id FROM docextract.extractions ORDER BY created_at DESC LIMIT 1"); }

sub wait_none_processing
{
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM docextract.extractions WHERE status = 'processing'")
	  or die 'an extraction stayed processing';
}

# -- the caller's rollback takes nothing back -------------------------------------
my $r = json_of(alice("BEGIN; SELECT $sync); ROLLBACK;"));
is($r->{status}, 'completed', 'BEGIN; extract_sync; ROLLBACK: the data came back');
is(balance('alice'), '19', '... and its page is charged: the rollback took nothing back');
is(ledger($r->{extraction_id}), 'reserve,charge', '... in the ledger: reserved, charged');
is(sq("SELECT status || ' ' || credits_used FROM docextract.extractions WHERE id = '$r->{extraction_id}'"),
	'completed 1', '... and the extraction stays, completed, credits_used 1');

$r = json_of(alice("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM docextract.extractions \\g /dev/null
	SELECT $sync); COMMIT;"));
is($r->{status}, 'completed', 'in a REPEATABLE READ transaction with an older snapshot: the result comes back');
is(balance('alice'), '18', '... charged');

# -- rows streamed, then a later row fails ------------------------------------------
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT docextract.extract_sync(b, CASE WHEN g = 1 THEN '$tid'::uuid
	        ELSE '00000000-0000-0000-0000-000000000000' END) ->> 'status'
	   FROM public.pdf, generate_series(1, 2) g", extra_params => $as_alice);
like($err, qr/template 00000000-0000-0000-0000-000000000000 does not exist/,
	'extract_sync on two rows, the second failing: the statement fails');
is(balance('alice'), '17', "... and the first row's answered extraction is charged all the same");
($ret, $out, $err) = $node->psql('postgres',
	"SELECT docextract.extract_sync(b, '$tid') ->> 'status', 1 / (2 - g)
	   FROM public.pdf, generate_series(1, 2) g", extra_params => $as_alice);
like($err, qr/division by zero/, 'two rows answered, then 1/0 in the second');
is(balance('alice'), '15', '... both answers charged');

# -- awaiting approval, then cancelled: charged, not released -----------------------
$r = json_of(alice("SELECT $sync, '{\"auto_approve\": false}')"));
is($r->{status}, 'awaiting_approval', 'extract_sync with auto_approve false: awaiting_approval');
ok(defined $r->{data}{general}{total_amount}, '... its data is readable');
is(balance('alice'), '14', '... and charged when the answer was stored');
is(alice("SELECT docextract.cancel_extraction('$r->{extraction_id}')"), 't', 'then cancelled');
is(balance('alice'), '14', '... nothing released');
is(ledger($r->{extraction_id}), 'reserve,charge', '... ledger: reserve, charge, no release');
is(sq("SELECT status || ' ' || credits_used FROM docextract.extractions WHERE id = '$r->{extraction_id}'"),
	'cancelled 1', '... credits_used stays 1');

my $doc = alice("SELECT docextract.add_document('q.pdf', (SELECT b FROM public.pdf))");
my $e = alice("SELECT docextract.extract_document('$doc', '$tid', '{\"auto_approve\": false}')");
is(wait_for_status($node, $e, 'completed', 'failed', 'awaiting_approval'), 'awaiting_approval',
	'through the queue: awaiting_approval');
ok(defined json_of(alice("SELECT docextract.get_result('$e')"))->{data}{general},
	'... its result read');
alice("SELECT docextract.cancel_extraction('$e')");
is(ledger($e), 'reserve,charge', '... then cancelled: charged, not released');
is(balance('alice'), '13', '... the balance says so');

# -- max_retries is capped at 10 -----------------------------------------------------
like(alice("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$doc', '$tid', '{\"max_retries\": 11}')\$\$)"),
	qr/^22023: option "max_retries" has an invalid value 11/, 'extract_document: max_retries 11 is 22023');
like(alice("SELECT sqlstate_of(\$\$SELECT $sync, '{\"max_retries\": 11}')\$\$)"),
	qr/^22023: option "max_retries" has an invalid value 11/, 'extract_sync: max_retries 11 is 22023');
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.validate_model_options('{\"max_retries\": 11}')\$\$)"),
	qr/^22023: model option "max_retries" must be an integer from 0 to 10, got 11/,
	'model options: max_retries 11 is 22023');
like(sq("SELECT sqlstate_of(\$\$SELECT docextract.add_model('many', 'openai', '$srv->{url}/v1', 'm', NULL, '{\"max_retries\": 1000}')\$\$)"),
	qr/^22023: /, '... add_model refuses it');
is(sq("SELECT sqlstate_of(\$\$SELECT docextract.validate_model_options('{\"max_retries\": 10}')\$\$)"),
	'no error', '... 10 is fine');
is(balance('alice'), '13', 'refused calls cost nothing');

# -- extract_sync's limits reach the caller as raised ---------------------------------
like($node->safe_psql('postgres', "SELECT sqlstate_of(\$\$SELECT docextract.extract_sync((SELECT b FROM public.pdf), '$bob_tid')\$\$)",
		extra_params => [ '-U', 'bob' ]),
	qr/^53000: insufficient credits: role bob needs 1 credit\(s\) for 1 page\(s\), its balance is 0$/,
	'no credits: 53000 from extract_sync, as extract_document raises it');
is(sq("SELECT count(*) FROM docextract.documents WHERE owner = 'bob'::regrole"), '0', '... nothing stored');
sq("ALTER ROLE alice SET docextract.max_active_per_role = 1");
server_script($srv, { delay_ms => 30000 });
$e = alice("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
wait_inflight($srv, 1);
like(alice("SELECT sqlstate_of(\$\$SELECT $sync)\$\$)"),
	qr/^53400: role alice has 1 active extractions, the limit is 1/,
	'max_active_per_role: 53400 from extract_sync');
alice("SELECT docextract.cancel_extraction('$e')");
sq("ALTER ROLE alice RESET docextract.max_active_per_role");
wait_abandoned($srv, 1);
is(server_stats($srv)->{abandoned}, 1, '... the request of the one in flight dropped at its cancel');
is(balance('alice'), '13', '... and the cancelled one in flight cost nothing');

# -- a transaction that holds every credit slot: an error, not a hang -----------------
# (A quota makes each submit lock all of the role's slots, so that its count
# is made one submit after another; the call's worker would wait for them.)
sq("ALTER ROLE alice SET docextract.max_active_per_role = 100");
my $t0 = time;
($ret, $out, $err) = $node->psql('postgres',
	"BEGIN; SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}') \\g /dev/null
	 SELECT $sync); ROLLBACK;", extra_params => $as_alice);
sq("ALTER ROLE alice RESET docextract.max_active_per_role");
like($err, qr/extract_sync would wait for a lock held by its own transaction/,
	'extract_sync after extract_document in one transaction, with a quota: a clear error');
ok(time - $t0 < 30, '... not a hang');
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'docextract sync worker'")
  or die 'the sync worker never left';
is(sq("SELECT count(*) FROM docextract.extractions WHERE status = 'processing'"), '0',
	'... its worker, cancelled while it waited for the lock, left nothing running');
is(balance('alice'), '13', '... nothing charged');

# -- statement_timeout while the model works: nothing charged, the session goes on ---
# 4 s, as in 007: the call's worker must start, parse and send first; the
# model would answer after 60 s.  The extraction is the one made after $mark.
server_reset($srv);
server_script($srv, { delay_ms => 60000 });
my $mark = sq("SELECT clock_timestamp()");
($ret, $out, $err) = $node->psql('postgres', "SET statement_timeout = '4s';
	SELECT $sync);
	RESET statement_timeout;
	SELECT 'alive ' || docextract.credit_balance();", extra_params => $as_alice, on_error_stop => 0);
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout ends extract_sync');
like($out, qr/^alive \d+$/m, '... and the session goes on');
wait_none_processing();
$e = sq("SELECT string_agg(id::text, ',') FROM docextract.extractions WHERE created_at >= '$mark'");
is(sq("SELECT status FROM docextract.extractions WHERE id::text = '$e'"), 'cancelled', '... its extraction cancelled');
is(ledger($e), 'reserve,release', '... reserved, released: the model never answered');
is(balance('alice'), '13', '... nothing charged');
wait_abandoned($srv, 2);
is(server_stats($srv)->{abandoned}, 2, '... the request abandoned on the wire');
is(sq("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'docextract sync worker'"), '0',
	'... and its worker is gone');

# -- pg_cancel_backend, of the caller and of the call's worker --------------------------
sub cancel_while_waiting
{
	my ($target, $how, $says) = @_;
	server_reset($srv);
	server_script($srv, { delay_ms => 10000 });
	my ($in, $o, $e) = ('', '', '');
	my $h = IPC::Run::start([ 'psql', '-X', '-U', 'alice', '-d', $node->connstr('postgres'), '-c',
		"SELECT $sync)" ], '<', \$in, '>', \$o, '2>', \$e);
	wait_inflight($srv, 1);
	is(server_stats($srv)->{inflight}, 1, "$how of the $target: the call waits on the model");
	sq("SELECT $how(pid) FROM pg_stat_activity WHERE " .
		($target eq 'caller' ? "query LIKE '%extract_sync%' AND pid <> pg_backend_pid()"
			: "backend_type = 'docextract sync worker'"));
	$h->finish;
	like($e, $says, "$how of the $target: the call ends");
	wait_none_processing();
	my $id = newest();
	is(sq("SELECT status FROM docextract.extractions WHERE id = '$id'"), 'cancelled',
		'... its extraction cancelled');
	is(ledger($id), 'reserve,release', '... its credit released');
}
cancel_while_waiting('caller', 'pg_cancel_backend', qr/canceling statement due to user request/);
cancel_while_waiting('worker', 'pg_cancel_backend', qr/canceling statement due to user request/);
cancel_while_waiting('caller', 'pg_terminate_backend', qr/terminating connection due to administrator command/);
cancel_while_waiting('worker', 'pg_terminate_backend', qr/canceling statement due to user request/);
is(balance('alice'), '13', 'cancelled calls cost nothing');

# -- a retry wait stays the call's own, and a cancel there costs nothing ----------------
server_reset($srv);
server_script($srv, { status => 503, headers => { 'Retry-After' => '30' }, body => '{}' });
my ($in, $o, $errs) = ('', '', '');
my $h = IPC::Run::start([ 'psql', '-X', '-U', 'alice', '-d', $node->connstr('postgres'), '-c',
	"SELECT $sync)" ], '<', \$in, '>', \$o, '2>', \$errs);
$node->poll_query_until('postgres', "SELECT error_message LIKE 'model endpoint answered HTTP 503%'
	FROM docextract.extractions ORDER BY created_at DESC LIMIT 1")
  or die 'the first attempt never failed';
is(sq("SELECT status || ' ' || (next_attempt_at IS NOT NULL) FROM docextract.extractions
	ORDER BY created_at DESC LIMIT 1"), 'processing true',
	"waiting to retry: still processing, so the database's worker can't claim it");
sq("SELECT pg_cancel_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%extract_sync%' AND pid <> pg_backend_pid()");
$h->finish;
like($errs, qr/canceling statement due to user request/, 'cancelled while waiting to retry');
wait_none_processing();
is(ledger(newest()), 'reserve,release', '... released');
is(server_stats($srv)->{count}, 1, '... after its one request');
is(balance('alice'), '13', '... nothing charged');
server_reset($srv);
is(json_of(alice("SELECT $sync)"))->{status}, 'completed', 'and the next call works');
is(balance('alice'), '12', '... charged');

# -- the database's worker restarting mid-call leaves the call's row alone -------------
# (Its start requeues what a previous worker left processing: not what a
# call's own worker is running, which would send a second, paid request.)
server_reset($srv);
server_script($srv, { delay_ms => 60000 });
($in, $o, $errs) = ('', '', '');
$h = IPC::Run::start([ 'psql', '-X', '-U', 'alice', '-d', $node->connstr('postgres'), '-c',
	"SELECT $sync)" ], '<', \$in, '>', \$o, '2>', \$errs);
wait_inflight($srv, 1);
is(server_stats($srv)->{inflight}, 1, 'a call waits on the model');
my $old_worker = worker_pid($node);
sq("SELECT pg_terminate_backend($old_worker)");
# The new worker's first wait comes after its first look at the queue.
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'docextract worker' AND pid <> $old_worker AND wait_event = 'Extension'")
  or die 'no new worker waiting';
is(sq("SELECT status || ' ' || (worker_pid = (SELECT pid FROM pg_stat_activity
	WHERE backend_type = 'docextract sync worker')) FROM docextract.extractions
	ORDER BY created_at DESC LIMIT 1"), 'processing true',
	"a new database worker leaves the call's row to the call's worker");
sq("SELECT pg_cancel_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%extract_sync%' AND pid <> pg_backend_pid()");
$h->finish;
wait_none_processing();
is(server_stats($srv)->{count}, 1, '... and the model got one request');

# -- without a quota, the call's submit takes another credit slot: no wait -----------
server_reset($srv);
sq("SELECT docextract.grant_credits('alice', 80)");	# ten and more a slot
my $before = balance('alice');
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '20s'; BEGIN; SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}') \\g /dev/null
	 SELECT $sync); ROLLBACK;", extra_params => $as_alice);
is(eval { json_of($out)->{status} } // "no answer: $err", 'completed',
	'extract_sync after extract_document in one transaction, no quota: it completes');
is(balance('alice'), $before - 1, '... charged once (the rolled-back submit reserved nothing)');
$node->stop;

# -- without the preload: a dynamic worker all the same -------------------------------
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->append_conf('postgresql.conf', "log_line_prefix = '%m [%p] %e %q%a '");	# SQLSTATEs checked (DxTest)
$plain->start;
$plain->safe_psql('postgres', qq{CREATE EXTENSION docextract;
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model');
	SELECT docextract.grant_credits(current_user, 5);});
$tid = add_invoice_template($plain);
$r = json_of($plain->safe_psql('postgres',
	"BEGIN; SELECT docextract.extract_sync($bytes, '$tid'); ROLLBACK;"));
is($r->{status}, 'completed', 'no preload: extract_sync works, rolled back');
is($plain->safe_psql('postgres', 'SELECT docextract.credit_balance()'), '4', '... and is charged');
$plain->stop;
done_testing();
