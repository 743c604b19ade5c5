#!/usr/bin/env bash
# Does the queue's cost grow with history or with the backlog?
#   1. throughput (a pre-committed backlog of N = 1,000) with 0, 300k and 1M
#      finished extractions (and their events) stored, the history built by
#      real status changes: each on a document of its own (a copy of the
#      fixture's stored row), submitted by extract_document's INSERT (pending,
#      with its event and credit reservation), then UPDATEd to processing and
#      to completed with a result, BATCH rows a statement, autovacuum on; the
#      worker is not running meanwhile (the server runs without the preload),
#      so each batch folds its settled credits as the worker would, and the
#      build ends with a VACUUM (ANALYZE), as autovacuum would have done
#      over the months such a history takes to build; before each drain,
#      200 extractions (not measured) warm the cluster up;
#   2. the same at 1M with an old snapshot held: a REPEATABLE READ session
#      that has read the extractions stays open through the run;
#   3. backlogs of 1k, 10k and 100k pending, each committed at once;
#   4. COPY of 1,000 and of 10,000 rows into a trigger-form table: the COPY's
#      ingest rate (rows/s) and the drain rate, and when the last write-back
#      was done.
# Target (issue 12): each within 20 % of the 0-history / 1k figure.
#   bash bench/history.sh
#   BENCH_SCALE=0.01 bash bench/history.sh     quick check (3k/10k history, ...)
# Also: BENCH_N (1000: the drains of parts 1 and 2),
# BENCH_HISTORY="0 300000 1000000", BENCH_BACKLOGS="1000 10000 100000",
# BENCH_COPIES="1000 10000" (set empty: none), BENCH_BATCH (10000); PG_CONFIG, BENCH_CONF, ... (bench/lib.sh)
# BENCH_STATEMENTS=1: with pg_stat_statements (track = all: the triggers' and
# the worker's statements too), each history drain of part 1 starts after a
# CHECKPOINT and prints its top statements by shared buffers per extraction,
# with their reads, full-page images and WAL bytes per extraction: figures
# that do not depend on the machine's load, to compare across histories.
cd "$(dirname "$0")/.."
. bench/lib.sh
N=$(scaled "${BENCH_N:-1000}")
BATCH=${BENCH_BATCH:-10000}
HISTORY=${BENCH_HISTORY:-"0 300000 1000000"}
BACKLOGS=${BENCH_BACKLOGS-"1000 10000 100000"}
COPIES=${BENCH_COPIES-"1000 10000"}
bench_init history
bench_model 0
bench_cluster_statements
bench_setup 100
sql -c "CREATE TABLE bench.hist_batch (id uuid)"
wait_workers 1
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p');" \
     "synchronous_commit = $(sql -c 'SHOW synchronous_commit'), docextract.max_inflight = $(sql -c 'SHOW docextract.max_inflight')"

RESULT='{"general": {"invoice_date": "2026-03-14", "invoice_number": "INV-2026-0042", "total_amount": 1469.06},
  "table": [{"amount": 200.00, "description": "Steel widgets, boxed"}, {"amount": 125.00, "description": "Copper fittings"},
            {"amount": 909.50, "description": "Installation service"}]}'

# add_history K: K more finished extractions, by real status changes, with
# the worker stopped (the server restarted without the preload meanwhile).
add_history() {
    local left=$1 b
    [ "$left" -gt 0 ] || return 0
    bench_cluster_stop
    run pg_ctl -D "$DIR/data" -l "$DIR/server.log" -o "-c shared_preload_libraries=" -w -t 120 start >/dev/null
    while [ "$left" -gt 0 ]; do
        b=$(( left < BATCH ? left : BATCH ))
        sql >/dev/null <<SQL
SET client_min_messages = error;   -- "nothing will process the job": not now, indeed
-- A document of its own for each (as an application's history has): copies
-- of the fixture's stored row, as add_document stored it (parsing a million
-- copies would take hours); then the submit's INSERT.
TRUNCATE bench.hist_batch;
WITH d AS (INSERT INTO docextract.documents (filename, content_type, size_bytes, sha256, page_count, content, text, owner)
           SELECT 'history-' || i || '.pdf', f.content_type, f.size_bytes, f.sha256, f.page_count, f.content, f.text, f.owner
             FROM docextract.documents f, generate_series(1, $b) i
            WHERE f.id = (SELECT id FROM bench.docs WHERE n = 1)
           RETURNING id)
INSERT INTO bench.hist_batch SELECT id FROM d;
-- What extract_document inserts (its checks, which change nothing, left
-- out: called a million times they took most of an hour): the row, through
-- the same INSERT trigger (the credit reservation), and its outbox row,
-- which the submit's own statement writes (src/submit.c).
SET docextract.submitting = on;
WITH x AS (INSERT INTO docextract.extractions (document_id, template_id, options, owner, model_name, parts)
           SELECT id, '$TID', '{}', current_user::regrole, 'default', 1 FROM bench.hist_batch
           RETURNING id, owner, document_id, status, template_id, attempts, completion_percentage)
INSERT INTO docextract.events (id, event, extraction_id, owner, payload)
SELECT n.event_id, 'extraction.queued', n.id, n.owner, json_build_object(
       'event', 'extraction.queued', 'extraction_id', n.id, 'document_id', n.document_id,
       'status', n.status, 'template_id', n.template_id, 'attempts', n.attempts,
       'completion_percentage', n.completion_percentage, 'event_id', n.event_id,
       'created_at', clock_timestamp())
  FROM (SELECT x.*, nextval('docextract.events_id_seq') AS event_id FROM x) n;  -- one id a row
RESET docextract.submitting;
UPDATE docextract.extractions SET status = 'processing', started_at = clock_timestamp(), attempts = 1
 WHERE status = 'pending';
INSERT INTO docextract.results (extraction_id, document_id, template_id, owner, data, usage)
SELECT id, document_id, template_id, owner, '$RESULT',
       '{"input_tokens": 400, "output_tokens": 60, "latency_ms": 1, "model": "bench-model", "attempts": 1}'
  FROM docextract.extractions WHERE status = 'processing';
UPDATE docextract.extractions SET status = 'completed', completed_at = clock_timestamp(), completion_percentage = 100
 WHERE status = 'processing';
-- What the worker does after such a batch: fold the settled credits.
SELECT docextract.fold_credit_deltas();
SQL
        left=$((left - b))
    done
    # What autovacuum would have done over the months such a history takes
    # to build (here built in minutes: it is still at work on the large
    # tables when the drain starts, and that drain would measure it).
    sql -c "VACUUM (ANALYZE)" >/dev/null
    bench_cluster_stop
    bench_cluster_start
    wait_workers 1
}

# 200 extractions, not measured, before each drain of part 1: the first
# drain of a new cluster, or after the restart for the worker (which
# emptied shared buffers, where a server that built its history over months
# has its live rows' pages), would measure its start-up.
warm_up() {
    sql -c "SELECT count(bench.submit(1 + i % 10)) FROM generate_series(1, 200) i" \
        -c "CALL bench.wait_drained(false)" >/dev/null
}

stored() {
    sql -c "SELECT format('%s finished extractions, %s events; extractions %s, events %s, results %s',
        (SELECT count(*) FROM docextract.extractions), (SELECT count(*) FROM docextract.events),
        pg_size_pretty(pg_total_relation_size('docextract.extractions')),
        pg_size_pretty(pg_total_relation_size('docextract.events')),
        pg_size_pretty(pg_total_relation_size('docextract.results')))"
}

# statements LABEL: what the last drain's statements touched, per extraction
# (nested statements count in their caller's figures too; drain's own
# closing query, on created_at, reads the whole table).
statements() {
    [ -n "${BENCH_STATEMENTS:-}" ] || return 0
    sleep 2     # the worker reports its table statistics at most once a second
    echo "$1: top statements, per extraction: shared buffers (hit + read), reads, full-page images, WAL bytes"
    sql -F ' | ' -c "SELECT to_char((shared_blks_hit + shared_blks_read) / $N.0, 'FM99990.00'),
            to_char(shared_blks_read / $N.0, 'FM9990.00'), to_char(wal_fpi / $N.0, 'FM990.00'),
            round(wal_bytes / $N), calls, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
       FROM pg_stat_statements ORDER BY shared_blks_hit + shared_blks_read DESC LIMIT 15"
    sql -F ' | ' -c "SELECT relname, 'index fetches/extraction', round(coalesce(idx_tup_fetch, 0) / $N.0, 2),
            'seq scans', seq_scan FROM pg_stat_user_tables WHERE schemaname = 'docextract'
        AND relname IN ('extractions', 'events', 'results', 'documents', 'credit_ledger') ORDER BY 1"
    sql -F ' | ' -c "SELECT indexrelname, 'scans/extraction', round(idx_scan / $N.0, 2),
            'entries read', round(idx_tup_read / $N.0, 2), 'rows fetched', round(idx_tup_fetch / $N.0, 2)
       FROM pg_stat_user_indexes WHERE schemaname = 'docextract' AND relname = 'extractions'
        AND idx_tup_read > 0 ORDER BY 1"
}
before_drain() {
    [ -n "${BENCH_STATEMENTS:-}" ] || return 0
    sql -c "CHECKPOINT" -c "SELECT pg_stat_statements_reset(), pg_stat_reset()" >/dev/null
}

echo "-- 1. history: throughput of a $N-extraction backlog with finished extractions stored"
have=0
for h in $HISTORY; do
    h=$(scaled "$h" 0)
    t0=$(date +%s)
    add_history $((h - have))
    have=$h
    echo "history $h: built in $(( $(date +%s) - t0 )) s; $(stored)"
    warm_up
    before_drain
    drain docextract "$N" 0 "history $h"
    statements "history $h"
    have=$((have + N))
done

echo "-- 2. the same with an old snapshot held (REPEATABLE READ, has read the extractions)"
run env PGAPPNAME=bench_old_snapshot bash -c 'echo $$ > "$0/oldsnap.pid"; exec "$@"' "$DIR" \
    "${P[@]}" -c "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM docextract.extractions;
                  SELECT pg_sleep(86400);" >/dev/null 2>&1 &
sql -c "SELECT 1 FROM pg_stat_activity WHERE application_name = 'bench_old_snapshot' AND backend_xmin IS NOT NULL" | grep -q 1 \
    || { sleep 1; sql -c "SELECT 1 FROM pg_stat_activity WHERE application_name = 'bench_old_snapshot' AND backend_xmin IS NOT NULL" | grep -q 1; }
drain docextract "$N" 0 "history $have, old snapshot"
sql -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_old_snapshot'" >/dev/null

echo "-- 3. backlogs (each committed at once), history $have"
for b in $BACKLOGS; do
    b=$(scaled "$b")
    drain docextract "$b" 0 "backlog $b"
done

echo "-- 4. COPY into a trigger-form table, then its drain"
bench_trigger_form
for c in $COPIES; do
    c=$(scaled "$c")
    copy_rows "$c"
    drain docextract "$c" 0 "COPY $c rows" "COPY bench.invoices (pdf) FROM '$DIR/copy.txt';"
    # The write-backs follow the completions (the write-back worker).
    until [ "$(sql -c "SELECT count(*) FILTER (WHERE state IS DISTINCT FROM 'completed') FROM bench.invoices")" = 0 ]; do
        sleep 0.1
    done
    echo "COPY $c rows: every row written back $(awk -v now="$(date +%s.%N)" '{ printf "%.2f", now - $1 }' "$DIR/before") s after the commit"
    sql -c "TRUNCATE bench.invoices"
done
print_results
