#!/usr/bin/env bash
# The job worker's memory (VmRSS and VmHWM from /proc/<pid>/status):
#   1. over M = 100,000 one-page extractions (instant endpoint), sampled
#      after each of STEPS pre-committed batches: flat, or growing?
#   2. peak with DOCS = 20 documents of about docextract.max_document_size
#      (20 MB; bench/make_big_pdf.py: one page, an incompressible image) in
#      flight at once: document_mode file, so each request carries the PDF
#      as base64 (about 27 MB); the endpoint holds every answer DELAY ms
#      (3 s) so that all of them are in flight together; max_inflight and
#      the model's max_concurrency are set to DOCS.  RSS is also sampled
#      every 50 ms while they run.
#   bash bench/memory.sh
#   BENCH_SCALE=0.01 bash bench/memory.sh     quick check (1,000 extractions, 20 big documents)
# Also: BENCH_STEPS (10), BENCH_BIG_DOCS (20), BENCH_DELAY_MS (3000); PG_CONFIG, ... (bench/lib.sh)
cd "$(dirname "$0")/.."
. bench/lib.sh
M=$(scaled 100000 100)
STEPS=${BENCH_STEPS:-10}
DOCS=${BENCH_BIG_DOCS:-20}
DELAY=${BENCH_DELAY_MS:-3000}
bench_init memory
bench_model 0
bench_cluster "docextract.max_inflight = $DOCS"
bench_setup 100
wait_workers 1
wpid=$(worker_pids | awk '{ print $1 }')
# VmRSS counts the shared buffers the worker has touched (RssShmem) too; RssAnon
# is its private memory, where a leak would show.
mem() { awk '/^VmHWM|^VmRSS|^RssAnon|^RssShmem/ { printf "%s %d MB  ", $1, $2 / 1024 }' "/proc/$wpid/status"; }
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p');" \
     "synchronous_commit = $(sql -c 'SHOW synchronous_commit'), docextract.max_inflight = $(sql -c 'SHOW docextract.max_inflight')"

echo "-- 1. worker $wpid over $M extractions, $STEPS batches"
echo "after 0: $(mem)"
step=$(( (M + STEPS - 1) / STEPS )); done_n=0
for _ in $(seq "$STEPS"); do
    drain docextract "$step" 0 "batch"
    done_n=$((done_n + step))
    echo "after $done_n: $(mem)  ($(tail -1 "$DIR/results" | cut -d'|' -f6)/s)"
done

echo "-- 2. $DOCS documents of about docextract.max_document_size in flight, endpoint delay $DELAY ms"
limit=$(sql -c "SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'docextract.max_document_size'")
run $PY bench/make_big_pdf.py "$DIR/big.pdf" $((limit - 65536))
bench_model "$DELAY"
sql >/dev/null <<SQL
SELECT docextract.add_model('default', 'openai', '$BASE_URL', 'bench-model', NULL,
    '{"document_mode": "file", "max_concurrency": $DOCS, "timeout_ms": 600000}');
CREATE TABLE bench.big AS SELECT docextract.add_document('big.pdf', pg_read_binary_file('$DIR/big.pdf')) AS id;
SQL
echo "document: $(stat -c %s "$DIR/big.pdf") bytes; worker before: $(mem)"
# Sample the worker's RSS every 50 ms while the big ones run.
run bash -c 'echo $$ > "$0/sampler.pid"; while :; do awk "/^VmRSS|^RssAnon/ { printf \"%s \", \$2 } END { print \"\" }" /proc/$1/status; sleep 0.05; done' \
    "$DIR" "$wpid" > "$DIR/rss.samples" 2>/dev/null &
sql >/dev/null <<SQL
SELECT count(docextract.extract_document(b.id, (SELECT id FROM docextract.templates WHERE name = 'invoice'), '{"force": true}'))
  FROM bench.big b, generate_series(1, $DOCS);
CALL bench.wait_drained(false);
SQL
kill "$(cat "$DIR/sampler.pid")"; rm -f "$DIR/sampler.pid"
echo "completed: $(sql -c "SELECT count(*) FILTER (WHERE status = 'completed') || ' of ' || count(*) FROM docextract.extractions WHERE document_id = (SELECT id FROM bench.big)")," \
     "at most $(curl -s "$BASE_URL/../_stats" | sed 's/.*"max_inflight": \([0-9]*\).*/\1/') requests at once at the endpoint"
echo "worker after: $(mem); highest sampled while they ran: $(awk '$1 > r { r = $1 } $2 > a { a = $2 }
    END { printf "VmRSS %d MB, RssAnon %d MB (%d samples)", r / 1024, a / 1024, NR }' "$DIR/rss.samples")"
