/*
 * sync_worker.c: the background worker of one extract_sync() call.
 *
 * Started by the caller (sync.c) with a dynamic shared memory segment, it
 * connects to the caller's database as the caller's role and does the whole
 * pipeline in transactions of its own: the document, the extraction and its
 * claim commit first (credits reserved, or 53000 raised to the caller), then
 * each attempt's request, its answer and, with the answer, the charge.  So
 * the caller's rollback cannot undo a charge: the model's work is paid for.
 *
 * The extraction stays 'processing' (worker_pid this process) from submit
 * to end, retry waits included, so the database's worker never claims it.
 * Errors and notices reach the caller through the segment's queue as the
 * frontend protocol carries them (pq_redirect_to_shm_mq), SQLSTATE
 * included; the last message is get_result()'s text.
 *
 * Stopping: when the caller stops waiting (detach callback), or on
 * pg_cancel_backend() or SIGTERM here, the request in flight is dropped and
 * the extraction cancelled, its credits released.  An answer that arrived is
 * stored (and charged) first.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "classify.h"

#include "document.h"
#include "http.h"
#include "job.h"
#include "options.h"
#include "privileged.h"
#include "queue.h"
#include "ratelimit.h"
#include "spi_checked.h"
#include "statuses.h"
#include "sync.h"
#include "util.h"
#include "worker.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/shm_toc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

PGDLLEXPORT void docextract_sync_worker_main(Datum main_arg);

static SyncTask *task;
static shm_mq_handle *reply_queue;	/* to the caller: errors, notices, the result */
static Job *current_job = NULL;	/* released if an error unwinds */

/* The extraction being run. */
typedef struct Run
{
	pg_uuid_t	id;
	int			attempts;
	int			parts;
	char		model[MODEL_NAME_LEN];
	int			max_concurrency;	/* the model's limits, 0: none */
	int			rpm;
	bytea	   *content;		/* in the segment */
	Jsonb	   *options;		/* in the segment */
} Run;

static void
stop_if_caller_gone(void)
{
	if (pg_atomic_read_u32(&task->caller_gone))
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("extract_sync's caller stopped waiting")));
}

/*
 * Run fn(arg) in a transaction of its own.  NULL if it committed, else the
 * error's message (the extraction's failure).  A cancel propagates.
 */
static char *
in_own_transaction(StepFn fn, void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile err = NULL;

	StartTransactionCommand();
	PG_TRY();
	{
		steplock_wait();		/* DDL on the schema: after it (steplock.c) */
		PushActiveSnapshot(GetTransactionSnapshot());
		fn(arg);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED || edata->elevel > ERROR)
			PG_RE_THROW();
		FlushErrorState();
		AbortCurrentTransaction();
		err = pstrdup(edata->message ? edata->message : "unknown error");
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return err;
}

/* Claim the extraction for this process: one more attempt, as the worker's claim does. */
static void
start_attempt_step(void *arg)
{
	Run		   *run = arg;
	Privileged	priv;
	bool		isnull;

	spi_connect();
	privileged_begin(&priv);
	if (spi_execute_with_args("UPDATE docextract.extractions"
							  " SET status = CASE WHEN template_id IS NULL THEN 'classifying' ELSE 'processing' END,"
							  "     started_at = coalesce(started_at, clock_timestamp()),"
							  "     attempts = attempts + 1, next_attempt_at = NULL, worker_pid = pg_backend_pid(),"
							  "     completion_percentage = 0"
							  " WHERE id = $1 AND status IN ('pending', 'classifying', 'processing')"
							  " RETURNING attempts, parts, model_name,"
							  "  (SELECT coalesce((m.options->>'" MODEL_OPT_MAX_CONCURRENCY "')::int, 0) FROM docextract.models m"
							  "    WHERE m.name = model_name),"
							  "  (SELECT coalesce((m.options->>'" MODEL_OPT_REQUESTS_PER_MINUTE "')::int, 0) FROM docextract.models m"
							  "    WHERE m.name = model_name)",
							  1, (Oid[]) {UUIDOID}, (Datum[]) {UUIDPGetDatum(&run->id)},
							  NULL, false, 0) != SPI_OK_UPDATE_RETURNING)	/* 0: see queue.c */
		elog(ERROR, "could not claim extraction %s", uuid_text(UUIDPGetDatum(&run->id)));
	/* None: someone cancelled it (cancel_extraction) while a retry was due. */
	run->attempts = 0;
	if (SPI_processed == 1)
	{
		run->attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		run->parts = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		strlcpy(run->model, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3), MODEL_NAME_LEN);
		run->max_concurrency = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		run->max_concurrency = isnull ? 0 : run->max_concurrency;
		run->rpm = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));
		run->rpm = isnull ? 0 : run->rpm;
	}
	privileged_end(&priv);
	spi_finish();
}

/* The document and the extraction, stored and claimed in one transaction. */
static void
submit_step(void *arg)
{
	Run		   *run = arg;
	Datum		doc;
	Datum		id;

	doc = document_add("document", run->content);
	id = classify_or_extract(doc, task->classify ? (Datum) 0 : UUIDPGetDatum(&task->template_id),
							 PointerGetDatum(run->options));
	memcpy(&run->id, DatumGetUUIDP(id), sizeof(pg_uuid_t));
	start_attempt_step(run);
}

/* Submit; false if it failed, its error sent to the caller as it was raised. */
static bool
submit(Run *run)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	StartTransactionCommand();
	PG_TRY();
	{
		steplock_wait();		/* DDL on the schema: after it (steplock.c) */
		PushActiveSnapshot(GetTransactionSnapshot());
		submit_step(run);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		pg_atomic_write_u32(&task->worker_pid, 0);	/* no cancel while we report */
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	/* From here a cancel by the caller is the flag, looked at between steps. */
	pg_atomic_write_u32(&task->worker_pid, 0);
	return ok;
}

static void
prepare_step(void *arg)
{
	Privileged	priv;

	privileged_begin(&priv);
	job_prepare((Job *) arg);
	privileged_end(&priv);
}

/*
 * Store the answer (charged with it), or schedule a retry.  A retry waits
 * here, so the extraction goes back to 'processing' in the same transaction:
 * the database's worker must not claim it meanwhile.
 */
static void
finish_step(void *arg)
{
	Job		   *job = arg;
	Privileged	priv;

	privileged_begin(&priv);
	job_finish(job);
	if (job_will_retry(job))
	{
		spi_connect();
		spi_execute_with_args("UPDATE docextract.extractions"
							  " SET status = CASE WHEN template_id IS NULL THEN 'classifying' ELSE 'processing' END"
							  " WHERE id = $1 AND " ROW_STATUS_IS("status", "retrying"),
							  1, (Oid[]) {UUIDOID}, (Datum[]) {UUIDPGetDatum(job_id(job))},
							  NULL, false, 0);
		spi_finish();
	}
	privileged_end(&priv);
}

/*
 * Wait, interruptibly, until the job's requests are done.  An answer that
 * came in is taken before looking at a cancel: it is stored, and paid for.
 */
static void
wait_for_requests(Job *job)
{
	bool		ready = false;
	bool		timed_out = false;

	for (;;)
	{
		HttpRequest *req;
		long		timeout;
		int			rc;

		http_drive(timed_out);
		while ((req = http_next_done()) != NULL)
			ready = job_part_done(job, req) || ready;
		if (ready)
			return;
		CHECK_FOR_INTERRUPTS();
		stop_if_caller_gone();
		timeout = http_timeout_ms();
		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH |
							   (timeout >= 0 ? WL_TIMEOUT : 0),
							   http_socket_fd(), timeout >= 0 ? timeout : -1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		timed_out = (rc & WL_TIMEOUT) != 0;
	}
}

typedef struct RetryDue
{
	pg_uuid_t  *id;
	long		ms;
} RetryDue;

static void
retry_due_step(void *arg)
{
	RetryDue   *r = arg;
	bool		isnull;
	Datum		d;

	spi_connect();
	spi_execute_with_args("SELECT greatest(0, ceil(1000 * extract(epoch FROM"
						  " next_attempt_at - clock_timestamp())))::bigint"
						  " FROM docextract.extractions WHERE id = $1",
						  1, (Oid[]) {UUIDOID}, (Datum[]) {UUIDPGetDatum(r->id)}, NULL, false, 1);
	d = SPI_processed == 1 ? SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)
		: (Datum) 0;
	r->ms = SPI_processed != 1 || isnull ? 0 : (long) DatumGetInt64(d);
	spi_finish();
}

/* Sleep until the retry is due, interruptibly. */
static void
wait_for_retry(pg_uuid_t *id)
{
	RetryDue	r = {id, 0};
	char	   *err = in_own_transaction(retry_due_step, &r);
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), err ? 0 : r.ms);

	pgstat_report_activity(STATE_RUNNING, "docextract: waiting to retry");
	for (;;)
	{
		long		secs;
		int			usecs;

		CHECK_FOR_INTERRUPTS();
		stop_if_caller_gone();
		TimestampDifference(GetCurrentTimestamp(), until, &secs, &usecs);
		if (secs == 0 && usecs == 0)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 secs * 1000 + usecs / 1000 + 1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* How the extraction ended, when this process ends it without an answer. */
typedef struct Ending
{
	pg_uuid_t  *id;
	bool		cancelled;
	const char *message;
} Ending;

static void
end_step(void *arg)
{
	Ending	   *e = arg;
	Privileged	priv;

	spi_connect();
	privileged_begin(&priv);
	spi_execute_with_args("UPDATE docextract.extractions"
						  " SET status = CASE WHEN $2 THEN 'cancelled' ELSE 'failed' END,"
						  "     error_message = $3, completed_at = clock_timestamp()"
						  " WHERE id = $1 AND status IN " IN_HAND_STATUSES,
						  3, (Oid[]) {UUIDOID, BOOLOID, TEXTOID},
						  (Datum[]) {UUIDPGetDatum(e->id), BoolGetDatum(e->cancelled),
							  CStringGetTextDatum(e->message)}, NULL, false, 0);
	privileged_end(&priv);
	spi_finish();
}

static void
end_extraction(pg_uuid_t *id, bool cancelled, const char *message)
{
	Ending		e = {id, cancelled, message};
	char	   *err;

	QueryCancelPending = false; /* a second cancel has nothing more to cancel */
	err = in_own_transaction(end_step, &e);

	if (err)
		elog(WARNING, "docextract sync worker: could not end extraction %s: %s",
			 uuid_text(UUIDPGetDatum(id)), err);
}

/*
 * The answer is in: storing it, and its charge, is not interrupted by a
 * cancel (which takes effect right after).
 */
static char *
finish_uninterrupted(Job *job)
{
	uint32		saved = QueryCancelHoldoffCount;
	char	   *err;

	HOLD_CANCEL_INTERRUPTS();
	err = in_own_transaction(finish_step, job);
	QueryCancelHoldoffCount = saved;	/* an error inside has reset it */
	return err;
}

/*
 * Wait, interruptibly, until the model's limits (shared with the job
 * workers and other calls, ratelimit.c) leave room for this attempt's
 * requests; returns the slots reserved.
 */
static int
wait_for_room(Run *run)
{
	int			want = run->max_concurrency > 0 ? Min(run->parts, run->max_concurrency) : run->parts;

	for (;;)
	{
		int			got = ratelimit_reserve(run->model, run->max_concurrency, run->rpm, want, want, false);
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz free_at = ratelimit_next_free(now);
		long		ms = 1000;		/* a release sets our latch; this is a safety net */

		if (got > 0)
			return got;
		if (free_at > now)
			ms = Min(Max((free_at - now) / 1000, 1), 1000);
		pgstat_report_activity(STATE_RUNNING, "docextract: waiting for the model's limits");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		stop_if_caller_gone();
	}
}

/* One attempt; the failure's message, or NULL.  *retry if another is due. */
static char *
attempt(Run *run, bool *retry)
{
	Job		   *job;
	char	   *err;
	int			slots;

	stop_if_caller_gone();		/* before anything is sent */
	slots = wait_for_room(run);
	/* pg_stat_activity must not show a wait that is over (TAP 024 reads it). */
	pgstat_report_activity(STATE_RUNNING, "docextract: waiting for the model's answer");
	current_job = job = job_create(&run->id, run->attempts, run->parts);
	job_hold_slots(job, run->model, slots);
	err = in_own_transaction(prepare_step, job);
	if (err == NULL)
	{
		wait_for_requests(job);
		err = finish_uninterrupted(job);
		/* Classified: the extraction's request went out in the same job. */
		while (err == NULL && job_continues(job))
		{
			wait_for_requests(job);
			err = finish_uninterrupted(job);
		}
	}
	*retry = err == NULL && job_will_retry(job);
	current_job = NULL;
	job_release(job);
	return err;
}

/* Attempts until the extraction ends, retries included. */
static void
run_attempts(Run *run)
{
	for (;;)
	{
		bool		retry;
		char	   *err = attempt(run, &retry);

		if (err)
			end_extraction(&run->id, false, err);
		if (!retry)
			return;
		wait_for_retry(&run->id);
		err = in_own_transaction(start_attempt_step, run);
		if (err)
			end_extraction(&run->id, false, err);
		if (err || run->attempts == 0)
			return;
	}
}

/* get_result(), read as the caller, is the last message. */
static void
send_result(pg_uuid_t *id)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *text;

	StartTransactionCommand();
	steplock_wait();
	PushActiveSnapshot(GetTransactionSnapshot());
	spi_connect();
	if (spi_execute_with_args("SELECT docextract.get_result($1)::text", 1, (Oid[]) {UUIDOID},
							  (Datum[]) {UUIDPGetDatum(id)}, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the result of extraction %s", uuid_text(UUIDPGetDatum(id)));
	text = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	spi_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	{
		char		type = SYNC_MSG_RESULT;
		shm_mq_iovec iov[2] = {{&type, 1}, {text, strlen(text)}};

		(void) shm_mq_sendv(reply_queue, iov, 2, false, true);	/* the caller may be gone */
	}
}

/*
 * Run the submitted extraction to its end and send its result.  On a
 * cancel or an error: the caller gets the error, the request is dropped,
 * and the extraction, if still unanswered, is cancelled (or failed).
 */
static void
run_and_reply(Run *run)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		run_attempts(run);
		send_result(&run->id);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		if (current_job)
			job_release(current_job);
		current_job = NULL;
		RESUME_INTERRUPTS();
		end_extraction(&run->id, edata->sqlerrcode == ERRCODE_QUERY_CANCELED,
					   edata->message ? edata->message : "unknown error");
	}
	PG_END_TRY();
}

/*
 * When this process leaves the segment (at any exit, a FATAL while
 * connecting included): unpublish its pid, so that a caller leaving later
 * signals no process that has since taken that pid.
 */
static void
unpublish_pid(dsm_segment *seg, Datum arg)
{
	pg_atomic_write_u32(&((SyncTask *) DatumGetPointer(arg))->worker_pid, 0);
}

/* Take over the caller's identity and its superuser-only docextract settings. */
static void
become_caller(void)
{
	for (int i = 0; i < SYNC_NUM_SETTINGS; i++)
		SetConfigOption(sync_setting_names[i], task->settings[i], PGC_SUSET, PGC_S_SESSION);
	/* Nothing here resolves a name the caller chose: no user object can shadow ours. */
	SetConfigOption("search_path", "pg_catalog, docextract, pg_temp", PGC_USERSET, PGC_S_SESSION);
	SetUserIdAndSecContext(task->role, task->sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

void
docextract_sync_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	shm_toc    *toc;
	shm_mq	   *mq;
	Run			run;

	/* SIGTERM, like pg_cancel_backend(), ends the call, cancelling the extraction. */
	pqsignal(SIGTERM, StatementCancelHandler);
	BackgroundWorkerUnblockSignals();
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "docextract sync worker");
	seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
		return;					/* the caller is gone already */
	dsm_pin_mapping(seg);
	toc = shm_toc_attach(SYNC_TOC_MAGIC, dsm_segment_address(seg));
	task = shm_toc_lookup(toc, SYNC_KEY_TASK, false);
	mq = shm_toc_lookup(toc, SYNC_KEY_QUEUE, false);
	pg_atomic_write_u32(&task->worker_pid, (uint32) MyProcPid);
	on_dsm_detach(seg, unpublish_pid, PointerGetDatum(task));
	shm_mq_set_sender(mq, MyProc);
	reply_queue = shm_mq_attach(mq, seg, NULL);
	pq_redirect_to_shm_mq(seg, reply_queue);

	BackgroundWorkerInitializeConnectionByOid(task->dboid, task->login_role, 0);
	pgstat_report_appname("docextract sync worker");
	become_caller();
	http_init();

	memset(&run, 0, sizeof(run));
	run.content = shm_toc_lookup(toc, SYNC_KEY_CONTENT, false);
	run.options = shm_toc_lookup(toc, SYNC_KEY_OPTIONS, false);
	MemoryContextSwitchTo(AllocSetContextCreate(TopMemoryContext, "docextract sync worker",
												ALLOCSET_DEFAULT_SIZES));
	if (submit(&run))
		run_and_reply(&run);
}
