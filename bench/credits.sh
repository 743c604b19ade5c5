#!/usr/bin/env bash
# Concurrent submits and the credit account: extract_document's BEFORE INSERT
# trigger (reserve_credits) locks one of the role's eight credit slots until
# the submit commits; concurrent submits of one role take different slots
# (before the slots, they took turns through each other's commits on one
# account row).  For T seconds each, pgbench submitting one extraction a
# transaction (documents stored beforehand; the worker drains meanwhile, and
# settles into credit_slot_deltas, taking no slot):
#   1. 1 submitter;
#   2. 4 submitters of one role;
#   3. 4 submitters, each a role of its own;
#   4. as 2, with docextract.credits = 'track' (no check; a slot still updated).
# Prints submits/s, the mean submit latency, and the share of samples (every
# 10 ms) in which a submitter waited for a lock.
#   bash bench/credits.sh                 T = 10 s
#   BENCH_SECONDS=5 BENCH_CONF='synchronous_commit = off' bash bench/credits.sh
# Also PG_CONFIG, BENCH_NO_BUILD ... (bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
T=${BENCH_SECONDS:-10}
bench_init credits
bench_model 0
bench_cluster
bench_setup 10
wait_workers 1
sql >/dev/null <<SQL
CREATE ROLE bench_r1 LOGIN; CREATE ROLE bench_r2 LOGIN; CREATE ROLE bench_r3 LOGIN; CREATE ROLE bench_r4 LOGIN;
SELECT docextract.grant_credits('bench_r' || i, 1000000000, 'bench') FROM generate_series(1, 4) i;
SELECT docextract.create_system_template('sys_invoice',
    (SELECT schema_definition FROM docextract.templates WHERE name = 'invoice'));
GRANT USAGE ON SCHEMA bench TO PUBLIC;
GRANT SELECT ON bench.docs TO PUBLIC;
CREATE TABLE bench.role_docs (role name, id uuid);
GRANT SELECT, INSERT ON bench.role_docs TO PUBLIC;
-- Each role's own documents, added as that role.
DO \$\$ BEGIN
  FOR i IN 1..4 LOOP
    EXECUTE format('SET ROLE bench_r%s', i);
    INSERT INTO bench.role_docs SELECT current_user, docextract.add_document('r.pdf', content)
      FROM bench.docs WHERE n <= 10;
    RESET ROLE;
  END LOOP;
END \$\$;
CREATE FUNCTION bench.submit_own(n int) RETURNS uuid LANGUAGE sql AS
  \$\$ SELECT docextract.extract_document(d.id, (SELECT id FROM docextract.templates WHERE name = 'sys_invoice'),
                                          '{"force": true}')
         FROM bench.role_docs d WHERE d.role = current_user ORDER BY d.id OFFSET n % 10 LIMIT 1 \$\$;
-- Samples pg_stat_activity every 10 ms for secs: the share of pgbench
-- sessions' samples spent waiting for a lock.
CREATE FUNCTION bench.lock_waits(secs float8) RETURNS numeric LANGUAGE plpgsql AS \$\$
DECLARE waiting bigint := 0; seen bigint := 0; w bigint; s bigint;
        stop timestamptz := clock_timestamp() + make_interval(secs => secs);
BEGIN
  WHILE clock_timestamp() < stop LOOP
    SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), count(*) INTO w, s
      FROM pg_stat_activity WHERE application_name = 'pgbench' AND state = 'active';
    waiting := waiting + w; seen := seen + s;
    PERFORM pg_sleep(0.01);
  END LOOP;
  RETURN round(100.0 * waiting / greatest(seen, 1), 1);
END \$\$;
SQL
echo "\\set n random(1, 10)
SELECT bench.submit_own(:n);" > "$DIR/submit.sql"
[ "$(id -u)" -eq 0 ] && chown "$bench_user" "$DIR/submit.sql"

# run_case LABEL ROLES CLIENTS_PER_ROLE: pgbench processes, one per role, in parallel.
run_case() {
    local label=$1 roles=$2 per=$3 i pids=()
    for i in $(seq "$roles"); do
        run pgbench -n -h "$DIR" -p "$PORT" -U "bench_r$i" -c "$per" -j "$per" -T "$T" \
            -f "$DIR/submit.sql" postgres > "$DIR/pgbench.$i.log" 2>&1 &
        pids+=($!)
    done
    local waits
    waits=$(sql -c "SELECT bench.lock_waits($T - 0.5)")
    wait "${pids[@]}"
    awk -v label="$label" -v waits="$waits" '
        /^number of transactions actually processed/ { split($0, a, ": "); split(a[2], b, "/"); n += b[1] }
        /^latency average/ { lat += $4; k++ }
        /^number of failed/ { split($0, a, ": "); f += a[2] + 0 }
        END { printf "%s|%.0f|%.2f|%s|%d\n", label, n / '"$T"', lat / k, waits, f }' "$DIR"/pgbench.*.log >> "$DIR/credits"
    rm -f "$DIR"/pgbench.*.log
    sql -c "CALL bench.wait_drained(false)"
}
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
     "synchronous_commit = $(sql -c 'SHOW synchronous_commit'); $T s each"
: > "$DIR/credits"
run_case "1 submitter" 1 1
run_case "4 submitters, one role" 1 4
run_case "4 submitters, 4 roles" 4 1
sql -c "ALTER SYSTEM SET docextract.credits = 'track'" -c "SELECT pg_reload_conf()" >/dev/null
run_case "4 submitters, one role, credits = track" 1 4
{ echo "case|submits/s|mean submit ms|% of samples waiting for a lock|failed"; cat "$DIR/credits"; } | column -t -s '|'
