#!/usr/bin/python3
"""Commit -> claim latency, one job at a time (bench/latency.sh runs it).

One session submits one extraction (bench.submit, its own transaction),
records the wall clock just before COMMIT is sent and just after it
returns, then waits (polling its row) until the
job is completed, sleeps PAUSE so that the worker is asleep again, and
submits the next.  The server and this process read the same clock
(CLOCK_REALTIME), so started_at (set by the claim's UPDATE, with
clock_timestamp()) minus the client's instants is the commit -> claim time.
Prints one line per job: before_commit after_commit (seconds since epoch).
"""
import argparse
import sys
import time

import psycopg2

ap = argparse.ArgumentParser()
ap.add_argument("--jobs", type=int, default=200)
ap.add_argument("--pause", type=float, default=0.02)
ap.add_argument("--docs", type=int, default=1)
a = ap.parse_args()
conn = psycopg2.connect("")
cur = conn.cursor()
for i in range(a.jobs):
    cur.execute("SELECT bench.submit(%s)", (1 + i % a.docs,))
    job = cur.fetchone()[0]
    before = time.time()
    conn.commit()
    after = time.time()
    while True:
        cur.execute("SELECT status FROM docextract.extractions WHERE id = %s", (job,))
        status = cur.fetchone()[0]
        conn.commit()
        if status in ("completed", "failed"):
            break
        time.sleep(0.001)
    print(job, "%.6f %.6f" % (before, after), flush=True)
    time.sleep(a.pause)
