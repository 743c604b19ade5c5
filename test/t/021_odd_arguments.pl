# Every SQL function is safe on NULL and odd arguments.  As an unprivileged
# role, every function PUBLIC may execute (the list comes from pg_proc, so new
# functions are covered) is called with NULL in each argument, and with empty,
# wrong-shaped and extreme values; the server never restarts, the session
# survives every call, and each bad call gets an error whose SQLSTATE says
# what was wrong (never XX000), or a sane result.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $srv = start_model_server(delay_ms => 0);
my $node = new_node('odd_arguments');
sub sq { return $node->safe_psql('postgres', $_[0]); }
sub as_eve { return $node->safe_psql('postgres', $_[0], extra_params => [ '-U', 'eve' ]); }
my $pdf = fixture('invoice.pdf');

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE ROLE eve LOGIN;
	CREATE TABLE public.fixture AS SELECT pg_read_binary_file('$pdf') AS pdf;
	GRANT SELECT ON public.fixture TO PUBLIC;
	-- Runs q and undoes it (so each call starts from the same state):
	-- 'ok' or the SQLSTATE and message of its error.
	CREATE FUNCTION public.dx_try(q text) RETURNS text LANGUAGE plpgsql AS \$\$
	DECLARE st text; msg text;
	BEGIN
	    BEGIN
	        EXECUTE q;
	        RAISE EXCEPTION USING ERRCODE = 'DXOK0';
	    EXCEPTION WHEN OTHERS THEN
	        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
	    END;
	    RETURN CASE WHEN st = 'DXOK0' THEN 'ok' ELSE st || ': ' || msg END;
	END \$\$;});
my $tid = as_eve(qq{SELECT docextract.create_template('invoice', '$DxTest::INVOICE_SCHEMA')});
my $doc = as_eve(q{SELECT docextract.add_document('e.pdf', f.pdf) FROM public.fixture f});
my $done = as_eve(qq{SELECT docextract.extract_document('$doc', '$tid')});
my $awaiting = as_eve(qq{SELECT docextract.extract_document('$doc', '$tid', '{"auto_approve": false}')});
wait_for_status($node, $done, 'completed');
wait_for_status($node, $awaiting, 'awaiting_approval');
# No webhook of eve's is stored (dx_try undoes each call): the webhook
# functions meet an id that does not exist, and no delivery is ever sent.
my $hook = '00000000-0000-0000-0000-000000000001';

my $schema = $DxTest::INVOICE_SCHEMA;
# Working values, by argument name and then by type.
my %good_by_name = (
	extraction_id => "'$done'::uuid", extraction_ids => "ARRAY['$done']::uuid[]",
	document_id => "'$doc'::uuid", document_ids => "ARRAY['$doc']::uuid[]",
	template_id => "'$tid'::uuid", webhook_id => "'$hook'::uuid",
	content => '(SELECT f.pdf FROM public.fixture f)', filename => "'odd.pdf'",
	name => "'odd template'", role => "'eve'::name", schema_definition => "'$schema'::jsonb",
	data => q{'{"general": {"total_amount": 1}, "table": []}'::jsonb},
	value => q{'"1,234.50"'::jsonb}, format_type => "'number'", format => "'csv'",
	options => q{'{}'::jsonb}, url => "'$srv->{url}/hooks/odd'",
	secret => "'0123456789abcdef0123456789abcdef'", enabled => 'true', timestamp => '1::bigint',
	body => "'{}'", amount => '1::bigint', old_status => "'pending'", new_status => "'completed'",
	address => "'192.0.2.1'::inet", for_superuser => 'false');
my %good_by_type = (uuid => 'gen_random_uuid()', text => "'x'", jsonb => "'{}'::jsonb",
	bytea => '(SELECT f.pdf FROM public.fixture f)', bigint => '1::bigint', integer => '1', boolean => 'true',
	'uuid[]' => "ARRAY['$done']::uuid[]", 'text[]' => 'NULL::text[]', name => 'current_user',
	regrole => 'current_user::regrole');

# Odd values, by type; a few more by argument name.
my $deep = '[' x 5000 . ']' x 5000;
my $deep_obj = '{"a":' x 3000 . '1' . '}' x 3000;
my %odd_by_type = (
	inet => [ "'0.0.0.0/0'::inet", "'::'::inet", "'::ffff:127.0.0.1/128'::inet", "'255.255.255.255'::inet",
		"'fe80::1%eth0'::inet" ],
	uuid => [ "'00000000-0000-0000-0000-000000000000'::uuid", "'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid",
		'gen_random_uuid()' ],
	text => [ "''", "' '", "'%s%s%s%n%x'", "repeat('x', 100000)", "E'line\\nbreak\\ttab'", "'ünï ☃'",
		"'''; DROP TABLE x; --'" ],
	jsonb => [ "'null'", "'[]'", "'{}'", "'\"x\"'", "'0'", "'-1e400'", "'1e1000'", "'true'", "'[null]'",
		"'{\"\": null}'", "'$deep'", "'$deep_obj'", q{'{"general": null, "table": null}'},
		q{'{"general": [], "table": {}}'}, q{'{"general": {"a": {"b": [1, {"c": null}]}}, "table": [null, 1, "x"]}'},
		q{'{"general_part": null, "table_part": null}'}, q{'{"general_part": []}'},
		q{'{"general_part": {"f": null}}'}, q{'{"general_part": {"f": {"format_type": null}}}'},
		q{'{"general_part": {"f": {"name": 1, "format_type": "multiple_choice", "format_options": null, "position": "x"}}}'},
		q{'{"general_part": {"f": {"name": "F", "format_type": "multiple_choice", "format_options": [null, 1, {}]}}}'},
		q{'{"general_part": {"f": {"name": "F", "format_type": "text", "position": 1e300}}, "table_part": "x"}'},
		q{'{"rules": null}'}, q{'{"rules": [null, 1, "x", {}]}'},
		q{'{"rules": [{"rule_type": "compare_totals", "set_1": null, "set_2": [null], "tolerance": "x"}]}'},
		q{'{"rules": [{"rule_type": "required", "targets": [null, 1, ""]}]}'},
		q{'{"model": null, "temperature": "x"}'}, q{'{"max_retries": 1e100}'}, q{'{"seed": 1e30}'},
		q{'{"max_retries": -1}'}, q{'{"timeout_ms": 9223372036854775807}'}, q{'{"max_concurrency": -5}'},
		q{'{"requests_per_minute": 1e20}'}, q{'{"pages": null, "split": null}'},
		q{'{"force": "yes", "auto_approve": null}'}, q{'{"additional_instructions": "\u0000"}'},
		q{'{"global_instructions": null, "general_prompt": [], "table_prompt": {}}'} ],
	bytea => [ "''::bytea", "'\\x00'::bytea", "'%PDF-'::bytea", "'%PDF-1.4 garbage'::bytea",
		"'\\x89504e470d0a1a0a'::bytea", "'\\xffd8ff'::bytea", "'\\x000000186674797068656963'::bytea",
		"convert_to(repeat('x', 21 * 1024 * 1024), 'UTF8')" ],
	bigint => [ '0::bigint', '(-1)::bigint', '9223372036854775807::bigint', '(-9223372036854775808)::bigint' ],
	integer => [ '0', '-1', '2147483647', '(-2147483648)' ],
	boolean => [ 'false' ],
	'uuid[]' => [ "'{}'::uuid[]", "'{NULL}'::uuid[]", "ARRAY[NULL, '$done']::uuid[]",
		"ARRAY[['$done', '$done'], ['$done', '$done']]::uuid[]", "'[5:5]={$done}'::uuid[]",
		'ARRAY(SELECT gen_random_uuid() FROM generate_series(1, 10000))' ],
	'text[]' => [ "'{}'::text[]", "'{NULL}'::text[]", "'{\"\"}'::text[]", "'{{a,b},{c,d}}'::text[]",
		"ARRAY['%s%n']", "'{extraction.completed,NULL}'::text[]" ],
	name => [ "''::name", "'no such role'::name", 'repeat(\'x\', 63)::name', "'public'::name",
		"'pg_signal_backend'::name" ]);
my %odd_by_name = (
	format => [ "'CSV'", "'xlsx'", "'quickbooks_csv'", "'json'", "'pdf'" ],
	format_type => [ "'multiple_choice'", "'date'", "'boolean'", "'text'" ],
	url => [ "'http://'", "'https://'", "'ftp://x'", "'http://[::1'", "'http://x/' || repeat('a', 100000)" ],
	secret => [ "repeat('s', 15)" ]);

my @functions = map { [ split /\|/, $_, -1 ] } split /\n/, as_eve(q{
SELECT p.oid::regprocedure, p.proname,
       array_to_string(ARRAY(SELECT a.n FROM unnest(p.proargnames,
                                  coalesce(p.proargmodes, array_fill('i'::"char", ARRAY[coalesce(cardinality(p.proargnames), 0)])))
                                  WITH ORDINALITY a(n, m, o) WHERE a.m IN ('i', 'b', 'v') ORDER BY a.o), ','),
       array_to_string(ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, o)
                             ORDER BY u.o), ',')
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'docextract'::regnamespace AND p.prokind = 'f'
   AND has_function_privilege(p.oid, 'EXECUTE') AND p.prorettype <> 'trigger'::regtype
 ORDER BY 1});
cmp_ok(scalar @functions, '>=', 20, scalar(@functions) . ' functions PUBLIC may execute');

my $started = sq('SELECT pg_postmaster_start_time()');
my $worker = worker_pid($node);
my $s = $node->background_psql('postgres', extra_params => [ '-U', 'eve' ], on_error_stop => 0);
my $pid = $s->query('SELECT pg_backend_pid()');
my (%internal, %states, $calls);
for my $f (@functions)
{
	my ($sig, $proname, $names, $types) = @$f;
	my @names = split /,/, $names, -1;
	my @types = split /,/, $types, -1;
	my @good = map {
		$good_by_name{ $names[$_] // '' } // $good_by_type{ $types[$_] }
		  // die "021_odd_arguments: no value for argument $_ of $sig: extend \%good_by_name"
	} 0 .. $#types;
	# All NULL, then each argument in turn NULL or odd, the others working.
	my @shapes = ([ map { "NULL::$_" } @types ]);
	for my $i (0 .. $#types)
	{
		for my $v ("NULL::$types[$i]", @{ $odd_by_type{ $types[$i] } // [] },
			@{ $odd_by_name{ $names[$i] // '' } // [] })
		{
			my @a = @good;
			$a[$i] = $v;
			push @shapes, \@a;
		}
	}
	# approve()'s corrections need an extraction that awaits approval.
	if ($proname eq 'approve')
	{
		push @shapes, map { [ "'$awaiting'::uuid", $_ ] } "NULL::jsonb", @{ $odd_by_type{jsonb} };
	}
	for my $a (@shapes)
	{
		my $sql = "SELECT * FROM docextract.$proname(" . join(', ', @$a) . ')';
		(my $label = $sql) =~ s/(.{200}).+/$1.../s;
		$s->{stderr} = '';
		my $r = eval { $s->query("SELECT public.dx_try(\$dx\$$sql\$dx\$)") };
		die "the session died on $label: " . ($@ || $s->{stderr}) if !defined $r || $r eq '';
		$calls++;
		$internal{$label} = $r if $r =~ /^XX/;
		$states{ $r eq 'ok' ? 'ok' : substr($r, 0, 5) }++;
	}
}
is($s->query('SELECT pg_backend_pid()'), $pid, "$calls calls, and the session that made them is still there");
$s->quit;
diag('outcomes: ' . join(', ', map { "$_ x$states{$_}" } sort keys %states));
is(join("\n", map { "$_ => $internal{$_}" } sort keys %internal), '',
	'no call ended in an internal error (XX000 and friends)');
is(sq('SELECT pg_postmaster_start_time()'), $started, 'the server never restarted');
is(worker_pid($node), $worker, '... and neither did the worker');

# The reproduced crash, named.
like(as_eve(q{SELECT public.dx_try($$SELECT docextract.extract_sync(f.pdf, NULL) FROM public.fixture f$$)}),
	qr/^(ok$|(0A000|22004|22023): )/, 'extract_sync(<a valid PDF>, NULL): classifies (issue 13), or a clear error');
is(sq('SELECT pg_postmaster_start_time()'), $started, '... and no restart');

done_testing();
