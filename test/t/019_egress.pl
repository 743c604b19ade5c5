# Network egress is a policy: webhooks of roles that are not superusers
# connect only where docextract.webhook_allowed_destinations allows (default:
# public addresses), checked on the address actually connected to; a
# superuser's webhook may go anywhere; proxies from the server's environment
# are ignored; redirects are not followed; slow receivers cannot starve the
# job queue (deliveries have their own in-flight budget).
#
# Traffic goes to servers on 127.0.0.1 only.  Private, link-local, metadata
# and public addresses are checked with docextract.egress_allowed(), which
# connects nowhere.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $model = start_model_server();
my $recv = start_model_server();	# the webhook receiver
my $proxy = start_model_server();	# what the environment names as proxy

# The server starts with proxies in its environment: they must not be used.
local $ENV{http_proxy} = $proxy->{url};
local $ENV{HTTP_PROXY} = $proxy->{url};
local $ENV{https_proxy} = $proxy->{url};
local $ENV{ALL_PROXY} = $proxy->{url};
local $ENV{NO_PROXY} = '';
my $node = new_node('egress', conf => q{
docextract.webhook_retry_backoff = '100ms'
docextract.webhook_max_attempts = 2
docextract.webhook_timeout = '120s'
docextract.max_inflight = 2
docextract.max_webhook_inflight = 2
});
delete @ENV{qw(http_proxy HTTP_PROXY https_proxy ALL_PROXY NO_PROXY)};

sub sq { return $node->safe_psql('postgres', $_[0]); }
sub as { my ($role, $sql) = @_; return sq("SET ROLE $role; $sql"); }
sub err_of
{
	my ($role, $sql) = @_;
	my $set = defined $role ? "SET ROLE $role;" : '';
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$set $sql", on_error_stop => 1);
	return $err;
}
# Change the policy; wait until sessions (and the worker, signalled by the
# postmaster before any new session sees it) have the new value.
sub set_policy
{
	my ($value) = @_;
	my $set = defined $value ? "SET docextract.webhook_allowed_destinations = '$value'"
	  : 'RESET docextract.webhook_allowed_destinations';
	sq("ALTER SYSTEM $set; SELECT pg_reload_conf()");
	my $want = $value // 'public';
	$node->poll_query_until('postgres', "SELECT current_setting('docextract.webhook_allowed_destinations') = '$want'")
	  or die "the policy did not change to $want";
}

sq(qq{SELECT docextract.add_model('default', 'openai', '$model->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE ROLE alice LOGIN;});
my $secret = 'alice-secret-0123456789';
my $tid = add_invoice_template($node, 'alice');
my $pdf = fixture('invoice.pdf');
my $doc = sq("SELECT pg_read_binary_file('$pdf') AS b \\gset
	SET ROLE alice; SELECT docextract.add_document('invoice.pdf', :'b')");
my $seed = 0;
sub extract_as_alice
{
	$seed++;
	return as('alice', "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": $seed}')");
}

# -- the policy, checked without connecting anywhere ---------------------------------
my %refused = map { $_ => 1 } ('10.0.0.1', '172.16.0.1', '172.31.255.254', '192.168.1.1', '169.254.169.254',
	'100.64.0.1', '127.0.0.1', '127.8.9.10', '0.0.0.0', '224.0.0.1', '255.255.255.255', '192.0.2.1',
	'198.18.0.1', '::1', '::', 'fe80::1', 'fc00::1', 'fd00:ec2::254', '::ffff:127.0.0.1',
	'::ffff:169.254.169.254', '::ffff:10.1.2.3', '64:ff9b::a9fe:a9fe', '2001:db8::1', 'ff02::1', '2002:a00:1::1');
my @allowed = ('8.8.8.8', '1.1.1.1', '2606:4700:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808');
my @addresses = (sort(keys %refused), @allowed);
my $values = join(',', map { "('$_')" } @addresses);
my %got = map { split /\|/ } split /\n/,
  as('alice', "SELECT a, docextract.egress_allowed(a::inet) FROM (VALUES $values) v(a)");
is_deeply([ grep { $got{$_} eq 'f' } @addresses ], [ sort keys %refused ],
	'loopback, private, shared, link-local (metadata), unspecified, multicast, documentation, ULA, mapped and NAT64 forms: refused');
is_deeply([ grep { $got{$_} eq 't' } @addresses ], \@allowed, 'public IPv4 and IPv6 addresses: allowed');
is(as('alice', "SELECT docextract.egress_allowed('169.254.169.254', true)"), 't',
	"a superuser's webhook may go anywhere");
like(err_of('alice', "SET docextract.webhook_allowed_destinations = 'all'"),
	qr/cannot be changed now/, 'a role cannot change the policy for its session');
like(err_of(undef, "ALTER SYSTEM SET docextract.webhook_allowed_destinations = 'public, intranet'"),
	qr/"intranet" is neither an address, a CIDR range/, 'a policy that does not parse is refused, naming the bad item');
like(err_of(undef, "ALTER SYSTEM SET docextract.webhook_allowed_destinations = '10.0.0.0/33'"),
	qr/"10.0.0.0\/33" is neither/, '... a prefix too long for its family too');

# -- a webhook to an IP address the policy refuses: refused at add_webhook -----------
for my $url ("$recv->{url}/hooks/a", "http://[::1]:$recv->{port}/hooks/a", 'http://169.254.169.254/latest/meta-data/',
	'http://10.0.0.1/x', "http://[::ffff:127.0.0.1]:$recv->{port}/hooks/a", "http://0x7f000001:$recv->{port}/hooks/a")
{
	like(err_of('alice', "SELECT docextract.add_webhook('$url', '$secret')"),
		qr/ERROR:  22023: webhook url ".*": destination \S+ is not allowed by docextract.webhook_allowed_destinations/,
		"add_webhook('$url') by a role: 22023, naming the policy");
}
is(sq('SELECT count(*) FROM docextract.webhooks'), '0', '... nothing stored');

# -- a name that resolves to loopback: refused where it connects ---------------------
my $hook_name = as('alice', "SELECT docextract.add_webhook('http://localhost:$recv->{port}/hooks/name', '$secret', '{extraction.completed}')");
my $e = extract_as_alice();
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'the extraction completes');
$node->poll_query_until('postgres',
	"SELECT status = 'failed' FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_name'")
  or die 'the delivery did not fail';
like(sq("SELECT last_error FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_name'"),
	qr/^the destination's address is not allowed by docextract.webhook_allowed_destinations$/,
	'a webhook whose name resolves to loopback: each attempt fails at connect, naming the policy (not the address)');
is(scalar @{ hooks_received($recv) }, 0, '... and the receiver got nothing');
is(server_stats($recv)->{connections}, 0, '... not even a connection');

# -- the policy widened: delivered ------------------------------------------------------
set_policy('public, 127.0.0.0/8, ::ffff:192.168.7.0/120');
is(as('alice', q{SELECT string_agg(a || '=' || docextract.egress_allowed(a::inet), ' ') FROM
	unnest('{127.0.0.1,::ffff:127.0.0.2,::1,10.0.0.1,192.168.7.9,192.168.8.1}'::text[]) a}),
	'127.0.0.1=true ::ffff:127.0.0.2=true ::1=false 10.0.0.1=false 192.168.7.9=true 192.168.8.1=false',
	'a widened policy: its ranges (a mapped range as its IPv4 range), still nothing else');
my $hook_ip = as('alice', "SELECT docextract.add_webhook('$recv->{url}/hooks/ip', '$secret', '{extraction.completed}')");
$e = extract_as_alice();
wait_for_status($node, $e, 'completed');
$node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM docextract.webhook_deliveries d JOIN docextract.events v ON v.id = d.event_id
	  WHERE v.extraction_id = '$e' AND d.status = 'delivered'")
  or die 'not delivered under the widened policy';
is_deeply([ sort map { $_->{path} } @{ hooks_received($recv) } ], [ '/hooks/ip', '/hooks/name' ],
	'with 127.0.0.0/8 allowed, both webhooks are delivered (the name over 127.0.0.1, its ::1 refused)');

# -- back to the default: a superuser's webhook still reaches loopback -------------------
set_policy(undef);
my $hook_su = sq("SELECT docextract.add_webhook('$recv->{url}/hooks/super', 'super-secret-0123456789', '{extraction.completed}')");
server_reset($recv);
$e = extract_as_alice();
wait_for_status($node, $e, 'completed');
$node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM docextract.webhook_deliveries d JOIN docextract.events v ON v.id = d.event_id
	  WHERE v.extraction_id = '$e' AND d.status <> 'pending'")
  or die 'deliveries not settled';
is_deeply([ map { $_->{path} } @{ hooks_received($recv) } ], [ '/hooks/super' ],
	"default policy: the superuser's webhook is delivered to loopback, the role's two are not");
like(sq("SELECT string_agg(DISTINCT d.last_error, '; ') FROM docextract.webhook_deliveries d JOIN docextract.events v ON v.id = d.event_id
	  WHERE v.extraction_id = '$e' AND d.webhook_id IN ('$hook_ip', '$hook_name')"),
	qr/^the destination's address is not allowed by docextract.webhook_allowed_destinations$/,
	'... an IP webhook added while allowed is refused at connect once the policy changes');

# -- no redirects, no proxies, model URLs superuser-only ---------------------------------
as('alice', "SELECT docextract.drop_webhook('$_')") for ($hook_ip, $hook_name);
server_reset($recv);
hook_script($recv, { status => 302, headers => { Location => "$recv->{url}/hooks/redirected" } });
$e = extract_as_alice();
wait_for_status($node, $e, 'completed');
$node->poll_query_until('postgres',
	"SELECT d.status = 'delivered' FROM docextract.webhook_deliveries d JOIN docextract.events v ON v.id = d.event_id
	  WHERE v.extraction_id = '$e' AND d.webhook_id = '$hook_su'")
  or die 'not delivered after the redirect';
is_deeply([ map { "$_->{path} $_->{status}" } @{ hooks_received($recv) } ], [ '/hooks/super 302', '/hooks/super 200' ],
	'a 302 is a failed attempt: the Location is never followed, the retry goes to the webhook URL');
is(server_stats($proxy)->{connections}, 0, 'the proxy named in the server environment got no connection');
is(sq("SELECT has_function_privilege('alice', 'docextract.add_model(text, text, text, text, text, jsonb)', 'EXECUTE')
	|| ' ' || has_table_privilege('alice', 'docextract.models', 'INSERT, UPDATE')"), 'false false',
	'model base URLs stay superuser-only: a role can neither call add_model nor write docextract.models');

# -- slow receivers do not starve the job queue -------------------------------------------
# max_inflight 2, max_webhook_inflight 2: three deliveries whose receiver never
# answers (held: only the 120 s webhook_timeout ends them) hold two delivery
# slots (the third waits), while three jobs complete.
sq("SELECT docextract.drop_webhook('$hook_su')");
server_reset($recv);
hook_script($recv, map { { hold => 'never' } } 1 .. 3);
my $hook_slow = sq("SELECT docextract.add_webhook('$recv->{url}/hooks/slow', 'super-secret-0123456789', '{extraction.queued}')");
my @ids = split /\n/, as('alice', 'BEGIN;' . join('', map {
	"SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": " . (100 + $_) . "}');" } 1 .. 3) . 'COMMIT;');
is(wait_for_status($node, $_, 'completed', 'failed'), 'completed', "job $_ completes") for @ids;
is(sq("SELECT count(*) FILTER (WHERE in_flight) || ' ' || count(*) FILTER (WHERE NOT in_flight AND attempts = 0)
	FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_slow'"), '2 1',
	'... while two slow deliveries are in flight and the third waits for a delivery slot');
is(scalar @{ hooks_received($recv) }, 0, '... none of them answered yet');

done_testing();
