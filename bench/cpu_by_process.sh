#!/usr/bin/env bash
# Where the CPU of a drain with submitters goes, by process: SUBMITTERS
# pgbench clients submit (prepared, one transaction each) for SECONDS while
# the job worker drains, then the script waits until nothing is left.
# Prints CPU ms per extraction of each kind of process: the submitting
# backends (they exit with pgbench: counted from the postmaster's reaped
# children), each live server process by its title (the job worker, the
# walwriter, autovacuum, ...), pgbench itself and the endpoint.
#   bash bench/cpu_by_process.sh            4 submitters, 6 s
#   BENCH_CONF='synchronous_commit = off' bash bench/cpu_by_process.sh
# Also BENCH_SUBMITTERS, BENCH_SECONDS, PG_CONFIG, BENCH_DIR (bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
SUBMITTERS=${BENCH_SUBMITTERS:-4}
SECONDS_RUN=${BENCH_SECONDS:-6}
bench_init cpu_by_process
bench_model 0
bench_cluster
bench_setup 1000 '{"document_mode": "text"}'
wait_workers 1
capture_request
drain docextract 2000 "$SUBMITTERS" "warm-up" >/dev/null

# "pid own-ticks reaped-children-ticks title" for the server's processes and the endpoint.
processes() {
    local pm p
    pm=$(head -1 "$DIR/data/postmaster.pid")
    for p in "$pm" $(pgrep -P "$pm") $(cat "$DIR/model.pid"); do
        [ -r "/proc/$p/stat" ] || continue
        printf '%s %s %s\n' "$p" "$(awk '{ sub(/^.*\) /, ""); print $12 + $13, $14 + $15 }' "/proc/$p/stat")" \
            "$(tr '\0' ' ' < "/proc/$p/cmdline" | sed -e 's/^postgres: //' -e 's/ *$//')"
    done
}
printf '%s\n' "\\set n random(1, 1000)" \
    "SELECT docextract.extract_document(d.id, '$TID', '{\"force\": true}') FROM bench.docs d WHERE d.n = :n;" \
    > "$DIR/submit.sql"
[ "$(id -u)" -eq 0 ] && chown "$bench_user" "$DIR/submit.sql"
before=$(sql -c "SELECT count(*) FROM docextract.extractions")
processes > "$DIR/cpu.before"
# pgbench's own CPU: the shell's children's times (bash's "times", second line).
run bash -c 'pgbench -n -M prepared -h "$0" -p "$1" -U postgres -c "$2" -j "$2" -T "$3" -f "$0/submit.sql" postgres \
    2>&1; times' "$DIR" "$PORT" "$SUBMITTERS" "$SECONDS_RUN" > "$DIR/pgbench.log"
tail -1 "$DIR/pgbench.log" > "$DIR/pgbench.times"
sql -c "CALL bench.wait_drained(false)"
processes > "$DIR/cpu.after"
n=$(( $(sql -c "SELECT count(*) FROM docextract.extractions") - before ))
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores; $SUBMITTERS submitters for $SECONDS_RUN s," \
     "synchronous_commit = $(sql -c 'SHOW synchronous_commit'): $n extractions"
awk -v n="$n" -v hz="$(getconf CLK_TCK)" -v pgb="$(cat "$DIR/pgbench.times")" '
    function secs(t,  m, s) { m = t; sub(/m.*/, "", m); s = t; sub(/^[0-9]+m/, "", s); sub(/s$/, "", s); return m * 60 + s }
    FNR == NR { own[$1] = $2; reaped[$1] = $3; next }
    { title = $0; sub(/^[0-9]+ [0-9]+ [0-9]+ /, "", title)
      if (title ~ /instant_model/) title = "the endpoint"
      else if (title ~ /postgres -D/) title = "postmaster"
      cpu[title] += $2 - ($1 in own ? own[$1] : 0)
      if ($1 in reaped) cpu["exited processes (the submitting backends; autovacuum workers that ended)"] += $3 - reaped[$1] }
    END { split(pgb, t, " "); cpu["pgbench"] = (secs(t[1]) + secs(t[2])) * hz
          for (k in cpu) if (cpu[k] > 0) printf "%8.3f ms/extraction  %s\n", cpu[k] * 1000 / hz / n, k }' \
    "$DIR/cpu.before" "$DIR/cpu.after" | sort -rn
