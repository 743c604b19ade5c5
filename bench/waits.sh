#!/usr/bin/env bash
# Where the submitting backends and the job worker wait while SUBMITTERS
# pgbench clients submit N extractions (prepared, one transaction each) and
# the worker drains them: pg_stat_activity sampled every 5 ms by one session
# (its snapshot cleared before each look), then each process kind's share
# of samples by state and wait event ("CPU": no wait event, running or
# runnable).  Answers whether a drain is bound by CPU or by commits.
#   bash bench/waits.sh                     N = 8000, 4 submitters
#   BENCH_CONF='synchronous_commit = off' bash bench/waits.sh
# Also BENCH_SUBMITTERS, BENCH_SCALE, PG_CONFIG, BENCH_DIR (bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
N=$(scaled 8000)
SUBMITTERS=${BENCH_SUBMITTERS:-4}
bench_init waits
bench_model 0
bench_cluster
bench_setup 2000 '{"document_mode": "text"}'
wait_workers 1
drain docextract 2000 "$SUBMITTERS" "warm-up"
sql -c "CREATE TABLE bench.samples (n int, who text, state text, wait_type text, wait_event text)" >/dev/null
# About 3 s of samples, from 1 s after the first submit.
( sleep 1; sql -c "DO \$\$ BEGIN FOR i IN 1..600 LOOP
    PERFORM pg_stat_clear_snapshot();
    INSERT INTO bench.samples
    SELECT i, CASE WHEN backend_type = 'docextract worker' THEN 'job worker' ELSE 'submitter' END,
           state, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-')
      FROM pg_stat_activity
     WHERE pid <> pg_backend_pid()
       AND (backend_type = 'docextract worker' OR query LIKE '%extract_document%');
    PERFORM pg_sleep(0.005);
  END LOOP; END \$\$" >/dev/null ) &
SAMPLER=$!
drain docextract "$N" "$SUBMITTERS"
wait "$SAMPLER"
print_results | tail -2
echo "who|state|wait type|wait event|samples|% of its samples"
sql -c "SELECT who, state, wait_type, wait_event, count(*),
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY who), 1)
  FROM bench.samples GROUP BY 1, 2, 3, 4 ORDER BY 1, 5 DESC"
