# DROP EXTENSION docextract CASCADE while the workers are busy: requests in
# flight at a model server that holds them, extractions pending behind them,
# a stream of extractions answered at once, webhook deliveries failing and
# falling due again, write-backs of the trigger form in flight (a stream of
# rows answered at once, whose write-backs a user's trigger slows down; it
# reads one of the extension's tables, as users' triggers do).  The
# workers, the write-back worker too, take their tables' locks without
# waiting and step aside for DDL on the schema, so every DROP succeeds at its
# first try and no deadlock is ever detected.  In half of the rounds the DROP
# is held open while the held answers arrive, then rolled back: the work goes
# on and completes, none of it failed, every row written back.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use HTTP::Tiny;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $ROUNDS = 20;
my $FAST = 20;		# per round, besides the 4 held at the model server
my $ROWS = 30;		# trigger-form rows per round answered at once, besides the 2 held

my $srv = start_model_server();
my $node = new_node('drop', no_extension => 1, conf => q{
docextract.webhook_allowed_destinations = '127.0.0.1/32'
docextract.webhook_retry_backoff = '10ms'
docextract.webhook_max_attempts = 1000
docextract.webhook_disable_after = 1000000
deadlock_timeout = '50ms'
});
my $s = $node->background_psql('postgres', on_error_stop => 0);
$s->set_query_timer_restart();	# the timeout is per query, not for the whole test
sub sq
{
	my $out = $s->query($_[0]);
	die "query failed: $s->{stderr}" if $s->{stderr} =~ /ERROR/;
	$s->{stderr} = '';
	return $out;
}
# The same in a session of its own, which may hold a DROP open.
my $ddl = $node->background_psql('postgres', on_error_stop => 0);
$ddl->set_query_timer_restart();
sub ddl
{
	$ddl->query($_[0]);
	my $err = $ddl->{stderr} =~ /ERROR/ ? $ddl->{stderr} : undef;
	$ddl->{stderr} = '';
	return $err;
}
sub release
{
	HTTP::Tiny->new->post("$srv->{url}/_release/r$_[0]")->{success} or die "release r$_[0] failed";
}
# Wait for a condition checked every 20 ms, for at most 3 minutes.
sub sq_until { my ($q) = @_; return wait_until(sub { sq($q) eq 't' }); }
sub asides { my @l = slurp_file($node->logfile) =~ /stepping aside/g; return scalar @l; }

my $pdf = fixture('invoice.pdf');
sq(qq{CREATE TABLE public.invoices (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
	CREATE TABLE public.fixture AS SELECT pg_read_binary_file('$pdf') AS pdf;
	CREATE FUNCTION public.slow_write_back() RETURNS trigger LANGUAGE plpgsql AS
	  \$\$BEGIN PERFORM pg_sleep(0.02); PERFORM 1 FROM docextract.documents LIMIT 1; RETURN NEW; END\$\$;
	CREATE TRIGGER invoices_slow BEFORE UPDATE ON public.invoices FOR EACH ROW
	  EXECUTE FUNCTION public.slow_write_back();});

# The extension, models, a template, webhooks whose receiver keeps failing,
# the trigger form on a table; extractions, 4 requests held at the model
# server, a stream of others answered at once, trigger-form rows among them
# whose write-backs are under way.
sub queue_work
{
	my ($round) = @_;
	server_reset($srv);
	hook_script($srv, map { { status => 500 } } 1 .. 2000);
	server_script($srv, map { { hold => "r$round" } } 1 .. 4);
	sq(qq{CREATE EXTENSION docextract;
		SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL,
		  '{"max_concurrency": 8, "max_retries": 0}');
		SELECT docextract.add_model('fast', 'openai', '$srv->{url}/v1', 'test-model', NULL,
		  '{"max_concurrency": 4, "max_retries": 0}');
		SELECT docextract.add_webhook('$srv->{url}/hooks/r$round/' || g, 'drop-test-secret-0123456789')
		  FROM generate_series(1, 5) g;
		SELECT docextract.create_system_template('invoice', '$DxTest::INVOICE_SCHEMA');
		CREATE TRIGGER invoices_extract AFTER INSERT ON public.invoices FOR EACH ROW
		  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state');
		SELECT docextract.add_document('invoice.pdf', pdf) FROM public.fixture;
		SELECT docextract.extract_document(d.id, t.id, jsonb_build_object('force', true, 'seed', g))
		  FROM docextract.documents d, docextract.templates t, generate_series(1, 2) g WHERE t.name = 'invoice';
		INSERT INTO public.invoices (pdf) SELECT pdf FROM public.fixture, generate_series(1, 2);});
	wait_until(sub { server_stats($srv)->{inflight} >= 4 }) or die "round $round: nothing held";
	sq(qq{SELECT docextract.extract_document(d.id, t.id, jsonb_build_object('model', 'fast', 'force', true, 'seed', g))
		FROM docextract.documents d, docextract.templates t, generate_series(1, $FAST) g WHERE t.name = 'invoice'});
	sq(qq{INSERT INTO public.invoices (pdf) SELECT pdf FROM public.fixture, generate_series(1, $ROWS)});
	sq_until(q{SELECT count(*) > 0 FROM docextract.extractions WHERE status = 'completed'})
	  or die "round $round: nothing completed";
	sq_until(q{SELECT count(*) > 0 FROM public.invoices WHERE state = 'completed'})
	  or die "round $round: nothing written back";
	sq_until(q{SELECT count(*) > 0 FROM docextract.webhook_deliveries WHERE attempts > 1})
	  or die "round $round: no delivery retried";
}

my ($first_try, $rolled_back_ok, $stepped_aside) = (0, 0, 0);

for my $round (1 .. $ROUNDS)
{
	queue_work($round);
	if ($round % 2 == 0)
	{
		# The DROP holds its locks while the held answers reach the worker,
		# which steps aside; then it is rolled back.
		my $before = asides();
		my $err = ddl('BEGIN; DROP EXTENSION docextract CASCADE;');
		diag("round $round: the DROP to roll back failed: $err") if $err;
		release($round);
		wait_until(sub { server_stats($srv)->{inflight} == 0 }) or die "round $round: answers held";
		# The worker, told its answers arrived, steps aside (it says so once).
		$stepped_aside = wait_until(sub { asides() > $before }) if $round == 2;
		ddl('ROLLBACK');
		my $done = sq_until(q{SELECT count(*) FILTER (WHERE status NOT IN ('completed', 'failed', 'cancelled')) = 0
			FROM docextract.extractions});
		my $bad = sq(q{SELECT string_agg(id || ' ' || status || ': ' || coalesce(error_message, ''), E'\n')
			FROM docextract.extractions WHERE status <> 'completed'});
		diag("round $round: not completed:\n$bad") if $bad ne '';
		my $n = sq('SELECT count(*) FROM docextract.extractions');
		diag("round $round: " . ($err // '') . " done $done, $n extractions") if $err || !$done || $n < 4 + $FAST + $ROWS;
		my $written = sq_until(q{SELECT count(*) FILTER (WHERE state IS DISTINCT FROM 'completed') = 0
			FROM public.invoices});
		my $wb = sq(q{SELECT count(*) FROM docextract.extractions
			WHERE target_table IS NOT NULL AND (writeback_due IS NOT NULL OR writeback_error IS NOT NULL)});
		diag("round $round: written back: $written, write-backs not done or failed: $wb") if !$written || $wb ne '0';
		$rolled_back_ok++ if !$err && $done && $bad eq '' && $n >= 4 + $FAST + $ROWS && $written && $wb eq '0';
	}
	my $err = ddl('DROP EXTENSION docextract CASCADE');
	diag("round $round: DROP EXTENSION failed: $err") if $err;
	$first_try++ unless $err;
	release($round);
	for (1 .. 10)
	{
		last unless $err && ($err = ddl('DROP EXTENSION IF EXISTS docextract CASCADE'));
	}
	sq('TRUNCATE public.invoices');
}
is($first_try, $ROUNDS, "every DROP EXTENSION CASCADE with work queued succeeded at its first try ($ROUNDS rounds)");
is($rolled_back_ok, $ROUNDS / 2,
	'after each rolled-back DROP, all the queued work completed, none of it failed, every row was written back');
ok($stepped_aside, '... the worker stepped aside while the DROP held the schema, and said so');
my @deadlocks = slurp_file($node->logfile) =~ /^.*deadlock detected.*$/mg;
is(scalar @deadlocks, 0, 'no deadlock was ever detected')
  or diag(join("\n", @deadlocks[0 .. ($#deadlocks < 9 ? $#deadlocks : 9)]));

# After the last DROP: the extension comes back, and its workers take up work at once.
queue_work($ROUNDS + 1);
release($ROUNDS + 1);
ok(sq_until(q{SELECT count(*) FILTER (WHERE status = 'completed') = count(*) FROM docextract.extractions}),
	'created again, the extension processes its whole queue');
ok(sq_until(qq{SELECT count(*) = 2 + $ROWS FROM public.invoices WHERE state = 'completed'}), '... write-backs included')
  or diag(sq(q{SELECT string_agg(concat_ws(' ', status, writeback_due, writeback_error), E'\n')
	FROM docextract.extractions WHERE target_table IS NOT NULL}) . "\n" .
	sq(q{SELECT string_agg(concat_ws(' ', backend_type, state, wait_event_type, wait_event, query), E'\n')
	FROM pg_stat_activity WHERE backend_type LIKE 'docextract%'}));

$s->quit;
$ddl->quit;
done_testing();
