# Parsing untrusted documents cannot take a backend down or hang it: poppler
# runs in docextract_parser, a helper spawned with an empty environment and
# only its pipes, under CPU, memory and wall-clock limits.  A huge page tree,
# a deflate bomb and a crashing parser each give a clear 22023 error; cancel
# and statement_timeout interrupt a parse; the server never restarts; one
# helper serves a whole bulk load.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# An API key in the server's environment (as env: secrets are): the
# helper must not see it.  (A backend's own /proc/pid/environ shows its
# process title, not its environment, so only the helper's is checked.)
$ENV{DOCEXTRACT_SANDBOX_SECRET} = 'sk-must-not-leak';
my $node = new_node('sandbox');
delete $ENV{DOCEXTRACT_SANDBOX_SECRET};
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $invoice = fixture('invoice.pdf');
my $tmp = PostgreSQL::Test::Utils::tempdir();
$node->safe_psql('postgres', 'CREATE ROLE tenant');

# The processes whose parent is $ppid: {pid, comm, state, pgrp}.
sub children_of
{
	my ($ppid) = @_;
	my @kids;
	for my $stat (glob '/proc/[0-9]*/stat')
	{
		open(my $fh, '<', $stat) or next;
		my $line = <$fh> // next;
		next unless $line =~ /^(\d+) \((.*)\) (\S) (\d+) (\d+)/s;
		push @kids, { pid => $1, comm => $2, state => $3, pgrp => $5 } if $4 == $ppid;
	}
	return @kids;
}

# Wait until process $pid is gone, zombie included.
sub gone
{
	my ($pid) = @_;
	return wait_until(sub { !-e "/proc/$pid" }, "process $pid to end");
}

sub helpers_of
{
	my ($backend) = @_;
	return grep { $_->{comm} =~ /^docextract_pars/ } children_of($backend);
}

# Run SQL in a new session; returns "SQLSTATE: message" of its error, or ''.
sub sql_error
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	return $err =~ /ERROR:  (\w{5}): ([^\n]*)/ ? "$1: $2" : '';
}

sub add_sql
{
	my ($name, $path) = @_;
	return "SELECT docextract.add_document('$name', pg_read_binary_file('$path'))";
}

# --- the attacks --------------------------------------------------------------

my $python = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';
system($python, "$DxTest::root/test/attack_pdfs.py", 'pages', "$tmp/pages.pdf", 200000) == 0
  or die 'could not build pages.pdf';
system($python, "$DxTest::root/test/attack_pdfs.py", 'bomb', "$tmp/bomb.pdf", 4096) == 0
  or die 'could not build bomb.pdf';
cmp_ok(-s "$tmp/pages.pdf", '<', 20 * 1024 * 1024, 'the page tree is within max_document_size');
cmp_ok(-s "$tmp/bomb.pdf", '<', 5 * 1024 * 1024, 'the bomb is a few MB (4 GB inflated)');

my $docs_before = $node->safe_psql('postgres', 'SELECT count(*) FROM docextract.documents');

like(sql_error("SET docextract.parser_timeout = '3s';" . add_sql('pages.pdf', "$tmp/pages.pdf")),
	qr/^22023: could not parse document "pages\.pdf": the parser (took longer than docextract\.parser_timeout \(3000 ms\)|used more CPU time)/,
	'200,000 pages sharing one content stream: 22023 when the parser runs out of time');

like(sql_error("SET docextract.parser_timeout = '20s'; SET docextract.parser_memory_limit = '256MB';"
		. add_sql('bomb.pdf', "$tmp/bomb.pdf")),
	qr/^22023: could not parse document "bomb\.pdf": the parser (was killed by signal 6|took longer than|used more CPU time)/,
	'a deflate bomb: 22023 when the parser hits its memory (or time) limit');

is(sql_error("SET docextract.parser_fault = 'crash';" . add_sql('invoice.pdf', $invoice)),
	'22023: could not parse document "invoice.pdf": the parser was killed by signal 11',
	'a parser that crashes: 22023, killed by signal 11');
is(sql_error("SET docextract.parser_fault = 'crash'; SELECT docextract.pdf_text(pg_read_binary_file('$invoice'))"),
	'22023: could not parse document "(bytes)": the parser was killed by signal 11',
	'pdf_text runs in the parser too');
is(sql_error("SET docextract.parser_fault = 'hang'; SET docextract.parser_timeout = '1s';"
		. add_sql('invoice.pdf', $invoice)),
	'22023: could not parse document "invoice.pdf": the parser took longer than docextract.parser_timeout (1000 ms)',
	'a parser that never answers: 22023 at docextract.parser_timeout');
is(sql_error("SET docextract.parser_fault = 'hang'; SET statement_timeout = '1s';"
		. add_sql('invoice.pdf', $invoice)),
	'57014: canceling statement due to statement timeout',
	'statement_timeout interrupts a parse');

is($node->safe_psql('postgres', 'SELECT count(*) FROM docextract.documents'), $docs_before,
	'nothing stored by the failed calls');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
	'the server never restarted');

# --- limits are the superuser's --------------------------------------------

for my $setting ('parser_fault = crash', "parser_timeout = '1h'", "parser_memory_limit = '100GB'")
{
	is(sql_error("SET ROLE tenant; SET docextract.$setting"),
		'42501: permission denied to set parameter "docextract.' . (split / /, $setting)[0] . '"',
		"an ordinary role cannot set docextract.$setting");
}

# --- pdf_text: size limit, STABLE ---------------------------------------------

is(sql_error("SET docextract.max_document_size = '1kB'; SELECT docextract.pdf_text(pg_read_binary_file('$invoice'))"),
	'22023: document "(bytes)" is 1176 bytes, more than docextract.max_document_size (1024 bytes)',
	'pdf_text has the size limit of add_document');
is($node->safe_psql('postgres', "SELECT provolatile FROM pg_proc WHERE oid = 'docextract.pdf_text(bytea)'::regprocedure"),
	's', 'pdf_text is STABLE');
like(sql_error('CREATE TABLE pdfs (b bytea); CREATE INDEX ON pdfs (docextract.pdf_text(b))'),
	qr/^42P17: functions in index expression must be marked IMMUTABLE/, 'no index can run pdf_text');

# --- one session: the helper, its isolation, crashes, cancel -------------------

my $s = $node->background_psql('postgres', on_error_stop => 0);

# What the session printed on stderr while running $sql (and what it had
# queued before).
sub session_error
{
	my ($sql) = @_;
	$s->query($sql);
	my $err = $s->{stderr};
	$s->{stderr} = '';
	return $err;
}

$s->query_safe('\set VERBOSITY verbose');
my $backend = $s->query_safe('SELECT pg_backend_pid()');
my @none = helpers_of($backend);
is(scalar @none, 0, 'no helper before the first document');
$s->query_safe(add_sql('first.pdf', $invoice));
my @helpers = helpers_of($backend);
is(scalar @helpers, 1, 'the first document started one helper');
my $helper = $helpers[0]{pid};

is(slurp_file("/proc/$helper/environ"), '', 'the helper has an empty environment');
my %fds = map { (m{/(\d+)$})[0] => readlink($_) } glob "/proc/$helper/fd/*";
is_deeply([ grep { $fds{$_} !~ /^pipe:/ && $fds{$_} ne '/dev/null' } sort keys %fds ], [],
	'the helper has only pipes and /dev/null: no socket, no file of the server');
cmp_ok(scalar keys %fds, '<=', 4, 'its stdin, stdout, stderr and the pipe from its child');
like($fds{0}, qr/^pipe:/, 'its stdin is a pipe');
like($fds{1}, qr/^pipe:/, 'its stdout is a pipe');
is($fds{2}, '/dev/null', 'its stderr is /dev/null');
my $limits = slurp_file("/proc/$helper/limits");
like($limits, qr/^Max core file size\s+0\s+0\s/m, 'no core files');
like($limits, qr/^Max address space\s+1073741824\s+1073741824\s/m, 'address space limited to parser_memory_limit');
isnt($helpers[0]{pgrp}, $backend, 'the helper has a process group of its own');

# A crashing child costs the document, not the helper.
like(session_error("SET docextract.parser_fault = 'crash'; " . add_sql('crash.pdf', $invoice)), qr/22023: could not parse document "crash\.pdf": the parser was killed by signal 11/,
	'crash in the session: 22023');
$s->query_safe('RESET docextract.parser_fault');
like($s->query_safe(add_sql('after-crash.pdf', $invoice)), qr/^[0-9a-f-]{36}$/, 'the session works after the crash');
is(join(',', map { $_->{pid} } helpers_of($backend)), $helper, 'the same helper serves it');

# Cancel while the parser hangs: the wait ends at once, the helper and its
# child are killed and reaped, the next document starts a new helper.
$s->query_safe("SET docextract.parser_fault = 'hang'; SET docextract.parser_timeout = '1h'");
$s->{stdin} .= add_sql('slow.pdf', $invoice) . ";\n";
$s->{run}->pump_nb;
$node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE pid = $backend")
  or die 'the backend never waited for the parser';
my ($hung) = grep { $_->{comm} =~ /^docextract_pars/ } children_of($helper);
ok($hung, 'the helper has forked a child for the document');
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($backend)");
my $cancelled = session_error('SELECT 1');
my $took = time - $t0;
like($cancelled, qr/57014: canceling statement due to user request/, 'cancel during a parse: 57014');
cmp_ok($took, '<', 60, sprintf('cancel returned promptly (%.2fs, parser_timeout is 1h)', $took));
ok(!-e "/proc/$helper", 'the helper was killed and reaped');
ok(gone($hung->{pid}), "the helper's child was killed");
$s->query_safe('RESET docextract.parser_fault; RESET docextract.parser_timeout');
like($s->query_safe(add_sql('after-cancel.pdf', $invoice)), qr/^[0-9a-f-]{36}$/, 'the session works after the cancel');
@helpers = helpers_of($backend);
is(scalar @helpers, 1, 'one new helper');
isnt($helpers[0]{pid}, $helper, 'a new helper');
$helper = $helpers[0]{pid};

# Someone kills the helper itself mid-parse: a clear error, and the next
# document starts another.
$s->query_safe("SET docextract.parser_fault = 'hang'; SET docextract.parser_timeout = '1h'");
$s->{stdin} .= add_sql('killed.pdf', $invoice) . ";\n";
$s->{run}->pump_nb;
$node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE pid = $backend")
  or die 'the backend never waited for the parser';
kill 'KILL', $helper;
like(session_error('SELECT 1'), qr/22023: could not parse document "killed\.pdf": the parser was killed by signal 9/,
	'the helper killed mid-parse: 22023');
$s->query_safe('RESET docextract.parser_fault; RESET docextract.parser_timeout');
like($s->query_safe(add_sql('after-kill.pdf', $invoice)), qr/^[0-9a-f-]{36}$/, 'the session works after that');
ok(gone($helper), 'the killed helper was reaped');
$helper = (helpers_of($backend))[0]{pid};

# A new memory limit takes a new helper.
$s->query_safe("SET docextract.parser_memory_limit = '512MB'");
$s->query_safe(add_sql('smaller.pdf', $invoice));
@helpers = helpers_of($backend);
is(scalar @helpers, 1, 'one helper after parser_memory_limit changed');
isnt($helpers[0]{pid}, $helper, 'a new one');
$helper = $helpers[0]{pid};
like(slurp_file("/proc/$helper/limits"), qr/^Max address space\s+536870912\s+536870912\s/m,
	'with the new limit');

# The helper dies with its backend.
$node->safe_psql('postgres', "SELECT pg_terminate_backend($backend)");
$s->quit;
ok(gone($helper), 'the helper exits when its backend does');

# --- a bulk load reuses one helper ----------------------------------------------

my $n = 300;
my ($ret, $out, $err) = $node->psql('postgres', "SET client_min_messages = debug1; \\timing on
	SELECT count(docextract.add_document('bulk-' || i || '.pdf', pg_read_binary_file('$invoice')))
	  FROM generate_series(1, $n) i;");
like($out, qr/^$n$/m, "$n documents in one statement");
my @starts = $err =~ /started the document parser/g;
is(scalar @starts, 1, 'one helper for all of them');
my ($ms) = $out =~ /Time: ([\d.]+) ms/;
note(sprintf('bulk add_document: %.2f ms per document', $ms / $n));
diag(sprintf('bulk add_document: %.2f ms per document (%d documents)', $ms / $n, $n));

is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
	'the server never restarted');
done_testing();
