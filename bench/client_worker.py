#!/usr/bin/python3
"""The client-side worker docextract replaces, written the way users write it
(psycopg2 + requests, from Debian's python3-psycopg2 and python3-requests):
N threads, each with its own connection and HTTP session, poll a plain jobs
table with SELECT ... FOR UPDATE SKIP LOCKED, POST the request to the model,
store the jsonb result and NOTIFY, each job in its own transaction.

    client_worker.py --threads 16 --url URL --body request.json [--poll 0.01]

request.json is the body docextract sent for the same document (captured at
the endpoint); each job's request is built from it with the job's document
in place of that one's: its text (document_mode text, the default) or its
bytes as base64 (document_mode file).  Connection settings come from the
PG* environment variables.  Runs until SIGTERM; prints "ready" once every
thread is connected.
"""
import argparse
import base64
import copy
import json
import signal
import sys
import threading
import time

import psycopg2
import psycopg2.extras
import requests

CLAIM = """SELECT j.id, d.filename, d.pages, d.text, d.content FROM bench.jobs j JOIN bench.docs d ON d.n = j.doc
            WHERE j.status = 'pending' ORDER BY j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED"""
DONE = "UPDATE bench.jobs SET status = 'completed', result = %s, started_at = %s, completed_at = now() WHERE id = %s"
FAILED = "UPDATE bench.jobs SET status = 'failed', error = %s, completed_at = now() WHERE id = %s"

stop = threading.Event()


def request_for(template, filename, pages, text, content):
    """docextract's body for this document: the user message's document replaced."""
    body = copy.deepcopy(template)
    user = body["messages"][-1]
    if isinstance(user["content"], str):
        user["content"] = ('Document "%s" (%d page%s). Its text, pages separated by form feeds:\n\n%s'
                           % (filename, pages, "" if pages == 1 else "s", text))
    else:
        for part in user["content"]:
            if part.get("type") == "file":
                part["file"]["filename"] = filename
                part["file"]["file_data"] = "data:application/pdf;base64," + \
                    base64.b64encode(bytes(content)).decode()
    return body


def work(args, template, ready):
    conn = psycopg2.connect("")
    session = requests.Session()
    ready.release()
    while not stop.is_set():
        with conn.cursor() as cur:
            cur.execute(CLAIM)
            row = cur.fetchone()
            if row is None:
                conn.rollback()
                time.sleep(args.poll)
                continue
            job, filename, pages, text, content = row
            started = time.time()
            try:
                r = session.post(args.url, json=request_for(template, filename, pages, text, content),
                                 headers={"Authorization": "Bearer none"}, timeout=120)
                r.raise_for_status()
                result = json.loads(r.json()["choices"][0]["message"]["content"])
                cur.execute(DONE, (psycopg2.extras.Json(result),
                                   psycopg2.TimestampFromTicks(started), job))
                cur.execute("SELECT pg_notify('bench_jobs', %s)", (str(job),))
            except (requests.RequestException, ValueError, KeyError) as e:
                cur.execute(FAILED, (str(e)[:300], job))
            conn.commit()
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("--poll", type=float, default=0.01, help="seconds between looks at an empty queue")
    args = ap.parse_args()
    with open(args.body) as f:
        template = json.load(f)
    # The body built for document 1 must be the one docextract sent for it.
    conn = psycopg2.connect("")
    with conn.cursor() as cur:
        cur.execute("SELECT filename, pages, text, content FROM bench.docs WHERE n = 1")
        same = request_for(template, *cur.fetchone()) == template
    conn.close()
    print("the client's request body for document 1 is docextract's: %s" % ("yes" if same else "NO"),
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ready = threading.Semaphore(0)
    threads = [threading.Thread(target=work, args=(args, template, ready), daemon=True)
               for _ in range(args.threads)]
    for t in threads:
        t.start()
    for _ in threads:
        ready.acquire()
    print("ready", flush=True)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
