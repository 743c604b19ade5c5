#!/usr/bin/env bash
# The statement triggers on docextract.extractions that pair each changed
# row's old and new version (announce_status, count_outcome: transition
# tables old_rows and new_rows, joined on id) for one UPDATE of N rows.
# Their plpgsql plans are kept from their first call; when that call changed
# one row (as the worker's first claim or a single cancel does), the
# transition tables were planned at 1 row each.  So each N first follows a
# 1-row UPDATE in the same session, then one UPDATE cancels N pending
# extractions (rolled back: every N starts from the same rows).  No worker
# serves the database (docextract.databases names another), so nothing moves
# meanwhile, and autovacuum is off.  Prints, per N: each trigger's time and
# the whole UPDATE's (EXPLAIN ANALYZE), then, with auto_explain on the
# triggers' statements (the row triggers disabled in that transaction, so
# that only these are logged), each statement's join and the row pairs its
# join filter rejected (a nested loop over both tables: N^2 - N).
#   bash bench/transition_joins.sh                   N = 1000 4000 16000
#   BENCH_SIZES='1000 2000' bash bench/transition_joins.sh
# Also PG_CONFIG, BENCH_NO_BUILD ... (bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZES=${BENCH_SIZES:-1000 4000 16000}
bench_init transition_joins
bench_model 0
# autovacuum off: an analyze between the 1-row call and the UPDATE would make
# the triggers plan again, at N rows.
bench_cluster "docextract.databases = 'bench_no_such_database'" "autovacuum = off"
max=$(printf '%s\n' $SIZES | sort -n | tail -1)
sql >/dev/null <<SQL
SET client_min_messages = error;  -- no worker serves it, on purpose
SELECT docextract.add_model('default', 'openai', '$BASE_URL', 'bench-model', NULL, '{}');
SELECT docextract.grant_credits(current_user, 1000000000, 'bench');
SELECT docextract.create_template('invoice', '{"general_part": {
  "invoice_number": {"name": "Invoice Number", "format_type": "text"}}}');
CREATE TABLE bench_doc AS
SELECT docextract.add_document('invoice.pdf', pg_read_binary_file('$DIR/invoice.pdf')) AS id;
SELECT count(docextract.extract_document((SELECT id FROM bench_doc),
                                         (SELECT id FROM docextract.templates), '{"force": true}'))
  FROM generate_series(0, $max);
VACUUM ANALYZE docextract.extractions;
SQL
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
prime="UPDATE docextract.extractions SET status = 'cancelled'
        WHERE id = (SELECT id FROM docextract.extractions WHERE status = 'pending' ORDER BY created_at DESC LIMIT 1);"
batch() { echo "UPDATE docextract.extractions SET status = 'cancelled'
        WHERE id IN (SELECT id FROM docextract.extractions WHERE status = 'pending' ORDER BY created_at LIMIT $1);"; }
{ echo "N|announce_status ms|count_outcome ms|whole UPDATE ms|announce_status join|pairs rejected|count_outcome join|pairs rejected"
for n in $SIZES; do
    times=$(sql <<SQL | awk '
        /Trigger extractions_announce:/ { sub(/.*time=/, ""); a = $1 }
        /Trigger extractions_count_outcome:/ { sub(/.*time=/, ""); c = $1 }
        /Execution Time:/ { t = $3 }
        END { printf "%s|%s|%s", a, c, t }'
BEGIN;
$prime
EXPLAIN (ANALYZE) $(batch "$n")
ROLLBACK;
SQL
)
    start=$(stat -c %s "$DIR/server.log")
    sql >/dev/null <<SQL
LOAD 'auto_explain';
BEGIN;
-- Before the first call: DDL on the table would make the triggers plan again.
ALTER TABLE docextract.extractions DISABLE TRIGGER USER, ENABLE TRIGGER extractions_announce,
    ENABLE TRIGGER extractions_count_outcome;
$prime
SET LOCAL auto_explain.log_min_duration = 0;
SET LOCAL auto_explain.log_analyze = on;
SET LOCAL auto_explain.log_timing = off;
SET LOCAL auto_explain.log_nested_statements = on;
$(batch "$n")
ROLLBACK;
SQL
    joins=$(tail -c +"$((start + 1))" "$DIR/server.log" | awk '
        function flush() { if (q != "") printf "%s|%d|", (j == "" ? "none" : j), r; q = ""; j = ""; r = 0 }
        /Query Text: WITH changed/ { flush(); q = "announce" }
        /Query Text: INSERT INTO docextract.model_stat_deltas/ { flush(); q = "count" }
        q != "" && /(Nested Loop|Hash Join|Merge Join)/ && j == "" { j = $0; sub(/^.*-> */, "", j); sub(/^.*: */, "", j); sub(/ *\(.*/, "", j) }
        q != "" && /Rows Removed by Join Filter:/ { r += $NF }
        END { flush() }')
    echo "$n|$times|${joins%|}"
done; } | column -t -s '|'
