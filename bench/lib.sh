# Shared by the bench/*.sh scripts (sourced): build and install, a cluster and
# an instant model endpoint of the script's own under /tmp (loopback and a
# Unix socket only), the bench schema, CPU accounting from /proc, and the
# drain measurement.  Every function prints nothing but figures, or dies.
#
# Environment, for every script:
#   PG_CONFIG     the PostgreSQL to build against and run (default: pg_config)
#   BENCH_DIR     working directory, emptied first and kept (default: a new
#                 /tmp/docextract-bench-<script>.XXXXXX, removed at exit unless BENCH_KEEP=1)
#   BENCH_PORT    the cluster's port number (Unix socket only)
#   BENCH_CONF    extra postgresql.conf lines, e.g. 'synchronous_commit = off'
#   BENCH_SCALE   multiplies every document count (e.g. 0.01 for a quick check)
#   BENCH_NO_BUILD=1   use what is installed already
set -euo pipefail
BENCH_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$BENCH_SRC/test/lib.sh"
PY=/usr/bin/python3             # Debian's: psycopg2 and requests are Debian packages
BENCH_SCALE=${BENCH_SCALE:-1}

# N scaled by BENCH_SCALE, at least the second argument (default 10).
scaled() { awk -v n="$1" -v s="$BENCH_SCALE" -v m="${2:-10}" 'BEGIN { v = int(n * s); print (v < m ? m : v) }'; }

# bench_init NAME: paths, user, build and install, the endpoint's binary, cleanup.
bench_init() {
    BENCH_NAME=$1
    PORT=${BENCH_PORT:-5497}
    PG_CONFIG=${PG_CONFIG:-pg_config}
    install_packages
    export PG_CONFIG
    BINDIR=$("$PG_CONFIG" --bindir)
    export PATH="$BINDIR:$PATH"
    bench_user=$(id -un); [ "$(id -u)" -eq 0 ] && bench_user=${DOCEXTRACT_USER:-docextract}
    local need=""
    $PY -c 'import psycopg2' 2>/dev/null || need="$need python3-psycopg2"
    $PY -c 'import requests' 2>/dev/null || need="$need python3-requests"
    command -v pgbench >/dev/null || need="$need postgresql-contrib"
    [ -z "$need" ] || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
    if [ -z "${BENCH_NO_BUILD:-}" ]; then
        make -s -C "$BENCH_SRC" PG_CONFIG="$PG_CONFIG" >/dev/null
        as_root make -s -C "$BENCH_SRC" PG_CONFIG="$PG_CONFIG" install >/dev/null
    fi
    id "$bench_user" >/dev/null 2>&1 || as_root useradd --system --create-home --shell /bin/bash "$bench_user"
    if [ -n "${BENCH_DIR:-}" ]; then
        DIR=$BENCH_DIR
        bench_stop_all
        rm -rf "$DIR"; mkdir -p "$DIR"
    else
        DIR=$(mktemp -d "/tmp/docextract-bench-$BENCH_NAME.XXXXXX")
        chmod 755 "$DIR"
    fi
    cp "$BENCH_SRC/test/fixtures/invoice.pdf" "$BENCH_SRC/bench/client_worker.py" "$DIR/"
    gcc -O2 -o "$DIR/instant_model" "$BENCH_SRC/bench/instant_model.c" -lpthread
    [ "$(id -u)" -eq 0 ] && chown -R "$bench_user" "$DIR"
    trap bench_exit EXIT
    trap 'exit 130' INT TERM
    P=(psql -X -q -At -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
}

run() { if [ "$(id -un)" = "$bench_user" ]; then "$@"; else runuser -u "$bench_user" -- "$@"; fi; }
sql() { run "${P[@]}" "$@"; }

# Stops what this script started (by the pids it wrote down) and its cluster.
bench_stop_all() {
    local f
    for f in "$DIR"/*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    if [ -f "$DIR/data/postmaster.pid" ]; then
        run pg_ctl -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    fi
}

# At exit: stop everything; remove the directory unless asked to keep it or
# the script failed (its logs say why).
bench_exit() {
    local rc=$?
    bench_stop_all
    if [ "$rc" -ne 0 ]; then
        echo "failed; logs kept in $DIR" >&2
    elif [ -z "${BENCH_DIR:-}${BENCH_KEEP:-}" ]; then
        rm -rf "$DIR"
    fi
}

# bench_model DELAY_MS: (re)start the instant endpoint; sets URL, BASE_URL.
bench_model() {
    [ -f "$DIR/model.pid" ] && { kill "$(cat "$DIR/model.pid")" 2>/dev/null || true; rm -f "$DIR/model.pid"; }
    rm -f "$DIR/port"
    run bash -c 'echo $$ > "$0/model.pid"; exec "$0/instant_model" --delay-ms "$1" --port-file "$0/port"' \
        "$DIR" "${1:-0}" 2>>"$DIR/model.log" &
    for _ in $(seq 100); do [ -s "$DIR/port" ] && [ -s "$DIR/model.pid" ] && break; sleep 0.1; done
    BASE_URL="http://127.0.0.1:$(cat "$DIR/port")/v1"
    URL="$BASE_URL/chat/completions"
}

# bench_cluster [CONF...]: a fresh cluster with the library preloaded and the
# extension created; the arguments are extra postgresql.conf lines.
bench_cluster() {
    bench_cluster_stop
    rm -rf "$DIR/data"
    run initdb -D "$DIR/data" -A trust -U postgres >/dev/null
    {
        echo "shared_preload_libraries = 'docextract'"
        echo "port = $PORT"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$DIR'"
        echo "max_connections = 300"
        echo "docextract.poll_interval = '60s'"
        printf '%s\n' "$@"
        echo "${BENCH_CONF:-}"
    } >> "$DIR/data/postgresql.conf"
    bench_cluster_start
    sql -c "CREATE EXTENSION docextract" >/dev/null
}
# bench_cluster_statements: bench_cluster, with pg_stat_statements preloaded
# (track = all: the triggers' and the worker's statements too) and created
# when BENCH_STATEMENTS is set.
bench_cluster_statements() {
    if [ -n "${BENCH_STATEMENTS:-}" ]; then
        bench_cluster "shared_preload_libraries = 'docextract,pg_stat_statements'" \
                      "pg_stat_statements.track = all" "pg_stat_statements.max = 10000"
        sql -c "CREATE EXTENSION pg_stat_statements" >/dev/null
    else
        bench_cluster
    fi
}
# bench_trigger_form: the table bench.invoices with the trigger form (the
# result and the status written back to each row).
bench_trigger_form() {
    sql >/dev/null <<SQL
CREATE TABLE bench.invoices (id serial PRIMARY KEY, pdf bytea, extracted jsonb, state text);
CREATE TRIGGER invoices_extract AFTER INSERT ON bench.invoices FOR EACH ROW
  EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'state');
SQL
}
# copy_rows C: $DIR/copy.txt, C rows of the fixture PDF for COPY bench.invoices (pdf).
copy_rows() {
    local hex
    hex=$(od -An -v -tx1 "$DIR/invoice.pdf" | tr -d ' \n')
    for _ in $(seq "$1"); do printf '\\\\x%s\n' "$hex"; done > "$DIR/copy.txt"
    [ "$(id -u)" -ne 0 ] || chown "$bench_user" "$DIR/copy.txt"
}
bench_cluster_start() { run pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w -t 120 start >/dev/null; }
bench_cluster_stop() {
    if [ -f "$DIR/data/postmaster.pid" ]; then run pg_ctl -D "$DIR/data" -m fast -w stop >/dev/null; fi
}
# A postgresql.conf line more, for the next start.
bench_conf() { printf '%s\n' "$@" >> "$DIR/data/postgresql.conf"; }

# bench_setup NDOCS [MODEL_OPTIONS]: the model, credits, the template, NDOCS
# documents (added through add_document, so parsed like any) in bench.docs(n),
# the client worker's jobs table, and the helpers the scripts call.
bench_setup() {
    local ndocs=$1 opts=${2:-'{}'}
    sql >/dev/null <<SQL
SELECT docextract.add_model('default', 'openai', '$BASE_URL', 'bench-model', NULL, '$opts');
SELECT docextract.grant_credits(current_user, 1000000000, 'bench');
SELECT docextract.create_template('invoice', '{"general_part": {
  "invoice_number": {"name": "Invoice Number", "format_type": "text"},
  "invoice_date": {"name": "Invoice Date", "format_type": "date"},
  "total_amount": {"name": "Total Amount", "format_type": "number"}},
  "table_part": {"description": {"name": "Description", "format_type": "text"},
                 "amount": {"name": "Amount", "format_type": "number"}}}');
CREATE SCHEMA bench;
CREATE TABLE bench.docs (n int PRIMARY KEY, id uuid NOT NULL, filename text, pages int, content bytea, text text);
INSERT INTO bench.docs
SELECT i, docextract.add_document('invoice-' || i || '.pdf', pg_read_binary_file('$DIR/invoice.pdf'))
  FROM generate_series(1, $ndocs) i;
UPDATE bench.docs b SET filename = d.filename, pages = d.page_count, content = d.content, text = d.text
  FROM docextract.documents d WHERE d.id = b.id;
-- The client-side worker's queue, as a user would write it.
CREATE TABLE bench.jobs (id bigserial PRIMARY KEY, doc int NOT NULL REFERENCES bench.docs,
    status text NOT NULL DEFAULT 'pending', result jsonb, error text,
    created_at timestamptz NOT NULL DEFAULT now(), started_at timestamptz, completed_at timestamptz);
CREATE INDEX jobs_pending ON bench.jobs (id) WHERE status = 'pending';
CREATE FUNCTION bench.submit(n int) RETURNS uuid LANGUAGE sql AS
  \$\$ SELECT docextract.extract_document(d.id, (SELECT id FROM docextract.templates WHERE name = 'invoice'),
                                          '{"force": true}')
         FROM bench.docs d WHERE d.n = submit.n \$\$;
CREATE FUNCTION bench.submit_job(n int) RETURNS bigint LANGUAGE sql AS
  \$\$ INSERT INTO bench.jobs (doc) VALUES (n) RETURNING id \$\$;
-- Waits, committing between looks (so it holds no snapshot back), until
-- nothing is queued or running; the looks use the queue's partial indexes.
CREATE PROCEDURE bench.wait_drained(jobs boolean, timeout_s float8 DEFAULT 3600) LANGUAGE plpgsql AS \$\$
DECLARE deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
BEGIN
  LOOP
    COMMIT;
    IF jobs THEN
      EXIT WHEN NOT EXISTS (SELECT 1 FROM bench.jobs WHERE status = 'pending')
            AND NOT EXISTS (SELECT 1 FROM bench.jobs WHERE status = 'processing');
    ELSE
      EXIT WHEN NOT EXISTS (SELECT 1 FROM docextract.extractions WHERE status IN ('pending', 'retrying'))
            AND NOT EXISTS (SELECT 1 FROM docextract.extractions WHERE status = 'processing');
    END IF;
    IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'not drained after % s', timeout_s; END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
END \$\$;
SQL
    TID=$(sql -c "SELECT id FROM docextract.templates WHERE name = 'invoice'")
}

# The pids of the job worker process(es), as pg_stat_activity names them.
worker_pids() { sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'docextract worker' ORDER BY pid" | tr '\n' ' '; }

# Waits until N job workers run (the launcher may start them a moment after the server).
wait_workers() {
    local n=${1:-1}
    for _ in $(seq 300); do
        [ "$(worker_pids | wc -w)" -ge "$n" ] && return 0
        sleep 0.1
    done
    echo "fewer than $n docextract worker(s) running (see $DIR/server.log)" >&2; return 1
}

# CPU ticks (user + system, with waited-for children: the parser's forks) of
# pids, in one awk (a fork per process would take seconds on a loaded machine).
ticks() {
    local files=() p
    for p in "$@"; do [ -r "/proc/$p/stat" ] && files+=("/proc/$p/stat"); done
    [ "${#files[@]}" -gt 0 ] || { echo 0; return; }
    awk '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { print t + 0 }' "${files[@]}" 2>/dev/null || echo 0
}
# The whole server: the postmaster (its reaped children included) and every live child.
server_ticks() {
    local pm
    pm=$(head -1 "$DIR/data/postmaster.pid")
    ticks "$pm" $(pgrep -P "$pm" | tr '\n' ' ')
}

# snapshot FILE: "time server worker client model" ticks; the time is taken
# last, so that a "before" snapshot's time is just before the commit.
# The pids to count are in $DIR/worker.pids, client.pid and model.pid.
snapshot() {
    local s w c m
    s=$(server_ticks)
    w=$(ticks $(cat "$DIR/worker.pids" 2>/dev/null))
    c=$(ticks $(cat "$DIR/client.pid" 2>/dev/null))
    m=$(ticks $(cat "$DIR/model.pid"))
    printf '%s %s %s %s %s\n' "$(date +%s.%N)" "$s" "$w" "$c" "$m" > "$1"
}
# psql runs this between its statements (\!), as the cluster's user.
write_snapshot_script() {
    declare -f ticks server_ticks snapshot > "$DIR/snapshot.sh"
    echo "DIR=$DIR; snapshot \"\$1\"" >> "$DIR/snapshot.sh"
    [ "$(id -u)" -eq 0 ] && chown "$bench_user" "$DIR/snapshot.sh"
    return 0
}

# bench_client_start THREADS: the client-side worker, polling bench.jobs.
bench_client_start() {
    run env PGHOST="$DIR" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres \
        bash -c 'echo $$ > "$0/client.pid"; exec "$@"' "$DIR" \
        $PY "$DIR/client_worker.py" --threads "${1:-16}" --url "$URL" --body "$DIR/request.json" \
        --poll "${BENCH_CLIENT_POLL:-0.01}" >"$DIR/client.log" 2>&1 &
    for _ in $(seq 100); do grep -q ready "$DIR/client.log" 2>/dev/null && return 0; sleep 0.1; done
    cat "$DIR/client.log" >&2; exit 1
}
bench_client_stop() {
    [ -f "$DIR/client.pid" ] || return 0
    local pid
    pid=$(cat "$DIR/client.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$DIR/client.pid"
}

# capture_request: one extraction through docextract, and the body the
# endpoint received, kept as the client worker's request template.
capture_request() {
    sql -c "SELECT bench.submit(1)" >/dev/null
    sql -c "CALL bench.wait_drained(false, 60)"
    curl -s "$BASE_URL/../_last" -o "$DIR/request.json"
    [ -s "$DIR/request.json" ] || { echo "no request captured" >&2; exit 1; }
}

# endpoint_capacity: the endpoint alone, with docextract's request body.
endpoint_capacity() {
    echo "endpoint alone (16 keep-alive connections, 2 s, docextract's request body):" \
        "$("$DIR/instant_model" --load "127.0.0.1:$(cat "$DIR/port")" --conns 16 --seconds 2 --body-file "$DIR/request.json")"
}

# drain WHO N [SUBMITTERS [LABEL SUBMIT_SQL]]: WHO is docextract or client.
# SUBMITTERS = 0: N submits committed in one transaction, measured from that
# commit to the last completion (a pre-committed backlog); SUBMIT_SQL, if
# given, is that transaction's work instead (a COPY into a trigger-form
# table), LABEL its name.  SUBMITTERS > 0: that many pgbench clients submit N
# in all, one transaction each, while the worker drains; measured from the
# first submit.  Appends one line to $DIR/results:
#   who mode n submit/s seconds per_s worker_ms server_ms client_ms model_ms failed
drain() {
    local who=$1 n=$2 subs=${3:-0} label=${4:-} fn=bench.submit jobs=false
    [ "$who" = client ] && { fn=bench.submit_job; jobs=true; }
    if [ "$who" = docextract ]; then worker_pids > "$DIR/worker.pids"; else rm -f "$DIR/worker.pids"; fi
    write_snapshot_script
    local ndocs mark
    ndocs=$(sql -c "SELECT count(*) FROM bench.docs")
    mark=$(sql -c "SELECT clock_timestamp()")
    echo "$mark" > "$DIR/mark"
    rm -f "$DIR/submit_start" "$DIR/submit_end"
    if [ "$subs" -eq 0 ]; then
        sql >/dev/null <<SQL
BEGIN;
\o $DIR/submit_start
SELECT extract(epoch FROM clock_timestamp());
\o /dev/null
${5:-SELECT count($fn(1 + i % $ndocs)) FROM generate_series(1, $n) i;}
\o $DIR/submit_end
SELECT extract(epoch FROM clock_timestamp());
\o
\! bash $DIR/snapshot.sh $DIR/before
COMMIT;
CALL bench.wait_drained($jobs);
\! bash $DIR/snapshot.sh $DIR/after
SQL
    else
        # The statement an application's driver would prepare once a
        # connection (-M prepared): a wrapper function's body is parsed and
        # planned again on every call.
        local stmt="INSERT INTO bench.jobs (doc) VALUES (:n);"
        [ "$who" = docextract ] && stmt="SELECT docextract.extract_document(d.id, '$TID', '{\"force\": true}')
  FROM bench.docs d WHERE d.n = :n;"
        printf '%s\n%s\n' "\\set n random(1, $ndocs)" "$stmt" > "$DIR/submit.sql"
        run bash "$DIR/snapshot.sh" "$DIR/before"
        run pgbench -n -M prepared -h "$DIR" -p "$PORT" -U postgres -c "$subs" -j "$subs" \
            -t $(( (n + subs - 1) / subs )) -f "$DIR/submit.sql" postgres >"$DIR/pgbench.log" 2>&1
        n=$(( (n + subs - 1) / subs * subs ))
        sql -c "CALL bench.wait_drained($jobs)"
        run bash "$DIR/snapshot.sh" "$DIR/after"
    fi
    local last first failed table=docextract.extractions
    [ "$who" = client ] && table=bench.jobs
    read -r last first failed < <(sql -F ' ' -c "SELECT extract(epoch FROM max(completed_at)), extract(epoch FROM min(created_at)),
        count(*) FILTER (WHERE status <> 'completed') FROM $table WHERE created_at >= '$mark'")
    # With submitters, measured from the first submit (not from pgbench's start).
    [ "$subs" -gt 0 ] && echo "$first" > "$DIR/submit_start"
    local mode=${label:-backlog} started
    [ "$subs" -gt 0 ] && mode="$subs submitters"
    started=$(cat "$DIR/submit_start")
    local submitted=${started}
    [ -f "$DIR/submit_end" ] && submitted=$(cat "$DIR/submit_end")
    awk -v who="$who" -v mode="$mode" -v n="$n" -v last="$last" -v failed="$failed" \
        -v started="$started" -v submitted="$submitted" -v hz="$(getconf CLK_TCK)" '
        NR == 1 { t0 = $1; s0 = $2; w0 = $3; c0 = $4; m0 = $5 }
        NR == 2 { ms = 1000 / hz / n
                  if (mode ~ /submitters/) { s = last - started; sub_rate = "-" }
                  else { s = last - t0; sub_rate = sprintf("%.0f", n / (submitted - started)) }
                  printf "%s|%s|%d|%s|%.2f|%.1f|%s|%.2f|%s|%.2f|%d\n", who, mode, n, sub_rate, s, n / s,
                      who == "docextract" ? sprintf("%.2f", ($3 - w0) * ms) : "-", ($2 - s0) * ms,
                      who == "client" ? sprintf("%.2f", ($4 - c0) * ms) : "-", ($5 - m0) * ms, failed }' \
        "$DIR/before" "$DIR/after" >> "$DIR/results"
}

# Prints $DIR/results as a table.
print_results() {
    { echo "who|submitted as|n|submitted/s|seconds|extractions/s|worker CPU ms/extraction|server CPU ms/extraction|client worker CPU ms/extraction|endpoint CPU ms/extraction|not completed"
      cat "$DIR/results"; } | column -t -s '|'
}
