/*
 * worker.c: the background worker.
 *
 * docextract.workers processes per database, started by the launcher
 * (launcher.c), sharing the queue (claims skip locked rows).  Each sleeps on a
 * WaitEventSet holding its latch (set by committing backends), postmaster
 * death, and the epoll descriptor of its libcurl multi handle.  Each wake it
 * finishes the requests that are done, then claims as many queued jobs as it
 * has room for, in the transaction that stores the answers when there are
 * some (one notifying commit a turn).  Every database step runs in its own
 * transaction; an error there fails that job and the loop goes on.
 */
#include "postgres.h"

#include "prelude.h"		/* first: template.h brings json-c */
#include "http.h"
#include "job.h"
#include "privileged.h"
#include "queue.h"
#include "ratelimit.h"
#include "settings.h"
#include "template.h"
#include "webhook.h"
#include "worker.h"
#include "workerset.h"
#include "writeback.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"


PGDLLEXPORT void docextract_worker_main(Datum main_arg);

bool		docextract_is_job_worker = false;

typedef struct ClaimStep
{
	ClaimedJob *jobs;
	int			max;
	int			claimed;
	int			handed;			/* jobs given their slots (ratelimit.c) so far */
	long		next_due_ms;	/* next retry, -1 if none */
	bool		extension_present;
	bool		extension_exists;	/* installed, whatever its version */
} ClaimStep;

typedef struct FailStep
{
	pg_uuid_t  *id;
	const char *message;
	bool		busy;			/* a session held the row or credits: later */
} FailStep;

/* Finished jobs whose status change waits for a session's lock (nowait.c). */
typedef struct Deferred
{
	Job		   *job;
	char	   *failure;		/* the failure to record, or NULL: the result */
} Deferred;

static List *deferred_jobs = NIL;

static bool orphans_requeued = false;
static bool last_stop_was_crash = false;

/* Jobs whose requests are in flight, in TopMemoryContext. */
static List *inflight_jobs = NIL;

/* Deliveries and jobs have budgets of their own: slow receivers starve no job. */
static int	deliveries_inflight = 0;

static int
jobs_inflight(void)
{
	return http_inflight() - deliveries_inflight;
}

typedef struct EndedStep
{
	pg_uuid_t **ids;
	int			n;
	bool	   *ended;
} EndedStep;

/*
 * Run fn(arg) in a transaction of its own, or, inside one already, in a
 * subtransaction: so a batch of jobs shares one commit while each job's
 * error stays its own.  Returns NULL on success, else the error message
 * (allocated in the caller's memory context).
 */
static char *
in_transaction(const char *activity, StepFn fn, void *arg)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	char	   *volatile err = NULL;

	if (IsTransactionState())
		return in_subtransaction(fn, arg);	/* subxact.c */

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	step_note_error(0);
	PG_TRY();
	{
		/* DDL on the schema: do nothing now, and no error (steplock.c). */
		if (!steplock_begin())
			err = MemoryContextStrdup(caller_cxt, step_note_aside());
		else
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			pgstat_report_activity(STATE_RUNNING, activity);
			fn(arg);
			PopActiveSnapshot();
		}
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(caller_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		step_note_error(edata->sqlerrcode);	/* transient.c */
		err = pstrdup(edata->message ? edata->message : "unknown error");
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return err;
}

static void
claim_step(void *arg)
{
	ClaimStep  *c = arg;

	c->claimed = 0;
	c->next_due_ms = -1;
	c->extension_present = docextract_schema_ready();	/* version.c */
	c->extension_exists = c->extension_present || docextract_installed_version() != NULL;
	if (!c->extension_present)
	{
		template_cache_reset();	/* no parse of a dropped or other version's templates */
		return;
	}
	if (!orphans_requeued)
	{
		int			failed;
		int			n = crashguard_requeue_orphans(last_stop_was_crash, &failed);

		if (n > 0)
			elog(LOG, "docextract worker: requeued %d extraction(s) left by a previous worker%s", n,
				 last_stop_was_crash ? ", which crashed; they run one at a time" : "");
		if (failed > 0)
			elog(LOG, "docextract worker: failed %d extraction(s) that crashed the worker docextract.max_crashes times",
				 failed);
		orphans_requeued = true;
	}
	/* Orphans of a crash run alone, so that a crash names its culprit. */
	if (crashguard_single_mode() &&
		((c->claimed = crashguard_claim_suspect(c->jobs)) > 0 || crashguard_single_mode()))
	{
		/* Alone in flight, whatever the limits; counted as any request. */
		if (c->claimed > 0)
			(void) ratelimit_reserve(c->jobs[0].model, 0, 0, c->jobs[0].parts, 0, true);
		return;
	}
	c->claimed = queue_claim(c->jobs, c->max, &c->next_due_ms);
}

static void
finish_step(void *arg)
{
	job_finish((Job *) arg);
}

static void
progress_step(void *arg)
{
	job_record_progress((Job *) arg);
}

static void
ended_step(void *arg)
{
	EndedStep  *e = arg;

	queue_find_ended(e->ids, e->n, e->ended);
}

static void
track(Job *job)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	inflight_jobs = lappend(inflight_jobs, job);
	MemoryContextSwitchTo(old);
}

/*
 * Someone cancelled something: drop every in-flight request whose job is no
 * longer processing, freeing its slot at once.
 */
static void
drop_cancelled(void)
{
	EndedStep	e;
	ListCell   *lc;
	int			i = 0;

	e.n = list_length(inflight_jobs);
	if (e.n == 0)
		return;
	e.ids = palloc(sizeof(pg_uuid_t *) * e.n);
	e.ended = palloc(sizeof(bool) * e.n);
	foreach(lc, inflight_jobs)
		e.ids[i++] = job_id((Job *) lfirst(lc));
	if (in_transaction("docextract: checking for cancellations", ended_step, &e) != NULL)
		return;
	i = 0;
	foreach(lc, inflight_jobs)
	{
		Job		   *job = lfirst(lc);

		if (e.ended[i++])
		{
			elog(DEBUG1, "docextract worker: dropping the request of cancelled extraction %s",
				 job_id_text(job));
			inflight_jobs = foreach_delete_current(inflight_jobs, lc);
			job_release(job);
		}
	}
}

static void
fail_step(void *arg)
{
	FailStep   *f = arg;

	f->busy = !queue_lock_nowait(f->id);
	if (!f->busy)
		queue_fail(f->id, f->message);
}

/* Keep a finished job, in TopMemoryContext, to store it on a later loop. */
static void
defer(Job *job, const char *failure, bool first)
{
	MemoryContext old;
	Deferred   *d;

	if (first)
		elog(LOG, "docextract worker: extraction %s waits for a lock a session holds; it is stored later",
			 job_id_text(job));
	old = MemoryContextSwitchTo(TopMemoryContext);
	d = palloc(sizeof(Deferred));

	d->job = job;
	d->failure = failure ? pstrdup(failure) : NULL;
	deferred_jobs = lappend(deferred_jobs, d);
	MemoryContextSwitchTo(old);
}

/* The job failed: say so in its row, and let it go (first: not deferred yet). */
static void
record_failure(Job *job, const char *message, bool first)
{
	FailStep	f = {job_id(job), message, false};
	char	   *err;

	err = in_transaction("docextract: recording a failure", fail_step, &f);
	if ((err == NULL && f.busy) || (err && transient_retry(job_id(job), err)))
	{
		defer(job, message, first);
		return;
	}
	if (err && steplock_absent())
	{
		job_release(job);		/* its row went with DROP EXTENSION */
		return;
	}
	elog(LOG, "docextract worker: extraction %s failed: %s", job_id_text(job), message);
	if (err)
		elog(WARNING, "docextract worker: could not record the failure of extraction %s: %s",
			 job_id_text(job), err);
	job_release(job);
}

static void
fail_job(Job *job, const char *message)
{
	record_failure(job, message, true);
}

static void
requeue_unsent_step(void *arg)
{
	Deferred   *d = arg;

	transient_requeue(job_id(d->job), d->failure);
}

/*
 * Set when jobs went back to the queue as retries outside a claim (a job
 * as it started, a batch whose results could not be committed): the claim
 * that had computed the next retry's time ran before, so the loop looks
 * again now to learn it.  Else they would wait for the poll.
 */
static bool requeued = false;

/* A transient error before the request was sent: back to the queue (transient.c). */
static void
requeue_unsent(Job *job, char *err)
{
	Deferred	d = {job, err};

	if (in_transaction("docextract: requeueing an extraction", requeue_unsent_step, &d) != NULL)
		fail_job(job, err);
	else
	{
		job_release(job);
		requeued = true;
	}
}

/*
 * Starting claimed jobs' requests: one transaction for all, without
 * subtransactions (loading a job only reads).  A job whose loading fails
 * aborts that transaction: it fails (or goes back to the queue), and the
 * jobs after it start in a new one.
 */
typedef struct StartRun
{
	ClaimStep  *c;
	int			n;				/* admitted (inflight.c), -1 until known */
	int			next;			/* the next to start */
	Job		   *current;		/* the one loading, if it failed */
} StartRun;

static void
start_run_step(void *arg)
{
	StartRun   *s = arg;
	ClaimStep  *c = s->c;

	/* Those whose bodies fit in memory now (inflight.c); the rest wait. */
	if (s->n < 0)
		s->n = inflight_admit(c->jobs, c->claimed, c->max);
	for (; s->next < s->n; s->next++)
	{
		int			i = s->next;
		Job		   *job = job_create(&c->jobs[i].id, c->jobs[i].attempts, c->jobs[i].parts);

		job_hold_slots(job, c->jobs[i].model, c->jobs[i].parts);
		c->handed = i + 1;
		s->current = job;
		job_prepare(job);
		s->current = NULL;
		track(job);
	}
}

/* The job being loaded failed with err: back to the queue, or failed. */
static void
start_failed(Job *job, char *err)
{
	if (transient_retry(job_id(job), err))
		requeue_unsent(job, err);
	else
		fail_job(job, err);
}

/* Claimed jobs not handed to a Job give their model slots back. */
static void
release_unhanded(ClaimStep *c)
{
	for (int i = c->handed; i < c->claimed; i++)
		ratelimit_release(c->jobs[i].model, c->jobs[i].parts, false);
	c->handed = c->claimed;
}

/* Claimed jobs whose start stepped aside for DDL (in TopMemoryContext). */
static ClaimStep unstarted = {NULL, 0, 0, 0, -1, true, true};

/* Start claimed jobs' requests; false if it stepped aside (tried again first). */
static bool
start_claimed(ClaimStep *c)
{
	StartRun	s = {c, -1, 0, NULL};
	char	   *err;

	while ((err = in_transaction("docextract: starting requests", start_run_step, &s)) != NULL &&
		   s.current != NULL)
	{
		start_failed(s.current, err);
		s.current = NULL;
		s.next++;
	}
	if (err && step_stepped_aside() && s.n >= 0)
	{
		/* Between two runs: the admitted jobs not started yet wait, as below. */
		ClaimedJob *rest = MemoryContextAlloc(TopMemoryContext, sizeof(ClaimedJob) * Max(s.n - s.next, 1));

		memcpy(rest, c->jobs + s.next, sizeof(ClaimedJob) * (s.n - s.next));
		if (c == &unstarted)
			pfree(unstarted.jobs);
		unstarted = *c;
		unstarted.jobs = rest;
		unstarted.claimed = s.n - s.next;
		unstarted.handed = 0;
		return false;
	}
	if (err && step_stepped_aside())
	{
		if (c != &unstarted && c->claimed > 0)
		{
			unstarted = *c;
			unstarted.jobs = MemoryContextAlloc(TopMemoryContext, sizeof(ClaimedJob) * c->claimed);
			memcpy(unstarted.jobs, c->jobs, sizeof(ClaimedJob) * c->claimed);
		}
		return false;
	}
	if (err)
	{
		/* Not started and not waiting: their model slots go back. */
		release_unhanded(c);
		elog(WARNING, "docextract worker: could not start requests: %s", err);
	}
	if (c == &unstarted)
	{
		pfree(unstarted.jobs);
		unstarted.jobs = NULL;
		unstarted.claimed = 0;
	}
	return true;
}

/* Start the claimed jobs that waited for memory, if it was freed; true if some still wait. */
static bool
start_waiting(void)
{
	ClaimStep	c = {0};

	if (!inflight_memory_freed())
		return true;
	c.max = inflight_waiting_jobs();
	c.jobs = palloc(sizeof(ClaimedJob) * c.max);
	(void) start_claimed(&c);
	return inflight_waiting_jobs() > 0;
}

/*
 * Tell the launcher whether the extension is here (the first look decides
 * whether the database gets its other workers).  Gone: this worker leaves.
 */
static void
report_extension(bool exists)
{
	static bool reported = false;

	if (exists && reported)
		return;
	workerset_report_extension(exists);	/* workerset.c */
	reported = true;
	if (!exists)
	{
		elog(LOG, "docextract worker: no docextract extension in this database; leaving");
		proc_exit(0);
	}
}

/*
 * Before a claim: start what waits from an earlier one, and find the room.
 * False when there is nothing to claim now (*more: look again soon).
 */
static bool
claim_prepare(ClaimStep *c, bool *more)
{
	*more = true;
	if (unstarted.claimed > 0 && !start_claimed(&unstarted))
		return false;
	/* The worker's room: max_inflight, descriptors, memory (inflight.c). */
	c->max = inflight_claim_room(jobs_inflight(), http_inflight());
	if (inflight_waiting_jobs() > 0)
	{
		*more = start_waiting();
		return false;
	}
	if (c->max <= 0 || (crashguard_single_mode() && inflight_jobs != NIL))
		return false;
	c->jobs = palloc(sizeof(ClaimedJob) * c->max);
	launcher_extension_events_seen = launcher_extension_events();	/* before the snapshot */
	c->claimed = c->handed = 0;
	return true;
}

/*
 * After the claim's transaction (err: its error): start each request.
 * True if more may wait; *next_poll is brought forward to when the next
 * retry falls due.
 */
static bool
claim_conclude(ClaimStep *c, char *err, TimestampTz *next_poll)
{
	int			requests = 0;

	if (err)
	{
		release_unhanded(c);	/* the claim's commit failed */
		if (!step_transient())
			elog(WARNING, "docextract worker: could not claim jobs: %s", err);
		return step_transient();	/* look again soon */
	}
	report_extension(c->extension_exists);
	for (int i = 0; i < c->claimed; i++)
		requests += c->jobs[i].parts;
	if (c->claimed > 0 && !start_claimed(c))
		return true;
	if (c->next_due_ms >= 0)
	{
		TimestampTz due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), c->next_due_ms);

		if (due < *next_poll)
			*next_poll = due;
	}
	/* A model at its requests_per_minute: look again when its window frees a slot. */
	{
		TimestampTz free_at = ratelimit_next_free(GetCurrentTimestamp());

		if (free_at != 0 && free_at < *next_poll)
			*next_poll = free_at;
	}
	inflight_claimed(requests, c->max);
	/* A full batch: more may wait, for a sibling with room too. */
	if (requests >= c->max && !crashguard_single_mode())
		workerset_wake_sibling();
	return requests >= c->max || crashguard_single_mode();
}

/* Claim what there is room for and start each request; true if more may wait. */
static bool
claim_and_start(TimestampTz *next_poll)
{
	ClaimStep	c;
	bool		more;

	if (!claim_prepare(&c, &more))
		return more;
	return claim_conclude(&c, in_transaction("docextract: claiming", claim_step, &c), next_poll);
}

static bool leases_reset = false;

typedef struct DeliverStep
{
	int			room;
	int			started;
	long		next_due_ms;
} DeliverStep;

static void
deliver_step(void *arg)
{
	DeliverStep *d = arg;

	if (!docextract_schema_ready())
		return;
	if (!leases_reset)
	{
		webhook_reset_leases();	/* a previous worker's requests are gone */
		leases_reset = true;
	}
	d->started = webhook_claim_and_start(d->room, &d->next_due_ms);
}

/*
 * Send the webhook deliveries that are due; bring *next_poll forward to the
 * next.  False if it could not look (no room yet): ask again later.
 */
static bool
deliver_webhooks(TimestampTz *next_poll)
{
	DeliverStep d = {0, 0, -1};
	char	   *err;

	d.room = docextract_max_webhook_inflight - deliveries_inflight;
	if (d.room <= 0)
		return false;
	err = in_transaction("docextract: delivering webhooks", deliver_step, &d);
	if (err)
	{
		if (!step_transient())
			elog(WARNING, "docextract worker: could not claim webhook deliveries: %s", err);
		return !step_transient();	/* look again soon */
	}
	deliveries_inflight += d.started;
	if (d.next_due_ms >= 0)
	{
		TimestampTz due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(d.next_due_ms, 10));

		if (due < *next_poll)
			*next_poll = due;
	}
	return true;
}

static void
webhook_done_step(void *arg)
{
	webhook_done((HttpRequest *) arg);
}

typedef struct FinishBatch
{
	HttpRequest *first;			/* already taken from libcurl */
	bool		retry;			/* set if a job ended or a retry was scheduled */
	bool		delivered;		/* set if a webhook delivery finished */
	int			nended;			/* the jobs this batch ended, for a failed commit */
	pg_uuid_t  *ended;
	const char *error;			/* why its commit failed */
	Job		  **ready;			/* answered jobs for batch_finish.c */
	int			nready;
	BatchOutcome *outcome;		/* what batch_finish() did with each */
	bool		kept_before;	/* the ready jobs were deferred already */
	bool		more;			/* answers left for the next turn of the loop */
	struct TurnClaim *turn;		/* the loop's claim, if it may join the store */
	ClaimStep  *claim;			/* that claim, made in the store's transaction */
} FinishBatch;

/*
 * The turn's claim made in the transaction that stores the turn's answers:
 * one notifying commit a turn, not two (every notifying commit takes a
 * cluster-wide lock through its WAL flush).
 */
typedef struct TurnClaim
{
	bool		wanted;			/* the loop would claim this turn */
	bool		done;			/* claimed with the store: the loop claims no more */
	bool		more;			/* what claim_and_start() would have returned */
	TimestampTz *next_poll;
} TurnClaim;

/*
 * Answers stored per turn of the loop at most: then the loop claims and
 * sends as many (their model slots are free), and comes back at once for
 * the rest.  Answers that arrive together (requests sent together) would
 * otherwise all be stored before any slot is used again, and every round
 * of requests would wait for the whole of the last one's storing.
 */
#define FINISH_BATCH_MAX 32

/* Set when answers were left for the next turn: the loop does not sleep. */
static bool answers_waiting = false;

/* Store one job's answer (in a subtransaction when in a transaction), or keep it. */
static void
finish_one(Job *job)
{
	char	   *err = in_transaction("docextract: storing a result", finish_step, job);

	if (err && transient_retry(job_id(job), err))
		defer(job, NULL, false);	/* the answer is kept, stored later */
	else if (err)
		fail_job(job, err);
	else if (job_busy(job))
		defer(job, NULL, true);
	else if (job_continues(job))
		track(job);				/* classified: its extraction's request is out */
	else
		job_release(job);
}

/*
 * Store the answer of every job whose requests are done, each in a
 * subtransaction of one transaction.
 */
static void
finish_all_step(void *arg)
{
	FinishBatch *b = arg;
	HttpRequest *req = b->first;

	for (; req != NULL; req = (b->more = b->nended >= FINISH_BATCH_MAX) ? NULL : http_next_done())
	{
		Job		   *job;
		char	   *err;

		if (req->purpose == HTTP_FOR_WEBHOOK)
		{
			err = in_transaction("docextract: recording a delivery", webhook_done_step, req);
			if (err && !steplock_absent())
				elog(WARNING, "docextract worker: could not record a webhook delivery: %s", err);
			webhook_release(req);
			deliveries_inflight--;
			b->delivered = true;
			continue;
		}
		job = req->arg;
		if (!job_part_done(job, req))
		{
			/* One part in, another in flight. */
			err = in_transaction("docextract: recording progress", progress_step, job);
			if (err)
				elog(WARNING, "docextract worker: could not record the progress of extraction %s: %s",
					 job_id_text(job), err);
			continue;
		}
		inflight_jobs = list_delete_ptr(inflight_jobs, job);
		b->ended = repalloc(b->ended, sizeof(pg_uuid_t) * (b->nended + 1));
		b->ended[b->nended++] = *job_id(job);
		b->retry = true;		/* its model has room again */
		if (job_batchable(job))
			b->ready[b->nready++] = job;	/* stored with the others: store_ready */
		else
			finish_one(job);
	}
}

static void
requeue_step(void *arg)
{
	FinishBatch *b = arg;

	queue_requeue_uncommitted(b->ended, b->nended, b->error);
	requeued = true;
}

static void
batch_step(void *arg)
{
	FinishBatch *b = arg;

	batch_finish(b->ready, b->nready, b->outcome);
	if (b->claim)
		claim_step(b->claim);
}

static void
finish_each_step(void *arg)
{
	FinishBatch *b = arg;

	for (int i = 0; i < b->nready; i++)
		finish_one(b->ready[i]);
}

/*
 * The loop's claim joins the store unless something must run before it:
 * claimed jobs not started yet or waiting for memory, a crash's orphans
 * (they run alone).
 */
static ClaimStep *
turn_claim_prepare(TurnClaim *turn, ClaimStep *c)
{
	bool		more;

	if (turn == NULL || !turn->wanted || unstarted.claimed > 0 ||
		inflight_waiting_jobs() > 0 || crashguard_single_mode())
		return NULL;
	return claim_prepare(c, &more) ? c : NULL;
}

/* After the store's commit (err: its error), start what the turn claimed. */
static void
turn_claim_conclude(FinishBatch *b, char *err)
{
	if (b->claim == NULL)
		return;
	if (err == NULL)
	{
		b->turn->done = true;
		b->turn->more = claim_conclude(b->claim, NULL, b->turn->next_poll);
	}
	else
		release_unhanded(b->claim); /* rolled back: the loop claims apart */
	b->claim = NULL;
}

/*
 * Store the answered jobs together, in one transaction without
 * subtransactions (batch_finish.c), with the turn's claim.  If that fails, one by one, each in a
 * subtransaction of one transaction: only a faulty job fails; if that
 * commit fails too, they go back to the queue.
 */
static void
store_ready(FinishBatch *b)
{
	BatchOutcome *outcome = palloc(sizeof(BatchOutcome) * b->nready);
	pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * b->nready);
	FinishBatch each = *b;
	ClaimStep	c;
	char	   *err;

	if (b->nready == 0)
		return;
	for (int i = 0; i < b->nready; i++)
		ids[i] = *job_id(b->ready[i]);
	b->outcome = outcome;
	b->claim = turn_claim_prepare(b->turn, &c);
	err = in_transaction("docextract: storing results", batch_step, b);
	for (int i = 0; i < b->nready && (err == NULL || step_stepped_aside()); i++)
	{
		if (err || outcome[i] == BATCH_BUSY)
			defer(b->ready[i], NULL, err == NULL && !b->kept_before);
		else
			job_release(b->ready[i]);
	}
	turn_claim_conclude(b, err);
	if (err == NULL || step_stepped_aside())
		return;
	elog(DEBUG1, "docextract worker: a batch of %d results could not be stored at once (%s); storing each apart",
		 b->nready, err);
	if ((err = in_transaction("docextract: storing results one by one", finish_each_step, b)) == NULL)
		return;
	elog(WARNING, "docextract worker: could not store results: %s", err);
	each.ended = ids;
	each.nended = b->nready;
	each.error = err;
	if ((err = in_transaction("docextract: requeueing a batch", requeue_step, &each)) != NULL)
		elog(WARNING, "docextract worker: could not requeue %d extraction(s) of a failed batch: %s",
			 b->nready, err);
}

/*
 * Store what is done.  True if a job ended or a retry was scheduled (look
 * at the queue again); *delivered set if a webhook delivery finished (its
 * slot is free, its retry due some time).  If the batch's commit failed,
 * its jobs are put back in the queue rather than left processing.
 */
static bool
finish_done(bool *delivered, TurnClaim *turn)
{
	static HttpRequest *kept = NULL;	/* taken when the step stepped aside */
	FinishBatch b = {kept ? kept : http_next_done(), false, false, 0, palloc(sizeof(pg_uuid_t)), NULL,
	NULL, 0, NULL, false, false, turn, NULL};
	char	   *err;

	if (b.first == NULL)
		return false;
	kept = NULL;
	b.ready = palloc(sizeof(Job *) * (list_length(inflight_jobs) + 1));
	err = in_transaction("docextract: reading answers", finish_all_step, &b);
	if (err && step_stepped_aside())
		kept = b.first;
	else if (err)
	{
		elog(WARNING, "docextract worker: could not store results: %s", err);
		for (int i = 0; i < b.nready; i++)
			job_release(b.ready[i]);	/* requeued below, as the others */
		b.error = err;
		if (b.nended > 0 &&
			(err = in_transaction("docextract: requeueing a batch", requeue_step, &b)) != NULL)
			elog(WARNING, "docextract worker: could not requeue %d extraction(s) of a failed batch: %s",
				 b.nended, err);
	}
	else
		store_ready(&b);
	*delivered = *delivered || b.delivered;
	answers_waiting = b.more;
	return b.retry;
}

/*
 * Try again to store the jobs kept because a session held a lock they
 * need; *next_poll brought forward while some wait.
 */
static void
store_deferred(TimestampTz *next_poll)
{
	static TimestampTz due = 0;
	List	   *jobs = deferred_jobs;
	ListCell   *lc;
	FinishBatch b = {0};

	if (GetCurrentTimestamp() < due)
	{
		*next_poll = Min(*next_poll, due);
		return;
	}
	deferred_jobs = NIL;
	b.ready = palloc(sizeof(Job *) * (list_length(jobs) + 1));
	b.kept_before = true;
	foreach(lc, jobs)
	{
		Deferred   *d = lfirst(lc);
		char	   *err = NULL;

		if (d->failure == NULL && job_batchable(d->job))
		{
			b.ready[b.nready++] = d->job;	/* stored together, below */
			pfree(d);
			continue;
		}
		if (d->failure == NULL)
			err = in_transaction("docextract: storing a result", finish_step, d->job);
		if (err && transient_retry(job_id(d->job), err))
			defer(d->job, NULL, false);
		else if (d->failure || err)
			record_failure(d->job, d->failure ? d->failure : err, d->failure == NULL);
		else if (job_busy(d->job))
			defer(d->job, NULL, false);
		else if (job_continues(d->job))
			track(d->job);		/* classified: its extraction's request is out */
		else
		{
			if (job_will_retry(d->job))
				*next_poll = GetCurrentTimestamp();	/* learn when it falls due */
			job_release(d->job);
		}
		if (d->failure)
			pfree(d->failure);
		pfree(d);
	}
	list_free(jobs);
	store_ready(&b);
	due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), WRITEBACK_RETRY_MS);
	if (deferred_jobs != NIL)
		*next_poll = Min(*next_poll, due);
}

static void
cleanup_step(void *arg)
{
	*(bool *) arg = retention_cleanup();
}

/* Old rows out, a batch per poll; true if a batch was full, so more wait. */
static bool
clean_up(void)
{
	bool		more = false;
	char	   *err;

	if (docextract_retention_s <= 0 || !orphans_requeued || MyJobWorkerIndex != 0)
		return false;
	err = in_transaction("docextract: removing old rows", cleanup_step, &more);
	if (err && !step_transient())
		elog(WARNING, "docextract worker: could not remove old rows: %s", err);
	return err == NULL && more;
}

/*
 * docextract.workers was lowered below this worker's number: it claims
 * nothing more, and leaves once what it runs is stored (stopping it would
 * send those requests again).  The launcher does not start it again.
 */
static bool
retiring(void)
{
	if (MyJobWorkerIndex < launcher_job_workers())
		return false;
	if (inflight_jobs == NIL && deferred_jobs == NIL)
	{
		elog(LOG, "docextract worker %d: docextract.workers is %d now; leaving",
			 MyJobWorkerIndex + 1, launcher_job_workers());
		proc_exit(0);
	}
	return true;
}

static void
fold_step(void *arg)
{
	if (docextract_schema_ready())
		(void) stats_fold();	/* stats.c */
}

/* worker_stats' counters: the deltas of the last poll folded in. */
static void
fold_stats(void)
{
	char	   *err;

	if (!orphans_requeued)
		return;
	err = in_transaction("docextract: folding statistics", fold_step, NULL);
	if (err)
		elog(WARNING, "docextract worker: could not fold statistics: %s", err);
}

static void
fold_credits_step(void *arg)
{
	if (docextract_schema_ready())
		stats_fold_credits_if_many();	/* stats.c */
}

/* Settled credits folded when many wait (stats.c). */
static void
fold_credits(void)
{
	char	   *err;

	if (!orphans_requeued)
		return;
	err = in_transaction("docextract: folding credits", fold_credits_step, NULL);
	if (err && !step_transient())
		elog(WARNING, "docextract worker: could not fold credits: %s", err);
}

static void
worker_exit(int code, Datum arg)
{
	crashguard_worker_exit();
	inflight_worker_exit();
}

static WaitEventSet *
make_wait_set(void)
{
	WaitEventSet *set = CreateWaitEventSet(TopMemoryContext, 3);

	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(set, WL_SOCKET_READABLE, http_socket_fd(), NULL, NULL);
	return set;
}

/* How long to sleep: until libcurl's next timer or the next look at the queue. */
static long
sleep_ms(TimestampTz next_poll)
{
	long		secs;
	int			usecs;
	long		poll_ms;
	long		curl_ms = http_timeout_ms();

	/* Rounded up: a deadline less than 1 ms away is not a 0 ms wait, over and over. */
	TimestampDifference(GetCurrentTimestamp(), next_poll, &secs, &usecs);
	poll_ms = secs * 1000 + (usecs + 999) / 1000;
	return (curl_ms >= 0 && curl_ms < poll_ms) ? curl_ms : poll_ms;
}

/*
 * Flush the statistics of the commits above: autovacuum must see the
 * queue's churn.  As in a backend, at most about once a second, and forced
 * when it had to wait.  Returns in how many ms to call again, -1: no need.
 */
static long
report_stats(void)
{
	static TimestampTz force_at = 0;
	TimestampTz now = GetCurrentTimestamp();
	long		ms;

	if (force_at != 0 && now >= force_at)
	{
		pgstat_report_stat(true);
		force_at = 0;
	}
	else if (force_at == 0 && (ms = pgstat_report_stat(false)) > 0)
		force_at = TimestampTzPlusMilliseconds(now, Min(ms, 1000));
	return force_at == 0 ? -1 : sleep_ms(force_at);
}

void
docextract_worker_main(Datum main_arg)
{
	MemoryContext loop_cxt;
	WaitEventSet *set;
	bool		look = true;
	bool		look_deliveries = true;
	TimestampTz next_poll = 0;
	uint64		cancels_seen;
	uint64		deliveries_seen;
	const char *datname;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, crashguard_sigterm);	/* die(), remembering it was asked */
	BackgroundWorkerUnblockSignals();
	docextract_is_job_worker = true;
	datname = workerset_connect(main_arg, ROLE_JOB);	/* workerset.c */
	pgstat_report_appname("docextract worker");
	/* Its statements run on every wake with the same shape: plan them once. */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_USERSET, PGC_S_OVERRIDE);
	/*
	 * Those plans are made at its first wake, often while the tables are
	 * small (a new install, a new database), and kept until an ANALYZE of
	 * the table: a sequential scan chosen then would read every row on every
	 * wake as the table grows.  Each of its statements reads by key or
	 * through a partial index of live rows.  (JIT off: the cost a disabled
	 * path adds would otherwise have each small statement compiled.)
	 */
	SetConfigOption("enable_seqscan", "off", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_OVERRIDE);
	/* Its SQL runs as superuser: no name may resolve to a role's object. */
	SetConfigOption("search_path", "pg_catalog, docextract, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	docextract_never_wait = true;	/* nowait.c */

	last_stop_was_crash = crashguard_last_stop_was_crash();
	before_shmem_exit(worker_exit, (Datum) 0);
	http_init();
	set = make_wait_set();
	cancels_seen = docextract_signal_generation(SIGNAL_CANCEL);
	deliveries_seen = docextract_signal_generation(SIGNAL_DELIVERIES);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "docextract worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	elog(LOG, "docextract worker %d started for database \"%s\"", MyJobWorkerIndex + 1, datname);

	for (;;)
	{
		WaitEvent	events[3];
		int			n;
		long		stats_ms;
		TurnClaim	turn = {MyJobWorkerIndex < launcher_job_workers(), false, false, &next_poll};

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_poll = 0;		/* new limits or intervals: look again now */
		}

		if (docextract_signal_generation(SIGNAL_CANCEL) != cancels_seen)
		{
			cancels_seen = docextract_signal_generation(SIGNAL_CANCEL);
			drop_cancelled();
		}
		if (docextract_signal_generation(SIGNAL_DELIVERIES) != deliveries_seen)
		{
			deliveries_seen = docextract_signal_generation(SIGNAL_DELIVERIES);
			look_deliveries = true;
		}
		if (finish_done(&look_deliveries, &turn))
		{
			look = true;		/* learn when the retry falls due */
			fold_credits();
		}
		if (GetCurrentTimestamp() >= next_poll)
		{
			look = look_deliveries = true;
			next_poll = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													docextract_poll_interval_ms);
			if (clean_up())
				next_poll = GetCurrentTimestamp();	/* a full batch: more soon */
			fold_stats();
		}
		if (deferred_jobs != NIL)
			store_deferred(&next_poll);
		/*
		 * Deliveries (at most max_webhook_inflight, apart from the jobs'
		 * max_inflight): only when told, when one finished, or on a poll, not
		 * on every wake; by the database's first job worker only, so that
		 * none is sent twice and resetting leases at start steals none.
		 */
		if (MyJobWorkerIndex == 0 && look_deliveries && deliver_webhooks(&next_poll))
			look_deliveries = false;
		if (retiring())
			look = false;		/* finish what is in flight, claim nothing */
		else if (turn.done)
			look = turn.more;	/* claimed with the answers' store */
		else if (look)
			look = claim_and_start(&next_poll);
		if (requeued)
		{
			requeued = false;
			next_poll = GetCurrentTimestamp();	/* learn when it falls due */
		}
		if (steplock_retry_ms() >= 0)	/* stepped aside: look again soon */
			next_poll = Min(next_poll, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																   steplock_retry_ms()));

		stats_ms = report_stats();
		workerset_idle(jobs_inflight() < docextract_max_inflight, jobs_inflight());
		n = WaitEventSetWait(set, answers_waiting ? 0 :
							 stats_ms >= 0 ? Min(stats_ms, sleep_ms(next_poll)) : sleep_ms(next_poll),
							 events, lengthof(events), PG_WAIT_EXTENSION);
		workerset_idle(false, jobs_inflight());
		for (int i = 0; i < n; i++)
			if (events[i].events & WL_LATCH_SET)
			{
				ResetLatch(MyLatch);
				look = true;
			}
		http_drive(n == 0);
	}
}
