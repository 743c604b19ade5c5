# Upgrading in place: a cluster runs the real 0.1.0 (its library built from
# the release commit, its frozen install script) and is filled by its own
# worker; then the new library is installed, waits while the schema is
# 0.1.0, and ALTER EXTENSION docextract UPDATE brings it to the current
# version with every row kept, keys still secret, pending work completing
# and the trigger form writing back.  The upgraded catalog must equal a
# fresh install's.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $old_install = $ENV{DOCEXTRACT_0_1_0_INSTALL}
  or BAIL_OUT('DOCEXTRACT_0_1_0_INSTALL is not set: run the tests with test/run-tests.sh (make test)');
my $key = 'sk-upgrade-secret-0123456789';
my $srv = start_model_server(api_key => $key);
my $node = new_node('upgrade', install_path => $old_install, credits => 'enforce');
my $new_version = slurp_file("$DxTest::root/docextract.control") =~ /default_version = '([^']+)'/
  ? $1 : die 'no default_version in docextract.control';
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'docextract'"),
	'0.1.0', 'the cluster starts on release 0.1.0');
worker_pid($node);

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub as_alice { return $node->safe_psql('postgres', "SET ROLE alice; $_[0]"); }

# -- fill it, with the 0.1.0 worker doing the work -----------------------------
sql(qq{
	CREATE ROLE alice LOGIN; GRANT pg_read_server_files TO alice; GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO alice;
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"timeout_ms": 600000}');
	SELECT docextract.add_model('slow', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"timeout_ms": 600000, "max_concurrency": 1}');
	SELECT docextract.add_model('retry', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"max_retries": 3, "retry_backoff_ms": 3600000}');
	SELECT docextract.grant_credits('alice', 100, 'upgrade test');
	SELECT docextract.add_webhook('$srv->{url}/hooks/upgrade', 'a-long-shared-secret-for-upgrade');
	CREATE TABLE public.inbox (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
	ALTER TABLE public.inbox OWNER TO alice;
	GRANT CREATE ON SCHEMA public TO alice;
});
my $tid = add_invoice_template($node, 'alice');
my $tid2 = as_alice(qq{SELECT docextract.update_template('$tid',
	(SELECT schema_definition FROM docextract.templates WHERE id = '$tid'))});
my $invoice = fixture('invoice.pdf');
my $doc = as_alice("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$invoice'))");
my $png = as_alice("SELECT docextract.add_document('receipt.png', pg_read_binary_file('"
	  . fixture('receipt.png') . "'))");

sub submit
{
	my ($d, $options) = @_;
	return as_alice("SELECT docextract.extract_document('$d', '$tid2', '$options')");
}

my %e;
$e{completed} = submit($doc, '{"force": true}');
is(wait_for_status($node, $e{completed}, 'completed', 'failed'), 'completed', '0.1.0 completes');
server_script($srv, { status => 400, body => '{"error": {"message": "bad request"}}' });
$e{failed} = submit($doc, '{"force": true}');
is(wait_for_status($node, $e{failed}, 'completed', 'failed'), 'failed', '0.1.0 fails a 400');
$e{review} = submit($png, '{"force": true, "auto_approve": false}');
is(wait_for_status($node, $e{review}, 'awaiting_approval', 'failed'), 'awaiting_approval',
	'0.1.0 waits for approval');
server_script($srv, { status => 500, body => 'down' });
$e{retrying} = submit($doc, '{"force": true, "model": "retry"}');
is(wait_for_status($node, $e{retrying}, 'retrying', 'failed'), 'retrying', '0.1.0 retries later');
server_script($srv, { delay_ms => 600000 });
$e{processing} = submit($doc, '{"force": true, "model": "slow"}');
is(wait_for_status($node, $e{processing}, 'processing'), 'processing', 'a request in flight');
$e{pending} = submit($png, '{"force": true, "model": "slow"}');
$e{cancelled} = submit($doc, '{"force": true, "model": "slow", "seed": 1}');
ok(as_alice("SELECT docextract.cancel_extraction('$e{cancelled}')") eq 't', 'cancelled');
as_alice(q{CREATE TRIGGER inbox_extract AFTER INSERT ON public.inbox FOR EACH ROW
	EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state')});
as_alice("INSERT INTO public.inbox (pdf) VALUES (pg_read_binary_file('$invoice'))");
$node->poll_query_until('postgres', "SELECT state = 'completed' FROM public.inbox WHERE id = 1")
  or die 'the 0.1.0 trigger form did not write back';
is(sql("SELECT status FROM docextract.extractions WHERE id = '$e{pending}'"), 'pending',
	'one extraction still pending');
# Quiet before the checksums: every webhook delivery made (one in flight
# would change its row before the stop).
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM docextract.webhook_deliveries WHERE status = 'pending'")
  or die 'deliveries still pending';

# What must survive: every row of every table, as it was.
my @tables = qw(models model_keys templates documents extractions results credit_accounts
  credit_ledger events webhooks webhook_secrets webhook_deliveries);
# A table's rows, as its 0.1.0 columns hold them (the update may add columns).
my %columns;
$columns{$_} = sql(qq{SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
	FROM pg_attribute WHERE attrelid = 'docextract.$_'::regclass AND attnum > 0 AND NOT attisdropped})
  for @tables;
sub rows_checksum
{
	my ($t) = @_;
	return sql("SELECT md5(string_agg(x::text, '|' ORDER BY x::text))
		FROM (SELECT $columns{$t} FROM docextract.$t) x");
}
my %before;
$before{$_} = rows_checksum($_) for @tables;
my $ledger_before = sql('SELECT count(*) FROM docextract.credit_ledger');

# -- the package upgrade: the new library, the old schema ------------------------
$node->stop;
$node->{_install_path} = undef;    # from here on, the build under test
# The worker looks at the queue only when told (a commit, or the reload
# below): what follows checks rows that it must not have touched yet.
$node->append_conf('postgresql.conf', "docextract.poll_interval = '1h'");
$node->start;
ok($node->wait_for_log(
		qr/docextract schema in database "postgres" is version 0\.1\.0, this library is \Q$new_version\E; waiting/),
	'the new library waits for ALTER EXTENSION UPDATE, saying so');
is(sql("SELECT status FROM docextract.extractions WHERE id = '$e{pending}'"), 'pending',
	'nothing processed against the old schema');
for my $t (@tables)
{
	is(rows_checksum($t), $before{$t}, "$t unchanged across the library upgrade");
}

# -- ALTER EXTENSION UPDATE ------------------------------------------------------
sql('ALTER EXTENSION docextract UPDATE');
is(sql("SELECT extversion FROM pg_extension WHERE extname = 'docextract'"), $new_version,
	"updated to $new_version");
for my $t (@tables)
{
	is(rows_checksum($t), $before{$t}, "$t: every row kept by the update");
}
# The worker resumes at its next look at the queue.
sql("ALTER SYSTEM SET docextract.poll_interval = '200ms'; SELECT pg_reload_conf()");
is(wait_for_status($node, $e{processing}, 'completed', 'failed'), 'completed',
	'the request in flight at the upgrade is sent again and completes');
is(wait_for_status($node, $e{pending}, 'completed', 'failed'), 'completed',
	'pending work completes');
is(sql("SELECT status FROM docextract.extractions WHERE id = '$e{retrying}'"), 'retrying',
	'a retry keeps its schedule');
sql("UPDATE docextract.extractions SET next_attempt_at = now() WHERE id = '$e{retrying}'");
is(wait_for_status($node, $e{retrying}, 'completed', 'failed'), 'completed', 'the retry completes');
my $approved = json_of(as_alice("SELECT docextract.approve('$e{review}')"));
is($approved->{status}, 'completed', 'an extraction awaiting approval before the upgrade is approved');

# Keys stay secret.
for my $secret (qw(model_keys webhook_secrets))
{
	my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE alice; SELECT * FROM docextract.$secret");
	like($err, qr/permission denied/, "$secret still unreadable to a role");
}

# The trigger form writes back, for a row inserted before and one after.
as_alice("INSERT INTO public.inbox (pdf) VALUES (pg_read_binary_file('$invoice'))");
$node->poll_query_until('postgres', "SELECT state = 'completed' FROM public.inbox WHERE id = 2")
  or die 'the trigger form did not write back after the upgrade';
is(sql("SELECT extracted->'general'->>'invoice_number' FROM public.inbox WHERE id = 2"),
	'INV-2026-0042', 'the trigger form writes back after the upgrade');

# Credits: the account agrees with its ledger, each extraction charged once.
is(sql(q{SELECT a.balance = sum(l.credits) FILTER (WHERE l.kind = 'grant')
                          - coalesce(sum(l.credits) FILTER (WHERE l.kind = 'charge'), 0)
           AND a.reserved = coalesce(sum(l.credits) FILTER (WHERE l.kind = 'reserve'), 0)
                          - coalesce(sum(l.credits) FILTER (WHERE l.kind IN ('charge', 'release')), 0)
          FROM docextract.credit_accounts a JOIN docextract.credit_ledger l ON l.role = a.role
         WHERE a.role = 'alice'::regrole GROUP BY a.balance, a.reserved}), 't',
	'the credit account agrees with its ledger');
is(sql(q{SELECT count(*) FROM (SELECT extraction_id FROM docextract.credit_ledger
          WHERE kind = 'charge' GROUP BY extraction_id HAVING count(*) > 1) x}), '0',
	'nothing charged twice');
ok(sql('SELECT count(*) FROM docextract.credit_ledger') > $ledger_before, 'new work was charged');

# -- the catalog: upgraded == fresh ------------------------------------------------
sql('CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION docextract');
my $upgraded = catalog_lines($node, 'postgres');
my $fresh = catalog_lines($node, 'fresh');
ok(length($fresh) > 10000, 'the catalog listing is not empty');
if ($upgraded eq $fresh)
{
	pass('an upgraded catalog equals a fresh install\'s');
}
else
{
	my %u = map { $_ => 1 } split /\n/, $upgraded;
	my %f = map { $_ => 1 } split /\n/, $fresh;
	diag("only upgraded:\n" . join("\n", grep { !$f{$_} } sort keys %u));
	diag("only fresh:\n" . join("\n", grep { !$u{$_} } sort keys %f));
	fail('an upgraded catalog equals a fresh install\'s');
}

ok(!$node->log_contains(qr/terminated by signal|server process .* was terminated/),
	'no backend crashed');
done_testing();
