# No privilege escalation, attacked the way a hostile tenant would.  An
# ordinary login role plants types (domains whose CHECK runs its code),
# views, functions and operators in every schema it can write: its own
# pg_temp, public (made writable here), and the worker's pg_temp (planted
# from its trigger-form table's trigger while the worker writes a result
# back).  Each planted object records who runs it and, run as a superuser,
# makes the attacker superuser.  Then the attacker calls every docextract
# function it may execute (the list comes from pg_proc, so new functions are
# covered) with working arguments and with NULLs, cancels, approves, and has
# the worker complete extractions and write-backs.  Nothing planted may ever
# run as the extension owner or a superuser; no role attribute or grant may
# change.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DxTest;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

# The test's own superuser sessions must not fall for the traps either (a
# superuser whose path holds a writable public schema would): they search
# pg_catalog only.  The attacker's sessions use the default path.
$ENV{PGOPTIONS} = '-c search_path=pg_catalog';
my $srv = start_model_server(delay_ms => 0);
my $node = new_node('privilege');
sub sq { return $node->safe_psql('postgres', $_[0]); }
sub as_mallory
{
	return $node->safe_psql('postgres', "SET search_path = \"\$user\", public;\n$_[0]",
		extra_params => [ '-U', 'mallory' ]);
}
my $pdf = fixture('invoice.pdf');

# What must not change: role attributes, memberships, and every grant on
# docextract's objects, the schemas and the database.
my $state_sql = q{
SELECT string_agg(format('%s %s %s %s %s %s %s %s', r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole,
                         r.rolcreatedb, r.rolcanlogin, r.rolreplication, r.rolbypassrls), E'\n' ORDER BY r.rolname)
  FROM pg_catalog.pg_roles r
UNION ALL SELECT coalesce(string_agg(format('%s in %s', m.member::regrole, m.roleid::regrole), E'\n' ORDER BY 1), '')
  FROM pg_catalog.pg_auth_members m
UNION ALL SELECT string_agg(format('%s %s', c.oid::regclass, c.relacl), E'\n' ORDER BY c.oid::regclass::text)
  FROM pg_catalog.pg_class c WHERE c.relnamespace = 'docextract'::regnamespace
UNION ALL SELECT string_agg(format('%s %s %s', p.oid::regprocedure, p.proacl, p.proconfig), E'\n' ORDER BY 1)
  FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'docextract'::regnamespace
UNION ALL SELECT string_agg(format('%s %s', n.nspname, n.nspacl), E'\n' ORDER BY 1) FROM pg_catalog.pg_namespace n
 WHERE n.nspname !~ '^pg_(toast_)?temp_'
UNION ALL SELECT format('%s', d.datacl) FROM pg_catalog.pg_database d WHERE d.datname = current_database()};

sq(qq{SELECT docextract.add_model('default', 'openai', '$srv->{url}/v1', 'test-model', NULL, '{"max_retries": 0}');
	CREATE ROLE mallory LOGIN;
	GRANT CREATE ON SCHEMA public TO PUBLIC;
	CREATE TABLE public.dx_log (obj text, usr name, sess name, super boolean, pid integer,
	                            at timestamptz DEFAULT clock_timestamp());
	GRANT SELECT, INSERT ON public.dx_log TO PUBLIC;
	-- Sequences do not roll back: a privileged run is counted even if its
	-- transaction fails afterwards.
	CREATE SEQUENCE public.dx_runs; CREATE SEQUENCE public.dx_privileged_runs;
	GRANT USAGE, SELECT ON SEQUENCE public.dx_runs, public.dx_privileged_runs TO PUBLIC;
	CREATE TABLE public.fixture AS SELECT pg_read_binary_file('$pdf') AS pdf;
	GRANT SELECT ON public.fixture TO PUBLIC;});
my $system_tid = sq(qq{SELECT docextract.create_system_template('system invoice', '$DxTest::INVOICE_SCHEMA')});

# -- the attacker's objects --------------------------------------------------------
# dx_spy: the payload.  dx_plant: plants it in the pg_temp of whatever session
# runs it.  Both pin their own path, so they cannot trip over their own traps.
my @types = qw(text uuid jsonb json bytea int2 int4 int8 bool timestamptz timestamp regrole regclass
  regtype regproc regprocedure regnamespace oid name numeric float4 float8 varchar bpchar char
  interval date xid tid record_placeholder);
pop @types;    # (keeps the list easy to extend)
my %aliases = (integer => 'int4', bigint => 'int8', smallint => 'int2', boolean => 'bool',
	int => 'int4', real => 'float4');
my @relations = qw(pg_roles pg_class pg_namespace pg_proc pg_type pg_extension pg_index
  pg_constraint pg_database pg_settings pg_stat_activity pg_trigger pg_operator pg_auth_members
  extractions documents results templates models model_keys credit_accounts credit_ledger events
  webhooks webhook_secrets webhook_deliveries worker_stats fixture m_invoices);
my %readable = map { $_ => 1 } qw(extractions documents results templates models credit_accounts
  credit_ledger events webhooks webhook_deliveries worker_stats);
my $type_list = join(', ', map { "'$_:$_'" } @types) . ', '
  . join(', ', map { "'$_:$aliases{$_}'" } sort keys %aliases);
my $rel_list = join(', ', map {
	my $src = /^pg_/ ? "pg_catalog.$_" : $readable{$_} ? "docextract.$_" : 'pg_catalog.pg_class';
	"'$_:$src'" } @relations);

as_mallory(qq{
CREATE FUNCTION public.dx_spy(obj pg_catalog.text) RETURNS pg_catalog.bool
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS \$\$
DECLARE su pg_catalog.bool;
BEGIN
    SELECT r.rolsuper INTO su FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    PERFORM pg_catalog.nextval('public.dx_runs'::pg_catalog.regclass);
    IF su OR current_user <> 'mallory' THEN
        PERFORM pg_catalog.nextval('public.dx_privileged_runs'::pg_catalog.regclass);
        RAISE WARNING 'dx_spy: % ran as %', obj, current_user;
    END IF;
    INSERT INTO public.dx_log (obj, usr, sess, super, pid)
    VALUES (obj, current_user, session_user, su, pg_catalog.pg_backend_pid());
    IF su THEN
        ALTER ROLE mallory SUPERUSER;
    END IF;
    RETURN true;
END \$\$;

CREATE FUNCTION public.dx_plant(label pg_catalog.text) RETURNS pg_catalog.int4
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS \$\$
DECLARE
    pair pg_catalog.text;
    n pg_catalog.int4 := 0;
    stmts pg_catalog.text[] := ARRAY[]::pg_catalog.text[];
    s pg_catalog.text;
BEGIN
    FOREACH pair IN ARRAY ARRAY[$type_list]::pg_catalog.text[] LOOP
        stmts := stmts || pg_catalog.format('CREATE DOMAIN pg_temp.%I AS pg_catalog.%I CHECK (public.dx_spy(%L))',
            pg_catalog.split_part(pair, ':', 1), pg_catalog.split_part(pair, ':', 2),
            label || ' pg_temp domain ' || pg_catalog.split_part(pair, ':', 1));
    END LOOP;
    FOREACH pair IN ARRAY ARRAY[$rel_list]::pg_catalog.text[] LOOP
        stmts := stmts || pg_catalog.format('CREATE VIEW pg_temp.%I AS SELECT x.* FROM %s x WHERE public.dx_spy(%L)',
            pg_catalog.split_part(pair, ':', 1), pg_catalog.split_part(pair, ':', 2),
            label || ' pg_temp view ' || pg_catalog.split_part(pair, ':', 1));
    END LOOP;
    stmts := stmts || ARRAY[
        'CREATE FUNCTION pg_temp.dx_eq_uuid(a pg_catalog.uuid, b pg_catalog.uuid) RETURNS pg_catalog.bool LANGUAGE sql AS '
          || pg_catalog.quote_literal('SELECT public.dx_spy(' || pg_catalog.quote_literal(label || ' pg_temp =(uuid,uuid)') || ') AND a OPERATOR(pg_catalog.=) b'),
        'CREATE OPERATOR pg_temp.= (LEFTARG = pg_catalog.uuid, RIGHTARG = pg_catalog.uuid, FUNCTION = pg_temp.dx_eq_uuid)',
        'CREATE FUNCTION pg_temp.dx_cat(a pg_catalog.text, b pg_catalog.text) RETURNS pg_catalog.text LANGUAGE sql AS '
          || pg_catalog.quote_literal('SELECT CASE WHEN public.dx_spy(' || pg_catalog.quote_literal(label || ' pg_temp ||(text,text)') || ') THEN pg_catalog.textcat(a, b) END'),
        'CREATE OPERATOR pg_temp.|| (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text, FUNCTION = pg_temp.dx_cat)',
        'CREATE FUNCTION pg_temp.unnest(a pg_catalog.uuid[]) RETURNS SETOF pg_catalog.uuid LANGUAGE sql AS '
          || pg_catalog.quote_literal('SELECT u FROM pg_catalog.unnest(a) u WHERE public.dx_spy(' || pg_catalog.quote_literal(label || ' pg_temp unnest(uuid[])') || ')')];
    FOREACH s IN ARRAY stmts LOOP
        BEGIN
            EXECUTE s;
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'dx_plant: % failed: %', s, SQLERRM;
        END;
    END LOOP;
    RETURN n;
END \$\$;

-- In public: shadows that win over pg_catalog where an argument type matches
-- exactly (pg_catalog takes anyarray, "any", oid or regclass there), and
-- plain copies of the types and operators the extension uses.
CREATE FUNCTION public.unnest(a uuid[]) RETURNS SETOF uuid LANGUAGE sql
    AS \$\$ SELECT u FROM pg_catalog.unnest(a) u WHERE public.dx_spy('public unnest(uuid[])') \$\$;
CREATE FUNCTION public.nextval(s text) RETURNS bigint LANGUAGE sql
    AS \$\$ SELECT CASE WHEN public.dx_spy('public nextval(text)') THEN pg_catalog.nextval(s::pg_catalog.regclass) END \$\$;
CREATE FUNCTION public.quote_ident(s name) RETURNS text LANGUAGE sql
    AS \$\$ SELECT CASE WHEN public.dx_spy('public quote_ident(name)') THEN pg_catalog.quote_ident(s::pg_catalog.text) END \$\$;
CREATE FUNCTION public.pg_has_role(a regrole, b regrole, m text) RETURNS boolean LANGUAGE sql
    AS \$\$ SELECT public.dx_spy('public pg_has_role(regrole,regrole,text)') AND pg_catalog.pg_has_role(a::oid, b::oid, m) \$\$;
CREATE FUNCTION public.pg_has_role(a name, b regrole, m text) RETURNS boolean LANGUAGE sql
    AS \$\$ SELECT public.dx_spy('public pg_has_role(name,regrole,text)') AND pg_catalog.pg_has_role(a, b::oid, m) \$\$;
CREATE FUNCTION public.pg_advisory_xact_lock(k integer) RETURNS void LANGUAGE sql
    AS \$\$ SELECT CASE WHEN public.dx_spy('public pg_advisory_xact_lock(int4)') THEN pg_catalog.pg_advisory_xact_lock(k::bigint) END \$\$;
CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE sql
    AS \$\$ SELECT CASE WHEN public.dx_spy('public format(text,text)') THEN pg_catalog.format(f, a) END \$\$;
CREATE FUNCTION public.dx_jsonb_acc(s jsonb, v jsonb) RETURNS jsonb LANGUAGE sql
    AS \$\$ SELECT CASE WHEN public.dx_spy('public jsonb_agg(jsonb)') THEN coalesce(s, '[]') || jsonb_build_array(v) END \$\$;
CREATE AGGREGATE public.jsonb_agg(jsonb) (SFUNC = public.dx_jsonb_acc, STYPE = jsonb);
CREATE FUNCTION public.dx_eq_regrole(a regrole, b regrole) RETURNS boolean LANGUAGE sql
    AS \$\$ SELECT public.dx_spy('public =(regrole,regrole)') AND a::oid = b::oid \$\$;
CREATE OPERATOR public.= (LEFTARG = regrole, RIGHTARG = regrole, FUNCTION = public.dx_eq_regrole);
CREATE FUNCTION public.dx_eq_regclass(a regclass, b regclass) RETURNS boolean LANGUAGE sql
    AS \$\$ SELECT public.dx_spy('public =(regclass,regclass)') AND a::oid = b::oid \$\$;
CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = regclass, FUNCTION = public.dx_eq_regclass);
CREATE FUNCTION public.dx_eq_uuid_text(a uuid, b text) RETURNS boolean LANGUAGE sql
    AS \$\$ SELECT public.dx_spy('public =(uuid,text)') AND a::text = b \$\$;
CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = text, FUNCTION = public.dx_eq_uuid_text);
CREATE FUNCTION public.dx_eq_text_uuid(a text, b uuid) RETURNS boolean LANGUAGE sql
    AS \$\$ SELECT public.dx_spy('public =(text,uuid)') AND a = b::text \$\$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = uuid, FUNCTION = public.dx_eq_text_uuid);
CREATE FUNCTION public.dx_cat(a text, b text) RETURNS text LANGUAGE sql
    AS \$\$ SELECT CASE WHEN public.dx_spy('public ||(text,text)') THEN pg_catalog.textcat(a, b) END \$\$;
CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = public.dx_cat);
CREATE FUNCTION public.dx_eq_jsonb(a jsonb, b jsonb) RETURNS boolean LANGUAGE sql
    AS \$\$ SELECT public.dx_spy('public =(jsonb,jsonb)') AND a OPERATOR(pg_catalog.=) b \$\$;
CREATE OPERATOR public.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.dx_eq_jsonb);
CREATE DOMAIN public.text AS pg_catalog.text CHECK (public.dx_spy('public domain text'));
CREATE DOMAIN public.jsonb AS pg_catalog.jsonb CHECK (public.dx_spy('public domain jsonb'));
CREATE DOMAIN public.uuid AS pg_catalog.uuid CHECK (public.dx_spy('public domain uuid'));
CREATE VIEW public.pg_roles AS SELECT r.* FROM pg_catalog.pg_roles r WHERE public.dx_spy('public view pg_roles');

-- A runner that keeps the session's own search_path (no SET of its own).
CREATE FUNCTION public.dx_try(q pg_catalog.text) RETURNS pg_catalog.text LANGUAGE plpgsql AS \$\$
DECLARE st pg_catalog.text; msg pg_catalog.text;
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN st || ': ' || msg;
END \$\$;

-- The trigger form, with the attacker's own trigger that plants in whatever
-- session writes the result back.
CREATE TABLE public.m_invoices (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
CREATE FUNCTION public.dx_on_update() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM public.dx_spy('m_invoices trigger');
    PERFORM public.dx_plant('write-back');
    RETURN NULL;
END \$\$;
CREATE TRIGGER m_plant AFTER UPDATE ON public.m_invoices FOR EACH ROW EXECUTE FUNCTION public.dx_on_update();
-- Deferred: it would fire at the commit of whoever wrote the row.
CREATE FUNCTION public.dx_on_commit() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM public.dx_spy('m_invoices deferred trigger');
    RETURN NULL;
END \$\$;
CREATE CONSTRAINT TRIGGER m_at_commit AFTER UPDATE ON public.m_invoices DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.id % 2 = 0) EXECUTE FUNCTION public.dx_on_commit();
});
my $tid = as_mallory(qq{SELECT docextract.create_template('invoice', '$DxTest::INVOICE_SCHEMA')});
as_mallory(qq{CREATE TRIGGER m_extract AFTER INSERT ON public.m_invoices FOR EACH ROW
	EXECUTE FUNCTION docextract.extract_document('$tid', 'pdf', 'extracted', 'state')});
my $doc = as_mallory(q{SELECT docextract.add_document('m.pdf', f.pdf) FROM public.fixture f});
my $spare = as_mallory(q{SELECT docextract.add_document('spare.pdf', f.pdf) FROM public.fixture f});
my $hook = as_mallory(qq{SELECT public.dx_try(\$q\$SELECT docextract.add_webhook('$srv->{url}/hooks/m',
	'0123456789abcdef0123456789abcdef')\$q\$)});
$hook = as_mallory(q{SELECT w.id FROM docextract.webhooks w LIMIT 1});
my $before = sq($state_sql);

# -- the worker's pg_temp: planted from the attacker's trigger, used next ------------
# (Row 1 plants; row 2's deferred trigger would fire at the worker's commit.)
as_mallory('INSERT INTO public.m_invoices (pdf) SELECT f.pdf FROM public.fixture f');
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM docextract.extractions x
	WHERE x.owner = 'mallory'::regrole AND x.target_table IS NOT NULL
	  AND x.status NOT IN ('pending', 'classifying', 'processing', 'retrying')})
  or die 'the first trigger-form extraction did not end';
my $done = as_mallory(qq{SELECT docextract.extract_document('$doc', '$tid', '{"seed": 1}')});
my $awaiting = as_mallory(qq{SELECT docextract.extract_document('$doc', '$tid', '{"seed": 2, "auto_approve": false}')});
as_mallory('INSERT INTO public.m_invoices (pdf) SELECT f.pdf FROM public.fixture f');
wait_for_status($node, $done, 'completed', 'failed');
wait_for_status($node, $awaiting, 'awaiting_approval', 'completed', 'failed');

# -- the attacker's own session: pg_temp planted, every function called -----------
my $s = $node->background_psql('postgres', extra_params => [ '-U', 'mallory' ], on_error_stop => 0);
sq_s(q{SET search_path = "$user", public});
cmp_ok(sq_s(q{SELECT public.dx_plant('session')}), '>=', scalar(@types), 'the traps are planted');
sq_s(q{SELECT 'armed'::text});
is(sq(q{SELECT count(*) > 0 FROM public.dx_log WHERE obj = 'session pg_temp domain text' AND usr = 'mallory'}), 't',
	"... and armed: a cast to text in the attacker's session runs the payload, as the attacker");

# query(), not query_safe(): the payload's WARNING must not end the session.
sub sq_s
{
	$s->{stderr} = '';
	my $r = $s->query($_[0]);
	diag("stderr: $s->{stderr}") if $s->{stderr} =~ /WARNING|FATAL|PANIC/;
	return $r;
}
my %results;
sub try_call
{
	my ($label, $sql) = @_;
	(my $q = $sql) =~ s/\$q\$/\$Q\$/g;
	my $r = sq_s("SELECT public.dx_try(\$q\$$sql\$q\$)");
	$results{$label} = $r;
	return $r;
}

# The reproduced attack, and the paths named in the issue.
is(try_call('cancel', qq{SELECT docextract.cancel_extraction(docextract.extract_document('$doc'::pg_catalog.uuid,
	'$tid'::pg_catalog.uuid, '{"force": true, "seed": 3}'::pg_catalog.jsonb))}), 'ok', 'cancel_extraction of a fresh extraction');
is(try_call('approve', qq{SELECT docextract.approve('$awaiting'::pg_catalog.uuid)}), 'ok', 'approve');
try_call('sync', qq{SELECT docextract.extract_sync(f.pdf, '$tid'::pg_catalog.uuid) FROM public.fixture f});
try_call('insert', q{INSERT INTO public.m_invoices (pdf) SELECT f.pdf FROM public.fixture f});
try_call('submit', qq{SELECT docextract.extract_document('$doc'::pg_catalog.uuid, '$tid'::pg_catalog.uuid,
	'{"force": true, "seed": 4}'::pg_catalog.jsonb)});

# Every function the attacker may execute, from pg_proc.
my $schema = $DxTest::INVOICE_SCHEMA;
my %by_name = (
	extraction_id => "'$done'::pg_catalog.uuid",
	extraction_ids => "ARRAY['$done']::pg_catalog.uuid[]",
	document_id => "'$doc'::pg_catalog.uuid",
	document_ids => "ARRAY['$spare']::pg_catalog.uuid[]",
	template_id => "'$tid'::pg_catalog.uuid",
	webhook_id => ($hook ? "'$hook'::pg_catalog.uuid" : 'pg_catalog.gen_random_uuid()'),
	content => '(SELECT f.pdf FROM public.fixture f)',
	filename => "'spy.pdf'::pg_catalog.text",
	name => "'spy template'::pg_catalog.text",
	role => "'mallory'::pg_catalog.name",
	schema_definition => "'$schema'::pg_catalog.jsonb",
	data => q{'{"general": {"total_amount": 1}, "table": []}'::pg_catalog.jsonb},
	value => q{'"1,234.50"'::pg_catalog.jsonb},
	format_type => "'number'::pg_catalog.text",
	format => "'csv'::pg_catalog.text",
	options => q{'{"force": true}'::pg_catalog.jsonb},
	url => "'$srv->{url}/hooks/m2'::pg_catalog.text",
	secret => "'0123456789abcdef0123456789abcdef'::pg_catalog.text",
	enabled => 'true',
	timestamp => '1::pg_catalog.int8',
	body => "'{}'::pg_catalog.text",
	amount => '1::pg_catalog.int8',
	old_status => "'pending'::pg_catalog.text",
	new_status => "'completed'::pg_catalog.text",
	address => "'192.0.2.1'::pg_catalog.inet",
	for_superuser => 'false');
my %by_type = (
	uuid => 'pg_catalog.gen_random_uuid()', text => "'x'::pg_catalog.text", jsonb => "'{}'::pg_catalog.jsonb",
	bytea => '(SELECT f.pdf FROM public.fixture f)', bigint => '1::pg_catalog.int8', integer => '1',
	boolean => 'true', 'uuid[]' => "ARRAY['$done']::pg_catalog.uuid[]", 'text[]' => 'NULL::pg_catalog.text[]',
	name => 'current_user', regrole => "'mallory'::pg_catalog.regrole");
my @functions = map { [ split /\|/, $_, -1 ] } split /\n/, as_mallory(q{
SELECT p.oid::regprocedure, p.proname,
       array_to_string(ARRAY(SELECT a.n FROM unnest(p.proargnames,
                                  coalesce(p.proargmodes, array_fill('i'::"char", ARRAY[coalesce(cardinality(p.proargnames), 0)])))
                                  WITH ORDINALITY a(n, m, o) WHERE a.m IN ('i', 'b', 'v') ORDER BY a.o), ','),
       array_to_string(ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, o)
                             ORDER BY u.o), ',')
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'docextract'::regnamespace AND p.prokind = 'f'
   AND has_function_privilege(p.oid, 'EXECUTE') AND p.prorettype <> 'trigger'::regtype
 ORDER BY p.proname = 'delete_documents', 1});
cmp_ok(scalar @functions, '>=', 20, scalar(@functions) . ' functions the attacker may execute');
my $calls = 0;
for my $f (@functions)
{
	my ($sig, $proname, $names, $types) = @$f;
	my @names = split /,/, $names, -1;
	my @types = split /,/, $types, -1;
	my @good = map {
		$by_name{ $names[$_] // '' } // $by_type{ $types[$_] }
		  // die "015_privilege: no value for argument $_ of $sig: extend \%by_name"
	} 0 .. $#types;
	my @shapes = ([@good]);
	for my $i (0 .. $#types)
	{
		my @a = @good;
		$a[$i] = "NULL::pg_catalog.$types[$i]";
		$a[$i] = "NULL::pg_catalog.uuid[]" if $types[$i] eq 'uuid[]';
		$a[$i] = "NULL::pg_catalog.text[]" if $types[$i] eq 'text[]';
		$a[$i] = "NULL::pg_catalog.int8" if $types[$i] eq 'bigint';
		$a[$i] = "NULL::pg_catalog.bool" if $types[$i] eq 'boolean';
		$a[$i] = "NULL::pg_catalog.int4" if $types[$i] eq 'integer';
		push @shapes, \@a;
	}
	for my $a (@shapes)
	{
		my $sql = "SELECT docextract.$proname(" . join(', ', @$a) . ')';
		$sql = "SELECT * FROM docextract.$proname(" . join(', ', @$a) . ')' if $proname eq 'result_rows';
		try_call("$sig #" . $calls++, $sql);
	}
}
pass("$calls calls made");
$s->quit;

# -- everything the attacker queued, done by the worker ------------------------------
# (Write-backs come after their status change, from the write-back worker.)
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM docextract.extractions x
	WHERE x.owner = 'mallory'::regrole
	  AND (x.status IN ('pending', 'classifying', 'processing', 'retrying') OR x.writeback_due IS NOT NULL)})
  or diag 'some extractions never ended';
# Its triggers plant temporary objects and defer a trigger to commit: the
# write-back worker refuses both, so they leave no row in dx_log (rolled
# back); the sequence-based verdict below still sees any privileged run.
is(sq(q{SELECT count(*) > 0 AND bool_and(x.writeback_error ~ 'temporary objects|security-restricted')
	FROM docextract.extractions x WHERE x.owner = 'mallory'::regrole AND x.target_table IS NOT NULL}), 't',
	"the attacker's write-backs ran and were refused, each saying why");
cmp_ok(sq(q{SELECT count(*) FROM docextract.extractions x WHERE x.owner = 'mallory'::regrole
	AND x.status = 'completed'}), '>=', 5, 'the worker completed the attacker\'s extractions');

# -- the verdict -----------------------------------------------------------------
my $privileged = sq(q{SELECT coalesce(string_agg(DISTINCT format('%s as %s (superuser %s)', obj, usr, super), E'\n'), '')
	FROM public.dx_log WHERE usr <> 'mallory' OR super});
is($privileged, '', 'no planted object ever ran as the extension owner or a superuser');
is(sq(q{SELECT is_called FROM public.dx_privileged_runs}), 'f', '... not even in a transaction that rolled back');
is(sq(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}), 'f', 'the attacker is not superuser');
is(sq($state_sql), $before, 'no role attribute, membership or grant changed');
diag("planted objects ran " . sq(q{SELECT count(*) FROM public.dx_log}) . " times: "
	  . sq(q{SELECT string_agg(DISTINCT obj, ', ') FROM public.dx_log}));
is(sq(q{SELECT coalesce(string_agg(p.oid::regprocedure::text, ', '), '') FROM pg_proc p
	WHERE p.pronamespace = 'docextract'::regnamespace AND p.prokind = 'f'
	  AND p.proname NOT IN ('active_statuses', 'event_name', 'outcome_statuses')
	  AND NOT coalesce('search_path=pg_catalog, docextract, pg_temp' = ANY (p.proconfig), false)}), '',
	'every function of the extension pins search_path = pg_catalog, docextract, pg_temp');
# Left out: IMMUTABLE SQL functions, not SECURITY DEFINER, with SQL-standard
# bodies (names bound at CREATE; a SET clause would keep them from being
# inlined).  Only these three.
is(sq(q{SELECT string_agg(p.proname, ', ' ORDER BY p.proname) FROM pg_proc p
	WHERE p.pronamespace = 'docextract'::regnamespace AND p.proconfig IS NULL}),
	'active_statuses, event_name, outcome_statuses',
	'... but three immutable SQL-standard bodies, with no SET clause');
is(sq(q{SELECT string_agg(format('%s %s %s', p.proname, p.provolatile, p.prosecdef), ', ' ORDER BY p.proname)
	FROM pg_proc p WHERE p.pronamespace = 'docextract'::regnamespace AND p.proconfig IS NULL
	  AND p.prosqlbody IS NOT NULL}),
	'active_statuses i f, event_name i f, outcome_statuses i f', '... each immutable, not SECURITY DEFINER');
# They resolve no name when run: with the attacker's || first on the path,
# event_name() still uses pg_catalog's (a plain || in that session calls the attacker's).
is(as_mallory(q{SET search_path = public, pg_catalog;
	SELECT docextract.event_name('processing', 'completed');
	SELECT count(*) FROM public.dx_log WHERE pid = pg_backend_pid() AND obj = 'public ||(text,text)';
	SELECT 'a'::text || 'b'::text;
	SELECT count(*) FROM public.dx_log WHERE pid = pg_backend_pid() AND obj = 'public ||(text,text)';}),
	"extraction.completed\n0\nab\n1", "event_name() never calls a || that comes first on the caller's path");
my @bad = grep { $results{$_} =~ /^XX|terminat|server closed/ } sort keys %results;
is(join("\n", map { "$_: $results{$_}" } @bad), '', 'no call failed with an internal error');

done_testing();
