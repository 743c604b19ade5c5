#!/usr/bin/env bash
# docextract against the client-side worker it replaces (bench/client_worker.py:
# Python, psycopg2 + requests, THREADS threads polling with SKIP LOCKED), in the
# same run, on the same documents, the same endpoint (bench/instant_model.c,
# measured alone first) and the same cluster:
#   1. a pre-committed backlog of N one-page PDFs (one transaction), drained;
#   2. N submitted by SUBMITTERS pgbench clients, one transaction each, while
#      the worker drains.
# Prints extractions/s, the ratio, and CPU per extraction: docextract's job
# worker process(es), the whole server (postmaster and every child, backends
# and walwriter included), the client worker's own process, the endpoint.
# Then the ratio of CPU an extraction costs (client over docextract).
#   bash bench/compare.sh                    N=2000, synchronous_commit = on
#   BENCH_CONF='synchronous_commit = off' bash bench/compare.sh
#   BENCH_SCALE=0.1 bash bench/compare.sh    quick check (200 documents)
# Also: BENCH_THREADS (16), BENCH_SUBMITTERS (4), BENCH_DOCUMENT_MODE (text|file),
# BENCH_REPEAT (3: pairs of submitter runs, docextract then the client),
# BENCH_SUBMITS (N: submits of each submitter run; a run of 2,000 lasts about
# 2 s, of which the four new connections' first submits are a part),
# BENCH_CLIENT_POLL (seconds an idle client thread sleeps, 0.01),
# and PG_CONFIG, BENCH_DIR (see bench/lib.sh).
cd "$(dirname "$0")/.."
. bench/lib.sh
N=$(scaled 2000)
THREADS=${BENCH_THREADS:-16}
SUBMITTERS=${BENCH_SUBMITTERS:-4}
MODE=${BENCH_DOCUMENT_MODE:-text}
REPEAT=${BENCH_REPEAT:-3}
SUBMITS=${BENCH_SUBMITS:-$N}
bench_init compare
bench_model 0
bench_cluster
bench_setup "$N" "{\"document_mode\": \"$MODE\"}"
wait_workers 1
capture_request
echo "== $(date -u '+%F %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); $N one-page PDFs," \
     "document_mode $MODE, synchronous_commit = $(sql -c 'SHOW synchronous_commit')," \
     "docextract.max_inflight = $(sql -c 'SHOW docextract.max_inflight'), client worker: $THREADS threads"
endpoint_capacity

# Each runs alone: the client worker's threads poll even when idle.
drain docextract "$N"
bench_client_start "$THREADS"; grep "request body" "$DIR/client.log"
drain client "$N"; bench_client_stop
# The client's own rate with submitters moves by a fifth from run to run:
# BENCH_REPEAT pairs, one after the other, and their median ratio.
for _ in $(seq "$REPEAT"); do
    drain docextract "$SUBMITS" "$SUBMITTERS"
    bench_client_start "$THREADS"; drain client "$SUBMITS" "$SUBMITTERS"; bench_client_stop
done
print_results
# Where the two cores are the limit, the rate ratio tends to the ratio of
# CPU an extraction costs: the client's (the server's share and its own
# process) over docextract's (the server's).
awk -F'|' '$2 == "backlog" { b[$1] = $6; c[$1] = $8 + ($1 == "client" ? $9 : 0) }
    $2 ~ /submitters/ { if ($1 == "docextract") { d = $6; dc = $8 } else { q[++n] = d / $6; r[n] = ($8 + $9) / dc } }
    END { printf "ratio docextract / client worker: backlog %.2fx, with submitters", b["docextract"] / b["client"]
          for (i = 1; i <= n; i++) printf " %.2fx", q[i]
          for (i = 2; i <= n; i++) for (j = i; j > 1 && q[j - 1] > q[j]; j--) { t = q[j]; q[j] = q[j - 1]; q[j - 1] = t }
          printf "%s\n", (n > 1 ? sprintf(" (median %.2fx)", n % 2 ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2) : "")
          printf "CPU an extraction, client / docextract: backlog %.2fx, with submitters", c["client"] / c["docextract"]
          for (i = 1; i <= n; i++) printf " %.2fx", r[i]
          printf "\n" }' "$DIR/results"
