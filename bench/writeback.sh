#!/usr/bin/env bash
# How fast do trigger-form results reach the users' rows?  A COPY of N rows
# into a table with the trigger form, then: when the last extraction
# completed, and when the last row was written back (its result and status
# columns set by the write-back worker), with the write-back worker's CPU.
#   bash bench/writeback.sh                 COPY 1,000 and 10,000 rows
# Also: BENCH_COPIES="1000 10000"; BENCH_STATEMENTS=1 (the top statements
# by time per row, pg_stat_statements with track = all); PG_CONFIG,
# BENCH_CONF, ... (bench/lib.sh)
cd "$(dirname "$0")/.."
. bench/lib.sh
COPIES=${BENCH_COPIES-"1000 10000"}
bench_init writeback
bench_model 0
bench_cluster_statements
bench_setup 1
wait_workers 1
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p');" \
     "synchronous_commit = $(sql -c 'SHOW synchronous_commit')"
bench_trigger_form
wb_pid() { sql -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'docextract write-back worker'"; }
for c in $COPIES; do
    c=$(scaled "$c")
    copy_rows "$c"
    [ -z "${BENCH_STATEMENTS:-}" ] || sql -c "SELECT pg_stat_statements_reset()" >/dev/null
    t0=$(date +%s.%N)
    sql -c "COPY bench.invoices (pdf) FROM '$DIR/copy.txt'"
    t1=$(date +%s.%N)
    w0=$(ticks $(wb_pid))
    sql -c "CALL bench.wait_drained(false)"
    t2=$(date +%s.%N)
    last=0
    until [ "$(sql -c "SELECT count(*) FILTER (WHERE state IS DISTINCT FROM 'completed') FROM bench.invoices")" = 0 ]; do
        sleep 0.2
    done
    t3=$(date +%s.%N)
    w1=$(ticks $(wb_pid))
    awk -v c="$c" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v w="$((w1 - w0))" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        printf "COPY %d rows: ingest %.0f rows/s; drained %.2f s after the commit (%.0f/s); written back %.2f s after it (%.0f rows/s); write-back worker CPU %.2f ms/row\n",
            c, c / (t1 - t0), t2 - t1, c / (t2 - t1), t3 - t1, c / (t3 - t1), 1000 * w / hz / c }'
    if [ -n "${BENCH_STATEMENTS:-}" ]; then
        sql -F ' | ' -c "SELECT calls, round(total_exec_time::numeric / $c, 3) AS exec_ms_per_row, round(total_plan_time::numeric / $c, 3),
                (shared_blks_hit + shared_blks_read) / $c AS bufs_per_row, left(regexp_replace(query, '\s+', ' ', 'g'), 100)
           FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"
    fi
    sql -c "TRUNCATE bench.invoices"
done
