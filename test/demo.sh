#!/usr/bin/env bash
# The main job, start to finish: install what is needed, build and install
# docextract, start a local PostgreSQL 15 with it preloaded, load sample
# documents and an invoice template, extract them, print the typed results
# and the events a LISTENing session received.
#
# With OPENAI_API_KEY set it uses that provider (OPENAI_BASE_URL and
# OPENAI_MODEL optional); otherwise the bundled local test endpoint.
#   bash test/demo.sh         run it (leaves the server up for the tour)
#   bash test/demo.sh stop    stop the demo server
set -euo pipefail
cd "$(dirname "$0")/.."
. test/lib.sh

DEMO_DIR=${DOCEXTRACT_DEMO_DIR:-/tmp/docextract-demo}
PORT=${DOCEXTRACT_DEMO_PORT:-5499}
user=$(id -un)
[ "$(id -u)" -eq 0 ] && user=${DOCEXTRACT_USER:-docextract}

run() {   # run a command as the (non-root) demo user
    if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi
}

stop() {
    [ -f "$DEMO_DIR/model_server.pid" ] && kill "$(cat "$DEMO_DIR/model_server.pid")" 2>/dev/null || true
    rm -f "$DEMO_DIR/model_server.pid"
    [ -d "$DEMO_DIR/data" ] && run pg_ctl -D "$DEMO_DIR/data" -m fast stop >/dev/null 2>&1 || true
}

if [ "${1:-}" = stop ]; then
    export PATH="/usr/lib/postgresql/15/bin:$PATH"
    stop
    echo "demo server stopped"
    exit 0
fi

echo "== 1. packages, build, install"
install_packages
make -s
as_root make -s install
if [ "$(id -u)" -eq 0 ] && ! id "$user" >/dev/null 2>&1; then
    useradd --system --create-home --shell /bin/bash "$user"
fi

echo "== 2. a local PostgreSQL 15 with shared_preload_libraries = 'docextract'"
stop
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
cp test/fixtures/invoice.pdf test/fixtures/receipt.pdf test/fixtures/receipt.png \
   test/fixtures/three-invoices.pdf \
   test/demo.sql test/model_server.py "$DEMO_DIR/"
[ "$(id -u)" -eq 0 ] && chown -R "$user" "$DEMO_DIR"
run initdb -D "$DEMO_DIR/data" -A trust -U postgres >/dev/null
cat >> "$DEMO_DIR/data/postgresql.conf" <<EOF
shared_preload_libraries = 'docextract'
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DEMO_DIR'
EOF
run pg_ctl -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" -w start >/dev/null
PSQL=(psql -X -q -h "$DEMO_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
echo "   server log: $DEMO_DIR/server.log"

if [ -n "${OPENAI_API_KEY:-}" ]; then
    base_url=${OPENAI_BASE_URL:-https://api.openai.com/v1}
    model=${OPENAI_MODEL:-gpt-4o-mini}
    echo "== 3. model: OpenAI-compatible provider at $base_url, model $model (OPENAI_API_KEY is set)"
    # The key stays in the server's environment; SQL only names it.
    api_key="env:OPENAI_API_KEY"
else
    echo "== 3. model: the bundled local test endpoint (test/model_server.py); set OPENAI_API_KEY to use a real provider"
    # The server's own pid (not runuser's, which would not pass the stop on).
    run bash -c 'echo $$ > "$0/model_server.pid"; exec python3 "$0/model_server.py" --port-file "$0/model_port"' \
        "$DEMO_DIR" >"$DEMO_DIR/model_server.log" 2>&1 &
    for _ in $(seq 100); do [ -s "$DEMO_DIR/model_port" ] && break; sleep 0.1; done
    base_url="http://127.0.0.1:$(cat "$DEMO_DIR/model_port")/v1"
    model=local-test-model
    api_key=""
fi

echo "== 4. extension, model, template, three sample documents; extract them"
run "${PSQL[@]}" -v base_url="$base_url" -v model="$model" -v api_key="$api_key" \
    -v dir="$DEMO_DIR" -f "$DEMO_DIR/demo.sql"

echo
echo "The demo server is still running. Take the tour in README.md:"
echo "    psql -h $DEMO_DIR -p $PORT -U postgres"
echo "Stop it with: bash test/demo.sh stop"
