# Backups keep the data: pg_dump of a database using docextract, restored
# into a new cluster, holds every row of every table (models and their keys,
# templates with versions, documents, extractions in flight, results,
# credits and their ledger, events, webhooks and deliveries); the restore
# reserves, charges and announces nothing twice; keys stay secret; and the
# restored database extracts, work in flight at the dump included.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $key = 'sk-backup-secret-0123456789';
my $srv = start_model_server(api_key => $key);
my $src = new_node('dumpsrc', credits => 'enforce');
worker_pid($src);

sub src_sql { return $src->safe_psql('postgres', $_[0]); }
sub src_alice { return $src->safe_psql('postgres', "SET ROLE alice; $_[0]"); }

src_sql(qq{
	CREATE ROLE alice LOGIN; GRANT pg_read_server_files TO alice; GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO alice;
	SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', '$key');
	SELECT docextract.add_model('slow', 'openai', '$srv->{url}/v1', 'test-model', '$key',
	                            '{"timeout_ms": 600000, "max_concurrency": 1}');
	SELECT docextract.grant_credits('alice', 50, 'backup test');
	SELECT docextract.add_webhook('$srv->{url}/hooks/backup', 'a-long-shared-secret-for-backup');
	CREATE TABLE public.inbox (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
	ALTER TABLE public.inbox OWNER TO alice;
});
my $tid = add_invoice_template($src, 'alice');
my $tid2 = src_alice(qq{SELECT docextract.update_template('$tid',
	(SELECT schema_definition FROM docextract.templates WHERE id = '$tid'))});
my $invoice = fixture('invoice.pdf');
my $doc = src_alice("SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$invoice'))");

sub submit
{
	my ($options) = @_;
	return src_alice("SELECT docextract.extract_document('$doc', '$tid2', '$options')");
}
my %e;
$e{completed} = submit('{"force": true}');
is(wait_for_status($src, $e{completed}, 'completed', 'failed'), 'completed', 'one completed');
server_script($srv, { status => 400, body => '{"error": {"message": "bad request"}}' });
$e{failed} = submit('{"force": true}');
is(wait_for_status($src, $e{failed}, 'completed', 'failed'), 'failed', 'one failed');
$e{review} = submit('{"force": true, "auto_approve": false}');
is(wait_for_status($src, $e{review}, 'awaiting_approval', 'failed'), 'awaiting_approval',
	'one awaiting approval');
server_script($srv, { delay_ms => 600000 });
$e{processing} = submit('{"force": true, "model": "slow"}');
is(wait_for_status($src, $e{processing}, 'processing'), 'processing', 'one in flight');
$e{pending} = submit('{"force": true, "model": "slow", "seed": 2}');
src_alice(q{CREATE TRIGGER inbox_extract AFTER INSERT ON public.inbox FOR EACH ROW
	EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state')});
src_alice("INSERT INTO public.inbox (pdf) VALUES (pg_read_binary_file('$invoice'))");
$src->poll_query_until('postgres', "SELECT state = 'completed' FROM public.inbox WHERE id = 1")
  or die 'the trigger form did not write back';
# Quiet before the dump: every webhook delivery made.
$src->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM docextract.webhook_deliveries WHERE status = 'pending'")
  or die 'deliveries still pending';

my @tables = qw(models model_keys templates documents extractions results credit_accounts
  credit_ledger events webhooks webhook_secrets webhook_deliveries);
my $checksum = join(' UNION ALL ',
	map { "SELECT '$_', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM docextract.$_ t" }
	  @tables);
my $sequences = q{SELECT string_agg(format('%s=%s', c.relname, pg_sequence_last_value(c.oid)), ' '
                    ORDER BY c.relname) FROM pg_class c
                   WHERE c.relkind = 'S' AND c.relnamespace = 'docextract'::regnamespace};
my $before = src_sql($checksum);
my $seq_before = src_sql($sequences);
ok(src_sql('SELECT count(*) FROM docextract.events') > 10, 'events to keep');

my $dump = "$PostgreSQL::Test::Utils::tmp_check/docextract.dump";
$src->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $src->connstr('postgres') ], 'pg_dump');

# -- restore into a new cluster --------------------------------------------------
# No worker touches the restored database until the checks below are done.
my $dst = new_node('dumpdst', credits => 'enforce', no_extension => 1,
	conf => "docextract.databases = 'postgres'\n");
$dst->safe_psql('postgres', 'CREATE ROLE alice LOGIN; GRANT pg_read_server_files TO alice; GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO alice; CREATE DATABASE restored');
my $listener = $dst->background_psql('restored');
$listener->query_safe('LISTEN docextract');
$dst->command_ok([ 'pg_restore', '--single-transaction', '--exit-on-error', '-d',
		$dst->connstr('restored'), $dump ], 'pg_restore');
sub dst_sql { return $dst->safe_psql('restored', $_[0]); }

is(dst_sql($checksum), $before, 'every table has the same rows after the restore');
is(dst_sql($sequences), $seq_before, 'sequences continue where they were');
unlike($listener->query_safe('SELECT 1'), qr/notification/i, 'the restore notified nothing');
$listener->quit;
is(dst_sql("SELECT docextract.credit_balance('alice')"),
	src_sql("SELECT docextract.credit_balance('alice')"), 'the balance is the same');
for my $secret (qw(model_keys webhook_secrets))
{
	my ($rc, $out, $err) = $dst->psql('restored', "SET ROLE alice; SELECT * FROM docextract.$secret");
	like($err, qr/permission denied/, "$secret unreadable to a role after the restore");
}
is($dst->safe_psql('restored', "SET ROLE alice; SELECT count(*) FROM docextract.extractions"),
	scalar(keys %e) + 1, 'alice sees her extractions in the restored database');

# -- the restored database extracts ----------------------------------------------
$dst->safe_psql('postgres', "ALTER SYSTEM SET docextract.databases = 'restored'");
$dst->append_conf('postgresql.conf', "docextract.poll_interval = '200ms'");
$dst->restart;
is(wait_for_status_in($dst, 'restored', $e{processing}, 'completed', 'failed'), 'completed',
	'the extraction in flight at the dump completes after the restore');
is(wait_for_status_in($dst, 'restored', $e{pending}, 'completed', 'failed'), 'completed',
	'the pending one completes');
my $new = $dst->safe_psql('restored',
	"SET ROLE alice; SELECT docextract.extract_document('$doc', '$tid2', '{\"force\": true}')");
is(wait_for_status_in($dst, 'restored', $new, 'completed', 'failed'), 'completed', 'a new extraction completes');
$dst->safe_psql('restored',
	"SET ROLE alice; INSERT INTO public.inbox (pdf) VALUES (pg_read_binary_file('$invoice'))");
$dst->poll_query_until('restored', "SELECT state = 'completed' FROM public.inbox WHERE id = 2")
  or die 'the restored trigger form did not write back';
pass('the restored trigger form writes back');
is(dst_sql(q{SELECT count(*) FROM (SELECT extraction_id, kind FROM docextract.credit_ledger
          WHERE extraction_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) x}), '0',
	'nothing reserved or charged twice');
is(dst_sql(q{SELECT a.balance - a.reserved FROM docextract.credit_accounts a WHERE a.role = 'alice'::regrole}),
	src_sql("SELECT docextract.credit_balance('alice')") - 2,
	'available credits: those held at the dump are charged, and one page each for the two new extractions');
ok(!$dst->log_contains(qr/duplicate key|terminated by signal/), 'no duplicate ids, no crash');
done_testing();
