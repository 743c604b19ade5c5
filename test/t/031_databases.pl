# Every database: the launcher starts workers wherever the extension exists,
# picks up CREATE/DROP EXTENSION and CREATE DATABASE from a template without
# a restart, steps aside for DROP DATABASE, RENAME and SET TABLESPACE (which
# need the database alone), skips templates, databases that allow no
# connections and those docextract.databases leaves out, and warns when
# nothing will process an extraction.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server();
my $node = new_node('databases', no_extension => 1);
my $invoice = fixture('invoice.pdf');

sub sq { my ($db, $sql) = @_; return $node->safe_psql($db, $sql); }

# The extension, a model, a template and a document in database db.
sub set_up
{
	my ($db) = @_;
	sq($db, 'CREATE EXTENSION docextract');
	sq($db, "SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL)");
	sq($db, "SELECT docextract.create_template('invoice', '$DxTest::INVOICE_SCHEMA', '{}')");
	sq($db, "SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$invoice'))");
}

# Queue an extraction in db and wait for it to complete.
sub extracts
{
	my ($db, $what) = @_;
	my $e = sq($db, q{SELECT docextract.extract_document(
		(SELECT id FROM docextract.documents LIMIT 1), (SELECT id FROM docextract.templates LIMIT 1),
		'{"force": true}')});
	is(wait_for_status_in($node, $db, $e, 'completed', 'failed'), 'completed', $what);
}

sub workers_in
{
	my ($db) = @_;
	return sq('postgres', "SELECT count(*) FROM pg_stat_activity WHERE datname = '$db'
		AND backend_type IN ('docextract worker', 'docextract write-back worker')");
}

sub wait_workers
{
	my ($db, $cond, $what) = @_;
	$node->poll_query_until('postgres', "SELECT count(*) $cond FROM pg_stat_activity
		WHERE datname = '$db' AND backend_type IN ('docextract worker', 'docextract write-back worker')")
	  or die "workers in $db never reached count $cond";
	pass($what);
}

# -- a database other than postgres, the extension created after the start --------
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'docextract launcher'") or die 'no launcher';
wait_workers('postgres', '= 0', 'no worker stays in a database without the extension');
sq('postgres', 'CREATE DATABASE app');
set_up('app');
extracts('app', 'an extension created in database app after the start extracts');
wait_workers('app', '= 2', 'app has its job worker and its write-back worker');

# -- DROP DATABASE with workers running (one of them waiting on the model) ----------
for my $i (1 .. 3)
{
	sq('postgres', "CREATE DATABASE gone$i");
	set_up("gone$i");
	wait_workers("gone$i", '= 2', "gone$i has its workers");
	if ($i == 1)
	{
		server_script($srv, { delay_ms => 60000 });
		sq("gone$i", q{SELECT docextract.extract_document((SELECT id FROM docextract.documents),
			(SELECT id FROM docextract.templates))});
		wait_for_inflight(1);
	}
	my ($rc, $out, $err) = $node->psql('postgres', "DROP DATABASE gone$i");
	is($rc . $err, '0', "DROP DATABASE gone$i succeeds at the first try"
		. ($i == 1 ? ' (a request in flight)' : ''));
}
server_reset($srv);

sub wait_for_inflight
{
	my ($n) = @_;
	wait_inflight($srv, $n);
	is(server_stats($srv)->{inflight}, $n, "$n request(s) in flight");
}

# -- CREATE DATABASE from a database with the extension as its template -------------
my ($rc, $out, $err) = $node->psql('postgres', 'CREATE DATABASE copy1 TEMPLATE app');
is($rc . $err, '0', 'CREATE DATABASE ... TEMPLATE app succeeds while app has workers');
wait_workers('copy1', '= 2', 'the copy gets workers');
extracts('copy1', '... and extracts');
extracts('app', 'app has its workers back and extracts');

# A template database (datistemplate) gets no worker; a copy of it does.
sq('postgres', 'CREATE DATABASE tpl');
set_up('tpl');
wait_workers('tpl', '= 2', 'tpl has workers while it is an ordinary database');
sq('postgres', 'ALTER DATABASE tpl IS_TEMPLATE true');
wait_workers('tpl', '= 0', '... none once it is a template');
($rc, $out, $err) = $node->psql('postgres', 'CREATE DATABASE fromtpl TEMPLATE tpl');
is($rc . $err, '0', 'CREATE DATABASE ... TEMPLATE tpl succeeds');
extracts('fromtpl', 'a database made from a template with the extension extracts');

# -- RENAME and SET TABLESPACE need no other users either ----------------------------------
($rc, $out, $err) = $node->psql('postgres', 'ALTER DATABASE app RENAME TO app2');
is($rc . $err, '0', 'ALTER DATABASE app RENAME TO app2 succeeds while app has workers');
extracts('app2', '... and the renamed database extracts');
my $dir = $node->basedir . '/ts';
mkdir $dir or die "mkdir $dir: $!";
sq('postgres', "CREATE TABLESPACE ts LOCATION '$dir'");
($rc, $out, $err) = $node->psql('postgres', 'ALTER DATABASE app2 SET TABLESPACE ts');
is($rc . $err, '0', 'ALTER DATABASE app2 SET TABLESPACE succeeds while app2 has workers');
extracts('app2', '... and it extracts afterwards');

# -- DROP EXTENSION: the workers leave; CREATE EXTENSION: they come back ------------
sq('copy1', 'DROP EXTENSION docextract CASCADE');
wait_workers('copy1', '= 0', 'DROP EXTENSION: the workers of that database leave');
set_up('copy1');
extracts('copy1', 'CREATE EXTENSION again: workers again, and it extracts');

# -- databases that allow no connections get no worker --------------------------------
sq('postgres', 'ALTER DATABASE copy1 ALLOW_CONNECTIONS false');
wait_workers('copy1', '= 0', 'ALLOW_CONNECTIONS false: no worker');
sq('postgres', 'ALTER DATABASE copy1 ALLOW_CONNECTIONS true');
wait_workers('copy1', '= 2', 'ALLOW_CONNECTIONS true: workers again');

# -- docextract.databases leaves databases out -----------------------------------------
sq('postgres', "ALTER SYSTEM SET docextract.databases = 'app2, copy1'");
sq('postgres', 'SELECT pg_reload_conf()');
wait_workers('fromtpl', '= 0', 'a database docextract.databases does not list loses its workers');
($rc, $out, $err) = $node->psql('fromtpl', q{BEGIN;
	SELECT docextract.extract_document((SELECT id FROM docextract.documents LIMIT 1),
		(SELECT id FROM docextract.templates LIMIT 1), '{"force": true}');
	SELECT docextract.extract_document((SELECT id FROM docextract.documents LIMIT 1),
		(SELECT id FROM docextract.templates LIMIT 1), '{"force": true}');
	COMMIT;});
my @warnings = $err =~ /WARNING:  database "fromtpl" is not in docextract.databases: no worker will process this extraction/g;
is(scalar @warnings, 1, 'extract_document there warns that nothing will process it, once a transaction');
extracts('copy1', 'a listed database still extracts');
sq('postgres', 'ALTER SYSTEM RESET docextract.databases');
sq('postgres', 'SELECT pg_reload_conf()');
$node->poll_query_until('fromtpl', "SELECT count(*) = 0 FROM docextract.extractions
	WHERE status <> 'completed'") or die 'the excluded database\'s backlog never completed';
pass('listed again: its workers come back and complete what was queued meanwhile');
wait_workers('postgres', '= 0', 'still no worker in postgres, which has no extension');

# -- only a database's owner makes its workers step aside ------------------------------
sq('postgres', 'CREATE ROLE mallory LOGIN CREATEDB');
my $before = sq('postgres', "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
	WHERE datname = 'app2' AND backend_type LIKE 'docextract%'");
for my $cmd ('DROP DATABASE app2', 'CREATE DATABASE mine TEMPLATE app2', 'ALTER DATABASE app2 RENAME TO x')
{
	($rc, $out, $err) = $node->psql('postgres', $cmd, extra_params => [ '-U', 'mallory' ]);
	like($err, qr/must be owner|permission denied/, "$cmd refused to a role that does not own it");
}
is(sq('postgres', "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
	WHERE datname = 'app2' AND backend_type LIKE 'docextract%'"), $before, '... and app2 kept its workers');

# -- the launcher stopped: the one started again takes over ----------------------------
my $launcher = sq('postgres', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract launcher'");
sq('postgres', "SELECT pg_terminate_backend($launcher)");
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'docextract launcher' AND pid <> $launcher") or die 'no new launcher';
$node->poll_query_until('postgres', "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = 'app2'
	AND backend_type LIKE 'docextract%' AND pid::text <> ALL (string_to_array('$before', ','))")
  or die 'app2 never got new workers';
pass('a new launcher replaces the workers of the old one');
extracts('app2', '... and they extract');
is(sq('postgres', "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app2'
	AND backend_type = 'docextract worker'"), '1', '... with no worker twice');
ok(!$node->log_contains(qr/being accessed by other users|terminated by signal/),
	'no "being accessed by other users", no crash');
$node->stop;

# -- without the preload library: a warning ----------------------------------------------
my $bare = new_node('nopreload', conf => "shared_preload_libraries = ''\n");
$bare->safe_psql('postgres', "SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL)");
$bare->safe_psql('postgres', "SELECT docextract.create_template('invoice', '$DxTest::INVOICE_SCHEMA', '{}')");
$bare->safe_psql('postgres', "SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$invoice'))");
($rc, $out, $err) = $bare->psql('postgres', q{SELECT docextract.extract_document(
	(SELECT id FROM docextract.documents), (SELECT id FROM docextract.templates))});
like($err, qr/WARNING:  docextract is not loaded through shared_preload_libraries: no worker will process this extraction/,
	'without the preload, extract_document warns that nothing will process the job');
$bare->safe_psql('postgres', q{CREATE TABLE inbox (id serial PRIMARY KEY, pdf bytea, extracted jsonb);
	CREATE TRIGGER x AFTER INSERT ON inbox FOR EACH ROW
	  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted')});
($rc, $out, $err) = $bare->psql('postgres', "INSERT INTO inbox (pdf) VALUES (pg_read_binary_file('$invoice'))");
like($err, qr/WARNING:  docextract is not loaded through shared_preload_libraries/, '... and so does the trigger form');
$bare->stop;
done_testing();
