#!/usr/bin/env bash
# A perf profile of the job worker while it drains a pre-committed backlog of
# N one-page PDFs (the plain path of compare.sh's first run): the report, by
# symbol with children, goes to $DIR/perf.txt and its head is printed.
#   BENCH_SCALE=0.5 bash bench/profile.sh       (N = 2000 x BENCH_SCALE)
#   BENCH_SUBMITTERS=4 bash bench/profile.sh    submitted by 4 pgbench clients instead
# Needs perf (linux-perf).  Also PG_CONFIG, BENCH_DIR, BENCH_CONF (bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
N=$(scaled 2000)
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
bench_init profile
bench_model 0
bench_cluster
bench_setup "$N" '{"document_mode": "text"}'
wait_workers 1
capture_request
W=$(worker_pids | awk '{print $1}')
perf record -q -g -p "$W" -o "$DIR/perf.data" 2>/dev/null &
PERF=$!
sleep 0.5
drain docextract "$N" "${BENCH_SUBMITTERS:-0}"
kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true
print_results
perf report -i "$DIR/perf.data" --children --stdio --percent-limit 1.5 2>/dev/null \
    | grep -v '^$' > "$DIR/perf.txt"
perf report -i "$DIR/perf.data" --no-children --stdio --sort symbol -g none --percent-limit 0.7 2>/dev/null \
    | grep -v '^$' > "$DIR/perf-self.txt"
grep -E '^ +[0-9]' "$DIR/perf.txt" | head -60
echo "-- self"; grep -E '^ +[0-9]' "$DIR/perf-self.txt" | head -40
