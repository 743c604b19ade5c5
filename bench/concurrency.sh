#!/usr/bin/env bash
# Concurrency that users set is the concurrency they get: N = 2,000 one-page
# PDFs against an endpoint answering after DELAY = 500 ms, with INFLIGHT = 200
# allowed in flight (docextract.max_inflight and the model's max_concurrency
# both set to it, explicitly, whatever the build's defaults).  Ideal:
# N / INFLIGHT * DELAY = 5 s.
#   1. N committed at once (one transaction): from that commit to the last
#      completion, against the ideal (target: within 1.2x);
#   2. N submitted one per transaction by SUBMITTERS pgbench clients: from the
#      last submit's commit to the last completion (ideally about one DELAY),
#      and first submit to last completion.
# Prints the endpoint's own count of requests at once (at most INFLIGHT).
#   bash bench/concurrency.sh
#   BENCH_SCALE=0.1 bash bench/concurrency.sh      quick check (200 documents)
# Also: BENCH_DELAY_MS (500), BENCH_INFLIGHT (200), BENCH_SUBMITTERS (4); PG_CONFIG, ... (bench/lib.sh)
cd "$(dirname "$0")/.."
. bench/lib.sh
N=$(scaled 2000)
DELAY=${BENCH_DELAY_MS:-500}
INFLIGHT=${BENCH_INFLIGHT:-200}
SUBMITTERS=${BENCH_SUBMITTERS:-4}
bench_init concurrency
bench_model "$DELAY"
bench_cluster "docextract.max_inflight = $INFLIGHT"
bench_setup "$N" "{\"max_concurrency\": $INFLIGHT}"
wait_workers 1
ideal=$(awk -v n="$N" -v i="$INFLIGHT" -v d="$DELAY" 'BEGIN { printf "%.2f", n / i * d / 1000 }')
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); $N one-page PDFs," \
     "endpoint delay $DELAY ms, docextract.max_inflight = $(sql -c 'SHOW docextract.max_inflight')," \
     "model max_concurrency = $INFLIGHT, synchronous_commit = $(sql -c 'SHOW synchronous_commit'); ideal $ideal s"
stats() { curl -s "$BASE_URL/../_stats"; }
max_inflight() { stats | sed 's/.*"max_inflight": \([0-9]*\).*/\1/'; }

curl -s -X POST "$BASE_URL/../_reset" >/dev/null
drain docextract "$N" 0 "committed at once"
secs=$(tail -1 "$DIR/results" | cut -d'|' -f5)
echo "1. committed at once: last completion $secs s after the commit; ideal $ideal s; ratio" \
     "$(awk -v s="$secs" -v i="$ideal" 'BEGIN { printf "%.2f", s / i }') (target <= 1.2);" \
     "at most $(max_inflight) requests at once at the endpoint"

curl -s -X POST "$BASE_URL/../_reset" >/dev/null
drain docextract "$N" "$SUBMITTERS"
read -r after_last first_to_last < <(sql -F ' ' -c "SELECT round(extract(epoch FROM max(completed_at) - max(created_at))::numeric, 2),
        round(extract(epoch FROM max(completed_at) - min(created_at))::numeric, 2)
   FROM docextract.extractions WHERE created_at >= '$(cat "$DIR/mark")'")
echo "2. $SUBMITTERS submitters, one transaction each: last completion $after_last s after the last submit" \
     "(one answer takes $DELAY ms); first submit to last completion $first_to_last s" \
     "(submitting took $(sed -n 's/^tps = .*//; s/^latency average = \(.*\)/\1 per submit/p' "$DIR/pgbench.log"));" \
     "at most $(max_inflight) requests at once at the endpoint"
wpid=$(worker_pids | awk '{ print $1 }')
echo "worker peak RSS: $(awk '/VmHWM/ { print $2, $3 }' "/proc/$wpid/status")"
print_results
