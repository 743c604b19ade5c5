# Lost wake-ups.  The job worker claims with SKIP LOCKED and sleeps until a
# commit wakes it; here its poll is an hour, so a job that no one wakes
# waits an hour.  A transaction that locked a queued job's row and then
# rolled back (a cancel) made a claim skip that row: its abort must wake
# the worker.  A prepared transaction's work is woken for at COMMIT PREPARED.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use Time::HiRes qw(time);

my $srv = start_model_server();
my $node = new_node('wakeups', conf => "docextract.poll_interval = '1h'\nmax_prepared_transactions = 2\n");
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
	'{"max_concurrency": 1, "max_retries": 0}')});
my $tid = add_invoice_template($node);
my $doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");
sub submit { return sq("SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": $_[0]}')"); }
sub status { return sq("SELECT status FROM docextract.extractions WHERE id = '$_[0]'"); }

# -- a cancel rolled back ----------------------------------------------------------------
# A holds the model's only slot; B waits, queued.  A session cancels B and
# holds that; A is released, and the worker's claim after storing A skips
# B's locked row.  The session rolls back: B is queued again.
server_script($srv, { hold => 'a' });
my $a = submit(1);
ok(wait_inflight($srv, 1), "A holds the model's only slot");
my $b = submit(2);
is(status($b), 'pending', 'B waits, queued');
my $s = $node->background_psql('postgres');
$s->query_safe("BEGIN; SELECT docextract.cancel_extraction('$b')");
server_release($srv, 'a');
is(wait_for_status($node, $a, 'completed', 'failed'), 'completed', 'A completes');
# Once it sleeps again, the worker has claimed after storing A: B, locked, was skipped.
$node->poll_query_until('postgres', q{SELECT wait_event_type = 'Extension' AND wait_event = 'Extension'
	FROM pg_stat_activity WHERE backend_type = 'docextract worker'}) or die 'the worker never slept';
is(status($b), 'pending', '... while B, locked by the cancel, is not claimed');
my $t0 = time;
$s->query_safe('ROLLBACK');
$s->quit;
ok($node->poll_query_until('postgres', "SELECT status IN ('completed', 'failed') FROM docextract.extractions WHERE id = '$b'"),
	'the cancel rolled back: B is claimed without waiting for the poll');
is(status($b), 'completed', '... and completes');
cmp_ok(time - $t0, '<', 120, sprintf('... %.1f s after the rollback (the poll is an hour)', time - $t0));

# -- a submit in a prepared transaction ---------------------------------------------------
# Its wake-up cannot fire at PREPARE (nothing is visible yet); COMMIT
# PREPARED, from another session, wakes the worker.
my $c = sq("BEGIN; SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 3}');
	PREPARE TRANSACTION 'submit'");
$node->poll_query_until('postgres', q{SELECT wait_event_type = 'Extension' AND wait_event = 'Extension'
	FROM pg_stat_activity WHERE backend_type = 'docextract worker'}) or die 'the worker never slept';
is(sq("SELECT count(*) FROM docextract.extractions WHERE id = '$c'"), '0', 'a prepared submit is not visible yet');
$t0 = time;
sq("COMMIT PREPARED 'submit'");
ok($node->poll_query_until('postgres', "SELECT status IN ('completed', 'failed') FROM docextract.extractions WHERE id = '$c'"),
	'COMMIT PREPARED: the submit is claimed without waiting for the poll');
is(status($c), 'completed', '... and completes');
cmp_ok(time - $t0, '<', 120, sprintf('... %.1f s after the COMMIT PREPARED', time - $t0));

done_testing();
