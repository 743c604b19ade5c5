#!/usr/bin/env bash
# Pushes N single-page PDFs through the whole pipeline (enqueue -> worker ->
# HTTP -> typing -> results) against the instant model endpoint (bench/instant_model.c) and
# prints extractions/s and commit->claim / commit->completed latency.
#   bash bench/pipeline.sh [N]          (default 1000)
#   BENCH_DELAY_MS=500 BENCH_INFLIGHT=200 bash bench/pipeline.sh 2000
#       the endpoint answers after 500 ms and the worker keeps 200 in flight:
#       compare the wall time with the ideal N / inflight * delay
#   BENCH_CONF="synchronous_commit = off"   extra postgresql.conf lines
# Each extraction is submitted in its own transaction.  Latencies are measured
# from created_at (the start of the submitting transaction, which is a single
# statement, so within a fraction of a millisecond of its commit).
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-1000}
DELAY_MS=${BENCH_DELAY_MS:-0}
INFLIGHT=${BENCH_INFLIGHT:-16}
bench_init pipeline
bench_model "$DELAY_MS"
# The endpoint alone: 300 requests on one keep-alive connection (curl reuses it).
# Only for the instant endpoint: a delayed one is slow on purpose.
if [ "$DELAY_MS" -eq 0 ]; then
body='{"model":"m","messages":[{"role":"user","content":"Invoice Number: X"}],"response_format":{"type":"json_schema","json_schema":{"name":"e","strict":true,"schema":{"type":"object","required":["general"],"additionalProperties":false,"properties":{"general":{"type":"object","required":["invoice_number"],"additionalProperties":false,"properties":{"invoice_number":{"type":["string","null"]}}}}}}}}'
args=()
for i in $(seq 300); do
    [ "$i" -gt 1 ] && args+=(--next)
    args+=(-s -o /dev/null -w '%{time_total}\n' -H 'Content-Type: application/json' --data "$body" "$URL")
done
curl "${args[@]}" | sort -n | awk '{ t[NR] = $1 * 1000 } END {
    printf "== the endpoint alone, %d sequential keep-alive requests: p50 %.3f ms, p99 %.3f ms\n",
           NR, t[int(NR / 2)], t[int(NR * 0.99)] }'
fi
bench_cluster "docextract.max_inflight = $INFLIGHT"
bench_setup "$N"
wait_workers 1
sql -c "CREATE TABLE bench_docs AS SELECT id FROM bench.docs ORDER BY n"
echo "== throughput: $N single-page PDFs submitted back to back, each in its own transaction (docextract.max_inflight = $(sql -c 'SHOW docextract.max_inflight'))"
tid=$(sql -c "SELECT id FROM docextract.templates")
start=$(date +%s.%N)
sql -c "SELECT id FROM bench_docs" | sed "s/.*/SELECT docextract.extract_document('&', '$tid');/" \
    | sql >/dev/null
submitted=$(date +%s.%N)
until [ "$(sql -c "SELECT count(*) FROM docextract.extractions WHERE status IN ('completed','failed')")" = "$N" ]; do
    sleep 0.05
done
done_at=$(date +%s.%N)
sql <<SQL
\pset format aligned
\pset tuples_only off
SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       round($N / extract(epoch FROM max(completed_at) - min(created_at)), 1) AS extractions_per_s,
       round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))::numeric, 2) AS claim_p50_ms,
       round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))::numeric, 2) AS claim_p99_ms,
       round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))::numeric, 2) AS completed_p50_ms,
       round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))::numeric, 2) AS completed_p99_ms
  FROM docextract.extractions;
SQL
printf 'client: submitting took %.2f s; all %d done after %.2f s\n' \
    "$(echo "$submitted - $start" | bc)" "$N" "$(echo "$done_at - $start" | bc)"
if [ "$DELAY_MS" -gt 0 ]; then
    sql -c "SELECT format('wall time %s s (first submit to last completion) against the ideal %s s = %s / %s * %s ms; model server saw at most %s in flight',
        round(extract(epoch FROM max(completed_at) - min(created_at))::numeric, 2),
        round($N::numeric / $INFLIGHT * $DELAY_MS / 1000, 2), $N, $INFLIGHT, $DELAY_MS,
        '$(curl -s "${URL%/v1/chat/completions}/_stats" | sed 's/.*"max_inflight": \([0-9]*\).*/\1/')')
        FROM docextract.extractions"
fi

# Latency below capacity: M submissions paced at ~50/s, so none waits in a queue.
M=${BENCH_PACED:-200}
[ "$DELAY_MS" -gt 0 ] && M=0
if [ "$M" -gt 0 ]; then
echo "== latency at low load: $M submissions, one every 20 ms"
mark=$(sql -c "SELECT clock_timestamp()")
sql -c "SELECT id FROM bench_docs LIMIT $M" \
    | sed "s/.*/SELECT docextract.extract_document('&', '$tid', '{\"seed\": 1}'); SELECT pg_sleep(0.02);/" \
    | sql >/dev/null
until [ "$(sql -c "SELECT count(*) FROM docextract.extractions WHERE created_at > '$mark' AND status IN ('completed','failed')")" = "$M" ]; do
    sleep 0.05
done
sql <<SQL
\pset format aligned
\pset tuples_only off
SELECT count(*) AS extractions,
       round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))::numeric, 2) AS claim_p50_ms,
       round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at))::numeric, 2) AS claim_p99_ms,
       round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))::numeric, 2) AS completed_p50_ms,
       round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))::numeric, 2) AS completed_p99_ms
  FROM docextract.extractions WHERE created_at > '$mark';
SQL
fi
wpid=$(sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract worker'")
echo "worker peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$wpid/status)"
# CPU seconds used, to see who was busy on the shared cores.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$1/stat"; }
echo "CPU seconds: worker $(cpu "$wpid"), model endpoint $(cpu "$(cat "$DIR/model.pid")")"
