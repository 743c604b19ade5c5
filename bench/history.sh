#!/usr/bin/env bash
# Does the table's history slow the queue down?  For each history size H
# (default 0 and 300000): a fresh cluster, H finished extractions (with their
# events) made by real status changes (queued, then processing, then
# completed, 50,000 at a time, autovacuum on), then N single-page PDFs
# (default 1000) queued in one commit and drained by the worker against the
# local instant endpoint.  Prints extractions/s and the worker's CPU per
# extraction (its CPU time during the drain).
#   bash bench/history.sh [N] [H ...]
#   PG_CONFIG=/opt/pg-x/usr/lib/postgresql/15/bin/pg_config bash bench/history.sh 1000 0 300000
# The server's binaries are those of PG_CONFIG (default: pg_config in PATH),
# where the extension is installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(0 300000)
PG_CONFIG=${PG_CONFIG:-pg_config}
BIN=$("$PG_CONFIG" --bindir)
DIR=${BENCH_DIR:-/tmp/docextract-bench-history}
PORT=${BENCH_PORT:-5497}
user=$(id -un); [ "$(id -u)" -eq 0 ] && user=${DOCEXTRACT_USER:-docextract_test}
run() { if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi; }

make -s PG_CONFIG="$PG_CONFIG" && make -s PG_CONFIG="$PG_CONFIG" install
id "$user" >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash "$user"
rm -rf "$DIR"; mkdir -p "$DIR"
cp test/model_server.py test/fixtures/invoice.pdf "$DIR/"
[ "$(id -u)" -eq 0 ] && chown -R "$user" "$DIR"

run python3 "$DIR/model_server.py" --no-record --port-file "$DIR/port" >"$DIR/model.log" 2>&1 &
server_pid=$!
cleanup() {
    # (run may wrap the server in runuser: its child is the server)
    kill $(pgrep -P "$server_pid") "$server_pid" 2>/dev/null || true
    [ -d "$DIR/data" ] && run "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$DIR/port" ] && break; sleep 0.1; done
url="http://127.0.0.1:$(cat "$DIR/port")/v1"
P=(psql -X -q -At -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
sql() { run "$BIN/${P[0]}" "${P[@]:1}" "$@"; }
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }

for H in "${SIZES[@]}"; do
    [ -d "$DIR/data" ] && run "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$DIR/data"
    run "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
    cat >> "$DIR/data/postgresql.conf" <<CONF
shared_preload_libraries = 'docextract'
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
docextract.poll_interval = '60s'
docextract.credits = 'track'
max_wal_size = '4GB'
${BENCH_CONF:-}
CONF
    run "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server-$H.log" -w start >/dev/null
    sql >/dev/null <<SQL
CREATE EXTENSION docextract;
-- The history goes to another model, whose endpoint is never called.
SELECT docextract.add_model('default', 'openai', '$url', 'bench-model');
SELECT docextract.add_model('history', 'openai', '$url', 'history-model');
SELECT docextract.create_template('invoice', '{"general_part": {
  "invoice_number": {"name": "Invoice Number", "format_type": "text"},
  "total_amount": {"name": "Total Amount", "format_type": "number"}}}');
CREATE TABLE bench_doc AS
SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$DIR/invoice.pdf')) AS id;
SQL
    tid=$(sql -c "SELECT id FROM docextract.templates")
    doc=$(sql -c "SELECT id FROM bench_doc")
    t0=$(date +%s)
    for ((done = 0; done < H; done += 50000)); do
        n=$(( H - done < 50000 ? H - done : 50000 ))
        # Rows queued and moved to processing in one transaction, so the
        # worker never sees them pending; then completed.  Real updates:
        # the triggers fire (events, credits, write-back checks).
        sql >/dev/null <<SQL
BEGIN;
-- A document of its own each (their bytes left out): a submit looks for
-- earlier extractions of the same document.
CREATE TEMP TABLE d AS SELECT gen_random_uuid() AS id FROM generate_series(1, $n);
INSERT INTO docextract.documents (id, filename, content_type, size_bytes, sha256, page_count, owner)
SELECT id, 'old.pdf', 'application/pdf', 1, 'x', 1, current_user::regrole FROM d;
INSERT INTO docextract.extractions (document_id, template_id, model_name, owner)
SELECT id, '$tid', 'history', current_user::regrole FROM d;
UPDATE docextract.extractions SET status = 'processing', attempts = 1, started_at = now()
 WHERE status = 'pending' AND model_name = 'history';
COMMIT;
UPDATE docextract.extractions SET status = 'completed', completed_at = now()
 WHERE status = 'processing' AND model_name = 'history';
SQL
    done
    [ "$H" -gt 0 ] && echo "history: $H finished extractions and their events in $(( $(date +%s) - t0 )) s"
    sql -c "CHECKPOINT" >/dev/null
    wpid=$(sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract worker'")
    cpu0=$(cpu "$wpid")
    start=$(date +%s.%N)
    sql -c "SELECT count(docextract.extract_document('$doc', '$tid', jsonb_build_object('seed', g, 'force', true)))
              FROM generate_series(1, $N) g" >/dev/null
    until [ "$(sql -c "SELECT count(*) FROM docextract.extractions WHERE model_name = 'default' AND status IN ('completed','failed')")" = "$N" ]; do
        sleep 0.05
    done
    end=$(date +%s.%N)
    cpu1=$(cpu "$wpid")
    sql -c "SELECT format('history %s: %s extractions (%s failed), %s extractions/s from first claim to last completion, worker CPU %s ms per extraction',
                $H, count(*), count(*) FILTER (WHERE status = 'failed'),
                round($N / extract(epoch FROM max(completed_at) - min(started_at))::numeric, 1),
                round(1000 * ($cpu1 - $cpu0) / $N, 2))
              FROM docextract.extractions WHERE model_name = 'default'"
    printf '   (client wall time including the %d submits: %.2f s)\n' "$N" "$(echo "$end - $start" | bc)"
done
