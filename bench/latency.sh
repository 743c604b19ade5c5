#!/usr/bin/env bash
# Commit -> claim latency when idle: one session submits one extraction at a
# time (its own transaction), waits until it is completed, pauses so that the
# worker sleeps again, and submits the next (bench/latency_client.py).  The
# claim is the job's started_at (set by the claim's UPDATE with
# clock_timestamp()); the commit is the client's clock just before COMMIT is
# sent ("from COMMIT sent": includes the commit's own WAL flush) and just
# after it returned ("from COMMIT returned": what a user sees).  Same machine,
# same clock.  Prints p50 / p90 / p99 / max of each, and commit -> completed.
# Target (issue 12): commit -> claim p50 under 5 ms.
#   bash bench/latency.sh                  M=500 jobs, 20 ms apart
#   BENCH_LATENCY_JOBS=200 BENCH_LATENCY_PAUSE=0.05 bash bench/latency.sh
#   BENCH_WORKERS=2 bash bench/latency.sh  docextract.workers = 2
# Also PG_CONFIG, BENCH_CONF, BENCH_NO_BUILD ... (bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
M=$(scaled "${BENCH_LATENCY_JOBS:-500}")
PAUSE=${BENCH_LATENCY_PAUSE:-0.02}
bench_init latency
cp "$BENCH_SRC/bench/latency_client.py" "$DIR/"
bench_model 0
conf=()
[ -n "${BENCH_WORKERS:-}" ] && conf+=("docextract.workers = $BENCH_WORKERS")
bench_cluster "${conf[@]}"
bench_setup 10
wait_workers "${BENCH_WORKERS:-1}"
sql -c "CALL bench.wait_drained(false, 60)"
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
     "$M jobs one at a time, ${PAUSE} s apart; synchronous_commit = $(sql -c 'SHOW synchronous_commit');" \
     "$(worker_pids | wc -w) job worker(s)"
run env PGHOST="$DIR" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres \
    $PY "$DIR/latency_client.py" --jobs "$M" --pause "$PAUSE" --docs 10 > "$DIR/commits.txt"
[ "$(id -u)" -eq 0 ] && chown "$bench_user" "$DIR/commits.txt"
sql >/dev/null <<SQL
CREATE TABLE bench.commits (id uuid, before_commit float8, after_commit float8);
COPY bench.commits FROM '$DIR/commits.txt' (DELIMITER ' ');
SQL
sql <<'SQL'
\pset format aligned
\pset tuples_only off
WITH d AS (
  SELECT 1000 * (extract(epoch FROM x.started_at) - c.before_commit) AS sent,
         1000 * (extract(epoch FROM x.started_at) - c.after_commit) AS returned,
         1000 * (extract(epoch FROM x.completed_at) - c.after_commit) AS completed
    FROM bench.commits c JOIN docextract.extractions x USING (id)),
m AS (SELECT 'commit sent -> claim' AS ms, sent AS v FROM d
      UNION ALL SELECT 'commit returned -> claim', returned FROM d
      UNION ALL SELECT 'commit returned -> completed', completed FROM d)
SELECT ms, count(*) AS n,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY v)::numeric, 2) AS p50,
       round(percentile_cont(0.9) WITHIN GROUP (ORDER BY v)::numeric, 2) AS p90,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY v)::numeric, 2) AS p99,
       round(max(v)::numeric, 2) AS max
  FROM m GROUP BY ms ORDER BY min(v);
SQL
