#!/usr/bin/env bash
# Pushes N single-page PDFs through the whole pipeline (enqueue -> worker ->
# HTTP -> typing -> results) against the local instant model endpoint and
# prints extractions/s and commit->claim / commit->completed latency.
#   bash bench/pipeline.sh [N]          (default 1000)
#   BENCH_DELAY_MS=500 BENCH_INFLIGHT=200 bash bench/pipeline.sh 2000
#       the endpoint answers after 500 ms and the worker keeps 200 in flight:
#       compare the wall time with the ideal N / inflight * delay
#   BENCH_CONF="synchronous_commit = off"   extra postgresql.conf lines
# Each extraction is submitted in its own transaction.  Latencies are measured
# from created_at (the start of the submitting transaction, which is a single
# statement, so within a fraction of a millisecond of its commit).
set -euo pipefail
cd "$(dirname "$0")/.."
. test/lib.sh
N=${1:-1000}
DELAY_MS=${BENCH_DELAY_MS:-0}
INFLIGHT=${BENCH_INFLIGHT:-16}
DIR=${BENCH_DIR:-/tmp/docextract-bench}
PORT=${BENCH_PORT:-5498}
user=$(id -un); [ "$(id -u)" -eq 0 ] && user=${DOCEXTRACT_USER:-docextract}
run() { if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi; }

install_packages
command -v curl >/dev/null || as_root apt-get install -y -q curl
make -s && as_root make -s install
id "$user" >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash "$user"
pkill -f "$DIR/model_server.py" 2>/dev/null || true
[ -d "$DIR/data" ] && run pg_ctl -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
rm -rf "$DIR"; mkdir -p "$DIR"
cp test/model_server.py test/fixtures/invoice.pdf "$DIR/"
[ "$(id -u)" -eq 0 ] && chown -R "$user" "$DIR"

run python3 "$DIR/model_server.py" --no-record --delay-ms "$DELAY_MS" --port-file "$DIR/port" >"$DIR/model.log" 2>&1 &
echo $! > "$DIR/server.pid"
cleanup() {
    pkill -f "$DIR/model_server.py" 2>/dev/null || true
    run pg_ctl -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$DIR/port" ] && break; sleep 0.1; done
url="http://127.0.0.1:$(cat "$DIR/port")/v1/chat/completions"

# The endpoint alone: 300 requests on one keep-alive connection (curl reuses it).
# Only for the instant endpoint: a delayed one is slow on purpose.
if [ "$DELAY_MS" -eq 0 ]; then
body='{"model":"m","messages":[{"role":"user","content":"Invoice Number: X"}],"response_format":{"type":"json_schema","json_schema":{"name":"e","strict":true,"schema":{"type":"object","required":["general"],"additionalProperties":false,"properties":{"general":{"type":"object","required":["invoice_number"],"additionalProperties":false,"properties":{"invoice_number":{"type":["string","null"]}}}}}}}}'
args=()
for i in $(seq 300); do
    [ "$i" -gt 1 ] && args+=(--next)
    args+=(-s -o /dev/null -w '%{time_total}\n' -H 'Content-Type: application/json' --data "$body" "$url")
done
curl "${args[@]}" | sort -n | awk '{ t[NR] = $1 * 1000 } END {
    printf "== the endpoint alone, %d sequential keep-alive requests: p50 %.3f ms, p99 %.3f ms\n",
           NR, t[int(NR / 2)], t[int(NR * 0.99)] }'
fi

run initdb -D "$DIR/data" -A trust -U postgres >/dev/null
cat >> "$DIR/data/postgresql.conf" <<CONF
shared_preload_libraries = 'docextract'
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
docextract.poll_interval = '60s'
docextract.max_inflight = $INFLIGHT
${BENCH_CONF:-}
CONF
run pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
P=(psql -X -q -At -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
run "${P[@]}" >/dev/null <<SQL
CREATE EXTENSION docextract;
SELECT docextract.add_model('default', 'openai', '${url%/chat/completions}', 'bench-model');
-- credits = 'enforce' (the default): every submit reserves, every completion charges
SELECT docextract.grant_credits(current_user, 1000000, 'bench');
SELECT docextract.create_template('invoice', '{"general_part": {
  "invoice_number": {"name": "Invoice Number", "format_type": "text"},
  "invoice_date": {"name": "Invoice Date", "format_type": "date"},
  "total_amount": {"name": "Total Amount", "format_type": "number"}},
  "table_part": {"description": {"name": "Description", "format_type": "text"},
                 "amount": {"name": "Amount", "format_type": "number"}}}');
CREATE TABLE bench_docs AS
SELECT docextract.add_document('invoice-' || i || '.pdf', pg_read_binary_file('$DIR/invoice.pdf')) AS id
  FROM generate_series(1, $N) i;
SQL
echo "== throughput: $N single-page PDFs submitted back to back, each in its own transaction (docextract.max_inflight = $(run "${P[@]}" -c 'SHOW docextract.max_inflight'))"
tid=$(run "${P[@]}" -c "SELECT id FROM docextract.templates")
start=$(date +%s.%N)
run "${P[@]}" -c "SELECT id FROM bench_docs" | sed "s/.*/SELECT docextract.extract_document('&', '$tid');/" \
    | run "${P[@]}" >/dev/null
submitted=$(date +%s.%N)
until [ "$(run "${P[@]}" -c "SELECT count(*) FROM docextract.extractions WHERE status IN ('completed','failed')")" = "$N" ]; do
    sleep 0.05
done
done_at=$(date +%s.%N)
run "${P[@]}" <<SQL
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
    run "${P[@]}" -c "SELECT format('wall time %s s (first submit to last completion) against the ideal %s s = %s / %s * %s ms; model server saw at most %s in flight',
        round(extract(epoch FROM max(completed_at) - min(created_at))::numeric, 2),
        round($N::numeric / $INFLIGHT * $DELAY_MS / 1000, 2), $N, $INFLIGHT, $DELAY_MS,
        '$(curl -s "${url%/v1/chat/completions}/_stats" | sed 's/.*"max_inflight": \([0-9]*\).*/\1/')')
        FROM docextract.extractions"
fi

# Latency below capacity: M submissions paced at ~50/s, so none waits in a queue.
M=${BENCH_PACED:-200}
[ "$DELAY_MS" -gt 0 ] && M=0
if [ "$M" -gt 0 ]; then
echo "== latency at low load: $M submissions, one every 20 ms"
mark=$(run "${P[@]}" -c "SELECT clock_timestamp()")
run "${P[@]}" -c "SELECT id FROM bench_docs LIMIT $M" \
    | sed "s/.*/SELECT docextract.extract_document('&', '$tid', '{\"seed\": 1}'); SELECT pg_sleep(0.02);/" \
    | run "${P[@]}" >/dev/null
until [ "$(run "${P[@]}" -c "SELECT count(*) FROM docextract.extractions WHERE created_at > '$mark' AND status IN ('completed','failed')")" = "$M" ]; do
    sleep 0.05
done
run "${P[@]}" <<SQL
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
wpid=$(run "${P[@]}" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract worker'")
echo "worker peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$wpid/status)"
# CPU seconds used, to see who was busy on the shared cores.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$1/stat"; }
echo "CPU seconds: worker $(cpu "$wpid"), model server $(cpu "$(pgrep -f "$DIR/model_server.py" | tail -1)")"
