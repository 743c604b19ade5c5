#!/usr/bin/env bash
# What a job worker costs when there is nothing to do: the share of a CPU it
# uses and its context switches over WINDOW seconds (5) of quiet, after:
#   1. start (only the first extraction, whose request the client copies);
#   2. a backlog of N (2,000) one-page PDFs drained (instant endpoint);
#   3. twenty extractions, one at a time;
#   4. a role's extraction whose webhook delivery the egress policy refuses
#      (localhost: no connection is made), which ends inside libcurl's timer
#      call (until a7661d2 the worker then spun until its next request);
# then the write-back worker and the launcher; and, in the same run, the
# client-side worker it replaces
# (bench/client_worker.py, THREADS threads polling an empty queue).
#   bash bench/idle.sh
#   BENCH_SCALE=0.1 bash bench/idle.sh        quick check (200 documents)
# Also: BENCH_WINDOW (5), BENCH_THREADS (16), BENCH_CLIENT_POLL (0.01);
# PG_CONFIG, BENCH_DIR (see bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
N=$(scaled 2000)
WINDOW=${BENCH_WINDOW:-5}
THREADS=${BENCH_THREADS:-16}
bench_init idle
bench_model 0
bench_cluster
bench_setup "$N"
wait_workers 1
capture_request

# switches PID: voluntary and involuntary context switches so far, all its threads.
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'; }
# quiet LABEL PID: its CPU share and switches over WINDOW seconds.
quiet() {
    local t0 s0 t1 s1 hz
    hz=$(getconf CLK_TCK)
    t0=$(ticks "$2"); s0=$(switches "$2")
    sleep "$WINDOW"
    t1=$(ticks "$2"); s1=$(switches "$2")
    printf '%-62s %6.1f %% %8d\n' "$1" "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v w="$WINDOW" \
        'BEGIN { print 100 * d / hz / w }')" $((s1 - s0))
}
wpid=$(worker_pids | awk '{ print $1 }')

echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p');" \
     "$WINDOW s of quiet after each step; $N one-page PDFs"
printf '%-62s %8s %8s\n' "process, after" "CPU" "switches"
quiet "job worker: start, one extraction" "$wpid"

sql -c "SELECT count(bench.submit(n)) FROM bench.docs" >/dev/null
sql -c "CALL bench.wait_drained(false)"
quiet "job worker: a backlog of $N drained" "$wpid"

for n in $(seq 20); do
    sql -c "SELECT bench.submit($n)" >/dev/null
    sql -c "CALL bench.wait_drained(false, 60)"
done
quiet "job worker: 20 extractions, one at a time" "$wpid"

port=$(cat "$DIR/port")
sql >/dev/null <<SQL
CREATE ROLE bench_tenant;
SELECT docextract.grant_credits('bench_tenant', 1000, 'bench');
SELECT pg_read_binary_file('$DIR/invoice.pdf') AS pdf \gset
SET ROLE bench_tenant;
SELECT docextract.add_webhook('http://localhost:$port/hooks', 'whsec-0123456789abcdef', '{extraction.completed}');
SELECT docextract.extract_document(
         docextract.add_document('tenant.pdf', :'pdf'),
         docextract.create_template('tenant', '{"general_part": {
           "total_amount": {"name": "Total Amount", "format_type": "number"}}}'));
SQL
sql -c "CALL bench.wait_drained(false, 60)"
for _ in $(seq 600); do
    [ "$(sql -c "SELECT count(*) FROM docextract.webhook_deliveries WHERE attempts > 0 AND NOT in_flight")" = 1 ] && break
    sleep 0.1
done
sql -c "SELECT 'delivery: ' || coalesce(last_error, status) FROM docextract.webhook_deliveries"
quiet "job worker: a role's webhook delivery refused (egress)" "$wpid"

for kind in 'write-back worker' launcher; do
    quiet "docextract $kind: after all of the above" \
        "$(sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract $kind'")"
done

bench_client_start "$THREADS"
quiet "client worker ($THREADS threads, poll ${BENCH_CLIENT_POLL:-0.01} s), empty queue" "$(cat "$DIR/client.pid")"
bench_client_stop
