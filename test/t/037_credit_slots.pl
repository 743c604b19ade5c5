# A role's credit account is kept in eight slots (credit_slots; the view
# credit_accounts sums them): concurrent submits of one role reserve in
# different slots, so none waits for another's commit, and the worker settles
# one job while a session holds another slot.  Near the end of the credits a
# submit gathers the slots and waits for the ones in use: never more is
# spent than granted, and no submit is refused while enough is free.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use Time::HiRes qw(usleep);

my $srv = start_model_server();
# Polls every second: the worker folds settled credits on its polls.
my $node = new_node('slots', credits => 'enforce', conf => "docextract.poll_interval = '1s'\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS \$\$
	BEGIN EXECUTE sql; RETURN 'no error';
	EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END \$\$;
	CREATE ROLE alice LOGIN; CREATE ROLE carol LOGIN;
	GRANT pg_read_server_files TO alice, carol;
	GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO alice, carol;
	SELECT docextract.grant_credits('alice', 1000, 'test');});
my $tid = add_invoice_template($node, 'alice');
my $pdf = sq("SET ROLE alice; SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('"
	  . fixture('invoice.pdf') . "'))");
my $submit = "SELECT docextract.extract_document('$pdf', '$tid', '{\"force\": true}')";
sub balance { return sq("SELECT docextract.credit_balance('$_[0]')"); }

is(sq(q{SELECT count(*) || ' ' || sum(balance) FROM docextract.credit_slots WHERE role = 'alice'::regrole}),
	'8 1000', 'a grant is spread over eight slots');
is(sq(q{SELECT balance || ' ' || reserved FROM docextract.credit_accounts WHERE role = 'alice'::regrole}),
	'1000 0', 'credit_accounts: one row per role, the sum');

# -- four sessions hold a submit open; a fifth does not wait for them ----------------
my @open;
for my $i (1 .. 4)
{
	my $s = $node->background_psql('postgres', on_error_stop => 1);
	$s->query_safe('SET ROLE alice');
	$s->query_safe('BEGIN');
	$s->query_safe($submit);
	push @open, $s;
}
my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE alice; SET lock_timeout = '10s'; $submit",
	on_error_stop => 1);
is($rc, 0, 'a fifth submit of the role completes while four hold theirs open') or diag($err);
is(sq(q{SELECT count(DISTINCT credit_slot) FROM docextract.extractions WHERE owner = 'alice'::regrole}),
	'1', '... the committed one in a slot (the four are not visible yet)');

# The worker settles alice's committed job while her sessions hold other slots.
my $done = sq(q{SELECT id FROM docextract.extractions WHERE owner = 'alice'::regrole});
$node->poll_query_until('postgres', "SELECT status = 'completed' FROM docextract.extractions WHERE id = '$done'")
  or die 'the committed job was not stored while other slots were held';
pass('the worker settles a job while four sessions of its role hold other slots');
$_->query_safe('COMMIT') for @open;
$_->quit for @open;
$node->poll_query_until('postgres', q{SELECT count(*) = 5 FROM docextract.extractions
	WHERE owner = 'alice'::regrole AND status = 'completed'}) or die 'the five did not complete';
is(balance('alice'), '995', 'five pages charged, once each');
is(sq(q{SELECT count(DISTINCT credit_slot) FROM docextract.extractions WHERE owner = 'alice'::regrole}),
	'5', '... reserved in five different slots');
is(sq(q{SELECT balance || ' ' || reserved FROM docextract.credit_accounts WHERE role = 'alice'::regrole}),
	'995 0', '... every reservation settled');

# -- the worker settles without a slot: a session holding them all does not stop it ---
server_script($srv, { hold => 'settle' });
my $held_job = sq("SET ROLE alice; $submit");
wait_inflight($srv, 1);
is(server_stats($srv)->{inflight}, 1, 'a job of alice in flight');
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM docextract.credit_slot_deltas})
  or die 'the worker did not fold the settled credits';
my $g = $node->background_psql('postgres', on_error_stop => 1);
$g->query_safe('BEGIN');
$g->query_safe("SELECT docextract.grant_credits('alice', 10, 'held')");	# gathers: every slot locked
server_release($srv, 'settle');
$node->poll_query_until('postgres', "SELECT status = 'completed' FROM docextract.extractions WHERE id = '$held_job'")
  or die 'the job was not stored while a session held every slot of its role';
pass('the worker completes a job while a session holds every credit slot of its role');
is(sq(q{SELECT count(*) FROM docextract.credit_slot_deltas WHERE role = 'alice'::regrole}), '1',
	'... its charge waits in credit_slot_deltas');
is(balance('alice'), '994', '... and counts already: 995 - 1 charged');
is(sq(q{SELECT balance || ' ' || reserved FROM docextract.credit_accounts WHERE role = 'alice'::regrole}),
	'994 0', '... in credit_accounts too');
$g->query_safe('COMMIT');
$g->quit;
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM docextract.credit_slot_deltas})
  or die 'the worker did not fold the delta';
is(sq(q{SELECT sum(balance) || ' ' || sum(reserved) FROM docextract.credit_slots WHERE role = 'alice'::regrole}),
	'1004 0', 'once the slots are free the worker folds it in: 994 + 10 granted');
server_reset($srv);

# -- the last credits: a submit waits for the slot in use, then spends exactly -------
sq("SELECT docextract.grant_credits('carol', 3, 'three')");
my $ctid = add_invoice_template($node, 'carol');
my $cpdf = sq("SET ROLE carol; SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('"
	  . fixture('invoice.pdf') . "'))");
my $csubmit = "SELECT docextract.extract_document('$cpdf', '$ctid', '{\"force\": true}')";
my $a = $node->background_psql('postgres', on_error_stop => 1);
$a->query_safe('SET ROLE carol');
$a->query_safe('BEGIN');
$a->query_safe($csubmit);
# Carol's other two credits may lie in the slot A holds: B gathers and waits for it.
my $b = $node->background_psql('postgres', on_error_stop => 0);
$b->query_until(qr/started/, "SET ROLE carol;\n\\echo started\nBEGIN;\n$csubmit;\n$csubmit;\nCOMMIT;\n\\echo submitted\n");
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'client backend' AND wait_event_type = 'Lock'})
  or die 'B did not wait for the slot A holds';
pass('with the last credits in the slot a session holds, the next submit waits for it');
$a->query_safe('COMMIT');
$a->quit;
$b->query_until(qr/submitted/, '');
$b->quit;
is(sq(q{SELECT count(*) FROM docextract.extractions WHERE owner = 'carol'::regrole AND credits_reserved + credits_used = 1}),
	'3', '... then both of its submits got the credits A did not use');
is(balance('carol'), '0', '... and nothing is left');
like(sq("SET ROLE carol; SELECT sqlstate_of(\$\$$csubmit\$\$)"),
	qr/^53000: insufficient credits: role carol needs 1 credit\(s\) for 1 page\(s\), its balance is 0$/,
	'one more is refused: 53000');
is(sq(q{SELECT balance - reserved FROM docextract.credit_accounts WHERE role = 'carol'::regrole}),
	'0', 'never below zero');

# -- several submits in one transaction (a COPY): it gathers, never waits for itself --
# 16 credits: two a slot.  Each 6-page document needs a gather; the
# transaction holds slots from its earlier submits by then.
sq("SELECT docextract.grant_credits('carol', 16, 'sixteen')");
is(sq(q{SELECT string_agg((balance - reserved)::text, ',' ORDER BY slot) FROM docextract.credit_slots
	WHERE role = 'carol'::regrole}), '2,2,2,2,2,2,2,2', 'sixteen credits: two a slot');
my $six = sq("SET ROLE carol; SELECT docextract.add_document('six.pdf', pg_read_binary_file('"
	  . fixture('three-invoices.pdf') . "'))");
is(sq("SET ROLE carol; SET lock_timeout = '10s'; BEGIN;
	SELECT docextract.extract_document('$cpdf', '$ctid', '{\"force\": true}') \\g /dev/null
	SELECT count(*) FROM (SELECT docextract.extract_document('$six', '$ctid', '{\"force\": true}')
	                        FROM generate_series(1, 2)) s;
	COMMIT;"), '2', 'one transaction submits 1 + 6 + 6 pages of its 16 credits, gathering as it goes');
is(balance('carol'), '3', '... 3 left');
like(sq("SET ROLE carol; SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$six', '$ctid', '{\"force\": true}')\$\$)"),
	qr/^53000: insufficient credits: role carol needs 6 credit\(s\) for 6 page\(s\), its balance is 3$/,
	'... a third 6-page document refused, with the balance');
my $ledger = sq(q{SELECT sum(credits) FILTER (WHERE kind = 'grant') || ' '
	|| sum(credits) FILTER (WHERE kind = 'reserve') FROM docextract.credit_ledger WHERE role = 'carol'::regrole});
is($ledger, '19 16', 'the ledger: 19 granted, 16 reserved');

# -- a transaction's reservations kept as deltas count for the next submit ----------
# A transaction's first submit reserves in its slot's row (the fast path);
# its later ones leave deltas.  A later submit's fast path picks a slot by
# its row (seven free here, where one is), so it must fold the deltas in,
# under the slot's lock, before it reserves: else it spends what is gone.
# The job worker folds deltas too, on its polls: it is paused (SIGSTOP)
# meanwhile, caught between two transactions.
sq("CREATE ROLE dave LOGIN; GRANT pg_read_server_files TO dave;
	GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO dave;
	SELECT docextract.grant_credits('dave', 8, 'eight')");
my $wpid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract worker'});
wait_until(sub {
	kill 'STOP', $wpid;
	return 1 if sq("SELECT state FROM pg_stat_activity WHERE pid = $wpid") eq 'idle';
	kill 'CONT', $wpid;
	usleep(20_000);
	return 0;
}, 'the job worker paused between transactions');
my $dtid = add_invoice_template($node, 'dave');
my ($dpdf, $dsix) = map {
	sq("SET ROLE dave; SELECT docextract.add_document('$_', pg_read_binary_file('" . fixture($_) . "'))")
} 'invoice.pdf', 'three-invoices.pdf';
is(sq("SET ROLE dave; BEGIN;
	SELECT docextract.extract_document('$dpdf', '$dtid', '{\"force\": true}') \\g /dev/null
	SELECT docextract.extract_document('$dsix', '$dtid', '{\"force\": true}') \\g /dev/null
	SELECT (SELECT count(*) FROM docextract.credit_slot_deltas WHERE role = 'dave'::regrole) || ' '
	    || (SELECT max(balance - reserved) FROM docextract.credit_slots WHERE role = 'dave'::regrole);
	COMMIT;"), '1 7', 'one transaction reserves 1 + 6 of 8 credits: a slot shows 7 free, a delta holds 6 of them');
is(sq(q{SELECT count(*) FROM docextract.credit_slot_deltas WHERE role = 'dave'::regrole}), '1',
	'... committed, the delta is not folded yet');
like(sq("SET ROLE dave; SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$dsix', '$dtid', '{\"force\": true}')\$\$)"),
	qr/^53000: insufficient credits: role dave needs 6 credit\(s\) for 6 page\(s\), its balance is 1$/,
	'... the next 6-page submit is refused: the delta was folded in before it reserved');
ok(sq("SET ROLE dave; SELECT docextract.extract_document('$dpdf', '$dtid', '{\"force\": true}') IS NOT NULL"),
	'... a 1-page submit takes the last credit');
is(sq(q{SELECT available_after FROM docextract.credit_ledger WHERE role = 'dave'::regrole ORDER BY id DESC LIMIT 1}),
	'0', '... its ledger entry says 0 left');
like(sq("SET ROLE dave; SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$dpdf', '$dtid', '{\"force\": true}')\$\$)"),
	qr/^53000: /, '... and the next is refused');
is(balance('dave'), '0', 'dave spent his 8 credits, never more');

# -- REPEATABLE READ: a snapshot older than another transaction's reservations ----
# The trigger form locks a slot without taking (take = false), then each row
# reserves by a delta.  A REPEATABLE READ transaction whose snapshot is older
# than those deltas must not lock that slot and read them as its snapshot
# has them (none): the slot's row gets a version from every transaction that
# reserves in it, so the lock fails with 40001 instead of spending twice.
# (The job worker is still paused: its polls would fold the deltas.)
sq("CREATE ROLE erin LOGIN; GRANT pg_read_server_files TO erin;
	GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO erin;
	SELECT docextract.grant_credits('erin', 2, 'two')");
my $etid = add_invoice_template($node, 'erin');
my $epdf = sq("SET ROLE erin; SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('"
	  . fixture('invoice.pdf') . "'))");
sq("CREATE TABLE public.erin_docs (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
	ALTER TABLE public.erin_docs OWNER TO erin;
	CREATE TRIGGER extract AFTER INSERT ON public.erin_docs FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state');");
my $rr = $node->background_psql('postgres', on_error_stop => 1);
$rr->query_safe("SET ROLE erin; BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM docextract.documents");
is(sq("SET ROLE erin; INSERT INTO public.erin_docs (pdf)
	SELECT pg_read_binary_file('" . fixture('invoice.pdf') . "') FROM generate_series(1, 2);
	SELECT count(*) FROM docextract.extractions WHERE owner = 'erin'::regrole AND status = 'pending'"),
	'2', 'erin inserts two trigger-form rows, one transaction: her 2 credits reserved');
like($rr->query_safe("SELECT sqlstate_of(\$\$SELECT docextract.extract_document('$epdf', '$etid', '{\"force\": true}')\$\$)"),
	qr/^40001: /,
	'a REPEATABLE READ submit with an older snapshot is refused (serialization failure), not granted');
$rr->query_safe('ROLLBACK');
$rr->quit;
is(balance('erin'), '0', 'erin: none left, never below');
kill 'CONT', $wpid;

# -- the slots are written only through docextract ------------------------------------
for my $sql ('UPDATE docextract.credit_accounts SET balance = 10^6',
	'UPDATE docextract.credit_slots SET balance = 10^6',
	"INSERT INTO docextract.credit_slots (role, slot, balance) VALUES ('carol', 7, 10^6)")
{
	like(sq("SET ROLE carol; SELECT sqlstate_of(\$\$$sql\$\$)"), qr/^42501: permission denied/,
		"a role cannot write its credits: $sql");
}
like(sq(q{SELECT sqlstate_of($$UPDATE docextract.credit_accounts SET balance = 1$$)}), qr/^42809: /,
	'not even a superuser writes through the view');
is(sq(q{SET ROLE carol; SELECT count(*) FROM docextract.credit_slots WHERE role = 'alice'::regrole}), '0',
	"carol sees none of alice's slots");
for my $f ('credit_slot_note(NULL)', 'credit_slot_held()', 'credit_slot_cache()',
	"credit_settle_note('carol', 1000000)", "credit_settle_known('carol', 1)",
	"credit_available_after('carol', 1)")
{
	like(sq("SET ROLE carol; SELECT sqlstate_of(\$\$SELECT docextract.$f\$\$)"), qr/^42501: /,
		"a role cannot call docextract.$f");
}

# -- many submits in one transaction: the slot is read once, not once a submit -------
# (Each submit updating its slot would leave a row version per submit for the
# next to walk through: a COPY of n rows would cost n^2.)
sq("SELECT docextract.grant_credits('alice', 100, 'bulk')");
is(sq(qq{SET ROLE alice; BEGIN;
	SELECT count(*) FROM (SELECT docextract.extract_document('$pdf', '$tid', '{"force": true}')
	                        FROM generate_series(1, 60)) s \\g /dev/null
	SELECT n_tup_upd <= 8 FROM pg_stat_xact_user_tables
	 WHERE relid = 'docextract.credit_slots'::regclass;
	COMMIT;}), 't', 'sixty submits in one transaction update the credit slots at most eight times');

# -- many settles in one statement: the role's credits are summed once, not once a row ----
# (A bulk cancel releases each row's credits and writes the role's available
# credits in its ledger entry; summed per row over the deltas not folded
# yet, which the cancels themselves add to, n cancels cost n^2.)
my $bulk = 1000;
my $half = $bulk / 2;
sq("SELECT docextract.grant_credits('alice', $half, 'bulk cancel'), docextract.grant_credits('carol', $half, 'bulk cancel')");
# Two roles' rows, cancelled alternately by a superuser.
is(sq(qq{BEGIN;
	CREATE TEMP TABLE bulk (id uuid, owner text);
	GRANT ALL ON bulk TO alice, carol;
	SET ROLE alice;
	INSERT INTO bulk SELECT docextract.extract_document('$pdf', '$tid', '{"force": true}'), 'alice'
	  FROM generate_series(1, $half);
	SET ROLE carol;
	INSERT INTO bulk SELECT docextract.extract_document('$cpdf', '$ctid', '{"force": true}'), 'carol'
	  FROM generate_series(1, $half);
	RESET ROLE;
	CREATE TEMP TABLE fetched AS SELECT idx_tup_fetch FROM pg_stat_xact_user_tables
	 WHERE relid = 'docextract.credit_slot_deltas'::regclass;
	SELECT count(docextract.cancel_extraction(id))
	  FROM (SELECT id, owner, row_number() OVER (PARTITION BY owner ORDER BY id) AS n FROM bulk
	         ORDER BY n, owner) b \\g /dev/null
	SELECT (SELECT s.idx_tup_fetch FROM pg_stat_xact_user_tables s
	         WHERE s.relid = 'docextract.credit_slot_deltas'::regclass) - f.idx_tup_fetch < 4 * $bulk
	  FROM fetched f;
	COMMIT;}), 't', "$bulk cancels of two roles' rows, alternately, in one statement read the credit deltas about once each");
for my $role ('alice', 'carol')
{
	is(sq(qq{SELECT count(*) FROM (
		  SELECT available_after - lag(available_after) OVER (ORDER BY id) AS moved, credits
		    FROM (SELECT * FROM docextract.credit_ledger WHERE role = '$role'::regrole AND kind = 'release'
		           ORDER BY id DESC LIMIT $half) r) l
		WHERE moved IS DISTINCT FROM credits}), '1',
		"each of $role\'s releases moves $role\'s available credits in the ledger by its own credits (all but the first)");
	is(sq(qq{SELECT available_after FROM docextract.credit_ledger WHERE role = '$role'::regrole
		ORDER BY id DESC LIMIT 1}), balance($role), "... and $role\'s last is $role\'s balance");
}

# A session that asks PL/pgSQL for its strict checks (plpgsql.extra_errors,
# which any role may set) submits as any other: the reservation's
# statements assign each column they read.
my $before = balance('alice');
($rc, $out, $err) = $node->psql('postgres', qq{SET plpgsql.extra_errors = 'all';
	SET plpgsql.extra_warnings = 'all'; SET client_min_messages = warning;
	SET ROLE alice; SELECT count(docextract.extract_document('$pdf', '$tid', '{"force": true}'))});
is("$rc|$out|$err", '0|1|', 'a submit with plpgsql.extra_errors = all reserves without error or warning');
is(balance('alice'), $before - 1, '... its page reserved once');

# A transaction's first submit reserves in reserve.c, before its INSERT, and
# the trigger reserve_credits does not run for it; a later submit in the
# same transaction (its slot remembered) is the trigger's.
is(sq(qq{SET track_functions = 'pl'; SET ROLE alice; BEGIN;
	SELECT docextract.extract_document('$pdf', '$tid', '{"force": true}') \\g /dev/null
	SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE funcname = 'reserve_credits';
	SELECT docextract.extract_document('$pdf', '$tid', '{"force": true}') \\g /dev/null
	SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE funcname = 'reserve_credits';
	ROLLBACK;}), "0\n1", "a transaction's first submit reserves without the trigger's call; its second calls it");
is(balance('alice'), $before - 1, '... rolled back, they hold nothing');

$node->stop;
done_testing();
