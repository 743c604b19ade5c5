#!/usr/bin/env bash
# Every core: throughput of a pre-committed backlog of N = 2,000 one-page
# PDFs with 1, 2 and 4 job worker processes (docextract.workers, set in
# postgresql.conf, server restarted for each).  A build without that setting
# runs the single worker and says "not supported by this build" for the rest.
# Worker CPU is summed over every "docextract worker" process.
#   bash bench/workers.sh
#   BENCH_SCALE=0.1 bash bench/workers.sh      quick check (200 documents)
# Also: BENCH_WORKERS ("1 2 4"); PG_CONFIG, BENCH_CONF, ... (bench/lib.sh)
cd "$(dirname "$0")/.."
. bench/lib.sh
N=$(scaled 2000)
COUNTS=${BENCH_WORKERS:-"1 2 4"}
bench_init workers
bench_model 0
bench_cluster
bench_setup "$N"
wait_workers 1
supported=$(sql -c "SELECT count(*) FROM pg_settings WHERE name = 'docextract.workers'")
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); $N one-page PDFs," \
     "synchronous_commit = $(sql -c 'SHOW synchronous_commit'), docextract.max_inflight = $(sql -c 'SHOW docextract.max_inflight')," \
     "max_worker_processes = $(sql -c 'SHOW max_worker_processes')"
[ "$supported" = 1 ] && echo "docextract.workers: default $(sql -c "SELECT boot_val FROM pg_settings WHERE name = 'docextract.workers'"), context $(sql -c "SELECT context FROM pg_settings WHERE name = 'docextract.workers'")"
for w in $COUNTS; do
    if [ "$supported" != 1 ]; then
        if [ "$w" -ne 1 ]; then
            echo "$w workers: not supported by this build (no setting docextract.workers)"
            continue
        fi
    else
        bench_cluster_stop
        bench_conf "docextract.workers = $w" "max_worker_processes = $((w + 8))"
        bench_cluster_start
        if ! wait_workers "$w" 2>/dev/null; then
            echo "$w workers: asked for, $(worker_pids | wc -w) running (see $DIR/server.log)"
        fi
    fi
    drain docextract "$N" 0 "$(worker_pids | wc -w) worker(s)"
done
print_results
