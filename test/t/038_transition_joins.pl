# A statement that changes n extractions costs their triggers n, not n^2:
# announce_status() and count_outcome() pair each row's old and new version
# (transition tables) without comparing every pair, even when their kept
# plans were made by a call that changed one row; the worker's batch store
# joins no two of its CTEs.  The plans are read from auto_explain
# (log_analyze), not timed: a nested loop over the two transition tables
# rejects n^2 - n row pairs in its join filter.  And worker_stats.in_flight
# counts an extraction whose classification request is in flight, read
# through the partial index of live classifying rows.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;

my $n = 2000;
my $srv = start_model_server();
# No worker serves the database at first (databases names another one), so
# the pending rows stay pending until the bulk UPDATE; no autovacuum, whose
# analyze would make the triggers plan again between the two statements.
my $node = new_node('joins', conf => qq{
shared_preload_libraries = 'docextract,auto_explain'
autovacuum = off
docextract.databases = 'not_yet'
docextract.workers = 1
});
sub sq { return $node->safe_psql('postgres', $_[0]); }

my $explain = q{
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_timing = off;
SET auto_explain.log_nested_statements = on;
};

# The plans auto_explain logged since byte offset $from, each with its query.
sub plans_since
{
	my ($from) = @_;
	my $log = slurp_file($node->logfile, $from);
	return ($log =~ /LOG:  duration: [\d.]+ ms  plan:\n(.*?)(?=^\S|\z)/msg);
}
sub rejected_pairs
{
	my $sum = 0;
	$sum += $_ for ($_[0] =~ /Rows Removed by Join Filter: (\d+)/g);
	return $sum;
}

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}')});
my $template = add_invoice_template($node);
my $doc = sq("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('" . fixture('invoice.pdf') . "'))");
sq(qq{SET client_min_messages = error;
	SELECT count(docextract.extract_document('$doc', '$template', '{"force": true}')) FROM generate_series(0, $n)});

# -- one cancel, then a bulk UPDATE of n rows, in one session --------------------------
# The cancel (one row) makes both triggers' kept plans, at one row per
# transition table; the UPDATE then cancels the n others.
my $from = -s $node->logfile;
sq(qq{$explain
	SELECT docextract.cancel_extraction(id) FROM docextract.extractions
	 WHERE status = 'pending' ORDER BY created_at DESC LIMIT 1;
	UPDATE docextract.extractions SET status = 'cancelled', completed_at = clock_timestamp()
	 WHERE status = 'pending'});
my @plans = plans_since($from);
for my $t ([ 'announce_status', qr/Query Text: WITH changed AS/ ],
	[ 'count_outcome', qr/Query Text: INSERT INTO docextract\.model_stat_deltas \(model_name, owner, completed/ ])
{
	my ($name, $query) = @$t;
	my @big = grep { /$query/ && /Named Tuplestore Scan .*\(actual rows=$n loops=/ } @plans;
	is(scalar @big, 1, "$name: its statement's plan for the $n-row UPDATE is logged");
	my $plan = $big[0] // '';
	unlike($plan, qr/Nested Loop/, "$name: no nested loop over the transition tables");
	my $pairs = rejected_pairs($plan);
	ok($pairs < $n, "$name: $pairs row pairs rejected by a join filter (a nested loop: n^2 - n)");
}
is(sq(q{SELECT count(*) FROM docextract.events WHERE event = 'extraction.cancelled'}), $n + 1,
	'one extraction.cancelled event per row');
is(sq(q{SELECT sum(cancelled) FROM docextract.model_stat_deltas}), $n + 1,
	'each cancel counted once');

# -- the worker's batch store ---------------------------------------------------------------
# auto_explain in the worker's session too (it reads its database's settings
# when it connects), then the worker starts.
sq(qq{ALTER DATABASE postgres SET auto_explain.log_min_duration = 0;
	ALTER DATABASE postgres SET auto_explain.log_analyze = on;
	ALTER DATABASE postgres SET auto_explain.log_timing = off;
	ALTER SYSTEM SET docextract.databases = 'postgres';
	SELECT pg_reload_conf();});
worker_pid($node);
# Eight requests held at the model server and answered together: the
# worker stores the answers of one wake in one statement.
server_script($srv, map { { hold => 'batch' } } 1 .. 8);
$from = -s $node->logfile;
my @ids = split /\n/, sq(qq{SELECT docextract.extract_document('$doc', '$template', '{"force": true}')
	FROM generate_series(1, 8)});
$node->poll_query_until('postgres',
	"SELECT count(*) = 8 FROM docextract.extractions WHERE status = 'processing'")
  or die 'the eight were never all in flight';
HTTP::Tiny->new->post("$srv->{url}/_release/batch");
is(wait_for_status($node, $_, 'completed', 'failed'), 'completed', 'a held extraction completes') for @ids;
my @stores = grep { /Query Text: WITH [^\n]*INSERT INTO docextract\.results / } plans_since($from);
ok(scalar @stores >= 1, 'the batch store statement is logged (' . scalar(@stores) . ' batches)');
my ($largest) = sort { $b <=> $a } map { /Update on extractions e .*?\(actual rows=(\d+)/ ? $1 : 0 } @stores;
diag("largest batch stored in one statement: " . ($largest // 0) . " rows");
is(rejected_pairs(join('', @stores)), 0, 'the batch store rejects no row pairs in a join filter');
is(sq(q{SELECT count(*) FROM docextract.results}), 8, 'eight results stored');

# -- worker_stats.in_flight counts a classification in flight -------------------------------
sq('ANALYZE docextract.extractions');
server_reset($srv);
server_script($srv, { hold => 'classifying' });
my $id = sq(qq{SELECT docextract.extract_document('$doc', NULL, '{"force": true}')});
$node->poll_query_until('postgres', "SELECT status = 'classifying' FROM docextract.extractions WHERE id = '$id'")
  or die 'never classifying';
is(sq(q{SELECT in_flight || '/' || queued FROM docextract.worker_stats WHERE model_name = 'default'}), '1/0',
	'worker_stats: the extraction classifying is in flight');
like(sq(q{EXPLAIN SELECT in_flight FROM docextract.worker_stats}), qr/extractions_classifying/,
	'read through the partial index of classifying rows, not the history');
HTTP::Tiny->new->post("$srv->{url}/_release/classifying");
like(wait_for_status($node, $id, 'completed', 'failed', 'awaiting_approval'), qr/^(completed|failed|awaiting_approval)$/,
	'released, the classification ends');
is(sq(q{SELECT in_flight FROM docextract.worker_stats WHERE model_name = 'default'}), '0',
	'worker_stats: nothing in flight then');

done_testing();
