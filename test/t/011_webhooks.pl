# The outbox and webhooks on a real cluster: every status change is an event
# row; deliveries are signed (HMAC-SHA256 over timestamp.body), retried with
# backoff after 500s, never repeated after a 2xx, survive a server restart
# and a worker killed mid-request, and a webhook that keeps failing is
# disabled.  Roles see and receive only their own events.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use Digest::SHA qw(hmac_sha256_hex);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use HTTP::Tiny;

my $srv = start_model_server();
my $node = new_node('webhooks', conf => q{
docextract.webhook_retry_backoff = '200ms'
docextract.webhook_max_attempts = 4
docextract.webhook_disable_after = 5
restart_after_crash = on
# The receiver is on loopback, which roles' webhooks may not reach by default.
docextract.webhook_allowed_destinations = '127.0.0.1/32'
});
sub sq { return $node->safe_psql('postgres', $_[0]); }
sub as { my ($role, $sql) = @_; return sq("SET ROLE $role; $sql"); }
sub err_of
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "SET ROLE $role; $sql", on_error_stop => 1);
	return $err;
}

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; GRANT USAGE ON SCHEMA public TO alice, bob;});
my $secret = 'alice-secret-0123456789';

# -- bad input: a clear error, nothing stored -----------------------------------
like(err_of('alice', "SELECT docextract.add_webhook('ftp://x/y', '$secret')"),
	qr/webhook url must be an http:\/\/ or https:\/\/ URL, got "ftp:\/\/x\/y"/, 'a non-http url is refused');
like(err_of('alice', "SELECT docextract.add_webhook('$srv->{url}/hooks/a', 'short')"),
	qr/webhook secret must be at least 16 characters/, 'a short secret is refused');
like(err_of('alice', "SELECT docextract.add_webhook('$srv->{url}/hooks/a', '$secret', '{extraction.completed,extraction.done}')"),
	qr/events\[2\]: "extraction.done" is not a docextract event/, 'an unknown event is refused, named');
like(err_of('alice', "SELECT docextract.add_webhook('$srv->{url}/hooks/a', '$secret', '{}')"),
	qr/events must name at least one event/, 'an empty event list is refused');
is(sq('SELECT count(*) FROM docextract.webhooks'), '0', '... and nothing was stored');

# -- delivery, signatures, who receives what ------------------------------------
my $hook_a = as('alice', "SELECT docextract.add_webhook('$srv->{url}/hooks/alice', '$secret')");
as('bob', "SELECT docextract.add_webhook('$srv->{url}/hooks/bob', 'bob-secret-0123456789')");
like(err_of('alice', 'SELECT secret FROM docextract.webhook_secrets'), qr/permission denied/,
	'a role cannot read a webhook secret back, its own included');
my $tid = add_invoice_template($node, 'alice');
my $pdf = fixture('invoice.pdf');
my $doc = sq("SELECT pg_read_binary_file('$pdf') AS b \\gset
	SET ROLE alice; SELECT docextract.add_document('invoice.pdf', :'b')");
my $e = as('alice', "SELECT docextract.extract_document('$doc', '$tid')");
is(wait_for_status($node, $e, 'completed', 'failed'), 'completed', 'the extraction completes');
$node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM docextract.webhook_deliveries WHERE status = 'delivered' AND webhook_id = '$hook_a'")
  or die 'deliveries did not arrive';
my $got = hooks_received($srv, '/hooks/alice');
# Deliveries run concurrently and may arrive in any order; each carries its
# event_id, which orders them.
is_deeply([ map { $_->{event} } sort { $a->{event_id} <=> $b->{event_id} } map { decode_json_body($_) } @$got ],
	[ 'extraction.queued', 'extraction.started', 'extraction.completed' ],
	'alice received the three events, their event_ids in order');
my $good = 0;
for my $h (@$got)
{
	my $ts = $h->{headers}{'x-docextract-timestamp'};
	$good++ if $h->{headers}{'x-docextract-signature'} eq 'v1=' . hmac_sha256_hex("$ts.$h->{body}", $secret)
	  && abs(time() - $ts) < 60
	  && $h->{headers}{'x-docextract-event'} eq decode_json_body($h)->{event};
}
is($good, 3, 'each carries a valid HMAC-SHA256 signature over timestamp.body, a fresh timestamp, its event header');
my $h0 = $got->[0];
is(sq("SELECT docextract.webhook_signature('$secret', $h0->{headers}{'x-docextract-timestamp'}, \$b\$$h0->{body}\$b\$)"),
	$h0->{headers}{'x-docextract-signature'}, 'webhook_signature() computes the same signature in SQL');
is(decode_json_body($got->[2])->{extraction_id}, $e, 'the body names the extraction');
unlike(join('', map { $_->{body} } @$got), qr/INV-|1469|invoice_number/, 'bodies carry no extracted data');
is(scalar @{ hooks_received($srv, '/hooks/bob') }, 0, "bob's webhook received none of alice's events");
is(as('bob', 'SELECT count(*) FROM docextract.events') . '/' . as('bob', 'SELECT count(*) FROM docextract.webhook_deliveries'),
	'0/0', "bob sees none of alice's events or deliveries");
is(as('alice', "SELECT string_agg(event, ',' ORDER BY id) FROM docextract.events WHERE extraction_id = '$e'"),
	'extraction.queued,extraction.started,extraction.completed', 'the outbox holds every status change');

# -- retries after 500s; never again after the 2xx ------------------------------
as('alice', "SELECT docextract.set_webhook_enabled('$hook_a', false)");
my $hook_r = as('alice', "SELECT docextract.add_webhook('$srv->{url}/hooks/retry', '$secret', '{extraction.completed}')");
hook_script($srv, { status => 500 }, { status => 500 });
$e = as('alice', "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}')");
wait_for_status($node, $e, 'completed');
$node->poll_query_until('postgres',
	"SELECT status = 'delivered' FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r'")
  or die 'retried delivery did not arrive';
$got = hooks_received($srv, '/hooks/retry');
is_deeply([ map { $_->{status} } @$got ], [ 500, 500, 200 ], '500, 500, then delivered');
is(scalar(keys %{ { map { $_->{body} => 1 } @$got } }), 1, '... the same body each time');
is(sq("SELECT attempts || ' ' || response_status FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r'"),
	'3 200', 'the delivery log: 3 attempts, last answer 200');
# The waits are 200 ms and 400 ms, each with ±25 % jitter: 450 ms at least.
cmp_ok($got->[2]{time} - $got->[0]{time}, '>=', 0.75 * (0.2 + 0.4), 'with backoff between attempts');
sleep 2;
is(scalar @{ hooks_received($srv, '/hooks/retry') }, 3, 'nothing is sent again after the 2xx');

# -- a server restart with a delivery pending ---------------------------------------
# The receiver asks for the retry in 300 s, so the delivery is surely still
# pending, not sent again, when the server restarts, however slow the
# machine; after the restart it is made due, and a reload wakes the worker.
hook_script($srv, { status => 503, headers => { 'Retry-After' => '300' } });
$e = as('alice', "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 1}')");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r' AND status = 'pending' AND attempts = 1 AND NOT in_flight")
  or die 'no pending delivery';
$node->restart;
is(sq("SELECT count(*) FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r' AND status = 'pending' AND attempts = 1"),
	'1', 'the delivery is still pending after the restart');
sq("UPDATE docextract.webhook_deliveries SET next_attempt_at = clock_timestamp() WHERE webhook_id = '$hook_r' AND status = 'pending'");
sq('SELECT pg_reload_conf()');
$node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r' AND status = 'delivered'")
  or die 'delivery lost across the restart';
$got = hooks_received($srv, '/hooks/retry');
is_deeply([ map { $_->{status} } @$got[3 .. $#$got] ], [ 503, 200 ], 'a delivery pending across a restart is delivered after it, once');

# -- the worker killed mid-delivery -------------------------------------------------
# The receiver holds the first attempt until the worker is dead; the attempt
# after the restart gets the default answer, 200.
hook_script($srv, { hold => 'cut' });
$e = as('alice', "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 2}')");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r' AND in_flight")
  or die 'no delivery in flight';
wait_until(sub { server_stats($srv)->{hooks_inflight} == 1 }, 'the delivery held by the receiver')
  or die 'the delivery never reached the receiver';
kill 'KILL', worker_pid($node);
$node->poll_query_until('postgres', 'SELECT 1', '1') or die 'server did not come back';
$node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r' AND status = 'delivered'")
  or die 'delivery lost with the worker';
is(sq("SELECT attempts FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_r' ORDER BY id DESC LIMIT 1"), '2',
	'a delivery cut off by kill -9 of the worker is sent again after the restart');
server_release($srv, 'cut');
wait_until(sub { server_stats($srv)->{hooks_inflight} == 0 }, 'the held delivery answered')
  or die 'the held delivery never ended';

# -- disabled after consecutive failures ----------------------------------------------
as('alice', "SELECT docextract.drop_webhook('$hook_r')");
my $hook_b = as('alice', "SELECT docextract.add_webhook('$srv->{url}/hooks/broken', '$secret')");
hook_script($srv, map { { status => 500 } } 1 .. 20);
$e = as('alice', "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 3}')");
$node->poll_query_until('postgres', "SELECT NOT enabled FROM docextract.webhooks WHERE id = '$hook_b'")
  or die 'webhook never disabled';
like(as('alice', "SELECT disabled_reason FROM docextract.webhooks WHERE id = '$hook_b'"),
	qr/^disabled after 5 consecutive failed deliveries; the last: HTTP 500/, 'disabled after 5 consecutive failures, saying why');
# An attempt already on its way when the webhook was disabled may still
# land: counted once none is in flight, at the worker or the receiver.
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM docextract.webhook_deliveries
	WHERE webhook_id = '$hook_b' AND in_flight") or die 'a delivery stayed in flight';
wait_until(sub { server_stats($srv)->{hooks_inflight} == 0 }, 'no delivery held at the receiver');
my $sent = scalar @{ hooks_received($srv, '/hooks/broken') };
cmp_ok($sent, '>=', 5, 'at least five attempts were made (one more may have been in flight)');
$e = as('alice', "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true, \"seed\": 4}')");
wait_for_status($node, $e, 'completed');
sleep 1;
is(scalar @{ hooks_received($srv, '/hooks/broken') }, $sent, 'a disabled webhook is sent nothing');
like(err_of('bob', "SELECT docextract.set_webhook_enabled('$hook_b', true)"), qr/webhook \S+ does not exist/,
	"bob cannot enable alice's webhook");

# -- a queue full of slow jobs does not hold events back -------------------------
# max_inflight 8: eight jobs whose model answers are held fill the job slots;
# four more jobs wait in the queue, yet all twelve queued events go out:
# deliveries have slots of their own (max_webhook_inflight).  When they shared
# max_inflight, a worker that claimed the jobs before it saw the deliveries'
# signal (it spun, so it was usually mid-loop) left the events waiting for the
# jobs: "8 completed".  The last four are committed once the slots are full,
# so that their events come after the jobs were claimed, every time.
server_reset($srv);
server_script($srv, map { { hold => 'slow' } } 1 .. 12);
my $hook_q = as('alice', "SELECT docextract.add_webhook('$srv->{url}/hooks/queued', '$secret', '{extraction.queued}')");
my $submit = sub {
	sq('SET ROLE alice; BEGIN;' . join('', map { "SELECT docextract.extract_document('$doc', '$tid', '{\"force\": true}');" } 1 .. $_[0]) . 'COMMIT;');
};
$submit->(8);
ok(wait_inflight($srv, 8), 'the job slots are full: 8 requests in flight (max_inflight), their answers held');
$submit->(4);
$node->poll_query_until('postgres',
	"SELECT count(*) = 12 FROM docextract.webhook_deliveries WHERE webhook_id = '$hook_q' AND status = 'delivered'")
  or die 'queued events not delivered';
is(server_stats($srv)->{inflight}, 8, 'the 12 queued events were delivered while the jobs were still in flight');
my $of_q = "id IN (SELECT extraction_id FROM docextract.events e JOIN docextract.webhook_deliveries d ON d.event_id = e.id
	            WHERE d.webhook_id = '$hook_q')";
is(sq("SELECT count(*) FILTER (WHERE status = 'completed') || ' completed, ' || count(*) FILTER (WHERE status = 'pending') || ' pending'
	FROM docextract.extractions WHERE $of_q"), '0 completed, 4 pending',
	'... before any of those jobs completed, four of them not even claimed');
server_release($srv, 'slow');
ok($node->poll_query_until('postgres', "SELECT count(*) = 12 FROM docextract.extractions WHERE status = 'completed' AND $of_q"),
	'... and once the answers come, the 12 jobs complete');

done_testing();

sub decode_json_body { return JSON::PP::decode_json($_[0]{body}); }
