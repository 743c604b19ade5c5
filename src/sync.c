/*
 * sync.c: extract_sync(), the whole pipeline in the calling backend.
 *
 * The document and the extraction are rows of the caller's transaction, so
 * the worker never sees them, and a cancelled or timed-out call leaves
 * nothing behind.  The wait for HTTP is a latch wait on libcurl's epoll
 * descriptor: statement_timeout and pg_cancel_backend() end it at once.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(docextract_extract_sync);

/* Wait, interruptibly, until the job's requests are done. */
static void
wait_for_requests(Job *job)
{
	bool		ready = false;

	while (!ready)
	{
		HttpRequest *req;

		long		timeout = http_timeout_ms();
		int			rc;

		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH |
							   (timeout >= 0 ? WL_TIMEOUT : 0),
							   http_socket_fd(), timeout >= 0 ? timeout : -1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		http_drive((rc & WL_TIMEOUT) != 0);
		while ((req = http_next_done()) != NULL)
			ready = job_part_done(job, req) || ready;
	}
}

/* Sleep until the retry is due, interruptibly. */
static void
wait_ms(long ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		secs;
		int			usecs;

		TimestampDifference(GetCurrentTimestamp(), until, &secs, &usecs);
		if (secs == 0 && usecs == 0)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 secs * 1000 + usecs / 1000 + 1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* One attempt: prepare, send, wait, finish; the key is read as the owner. */
static void
attempt_step(void *arg)
{
	Job		   *job = arg;
	Privileged	priv;

	privileged_begin(&priv);
	job_prepare(job);
	privileged_end(&priv);
	wait_for_requests(job);
	privileged_begin(&priv);
	job_finish(job);
	privileged_end(&priv);
}

/*
 * Mark the extraction processing, as the worker's claim would; its attempt
 * number, and in *parts the requests it sends.
 */
static int
start_attempt(Datum id, int *parts)
{
	Privileged	priv;
	bool		isnull;
	int			attempts;

	SPI_connect();
	privileged_begin(&priv);
	SPI_execute_with_args("UPDATE docextract.extractions"
						  " SET status = 'processing', started_at = coalesce(started_at, clock_timestamp()),"
						  "     attempts = attempts + 1, next_attempt_at = NULL, worker_pid = pg_backend_pid()"
						  " WHERE id = $1 RETURNING attempts, parts",
						  1, (Oid[]) {UUIDOID}, &id, NULL, false, 1);
	attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*parts = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	privileged_end(&priv);
	SPI_finish();
	return attempts;
}

static long
retry_due_ms(Datum id)
{
	bool		isnull;
	Datum		d;

	SPI_connect();
	SPI_execute_with_args("SELECT greatest(0, ceil(1000 * extract(epoch FROM"
						  " next_attempt_at - clock_timestamp())))::bigint"
						  " FROM docextract.extractions WHERE id = $1",
						  1, (Oid[]) {UUIDOID}, &id, NULL, false, 1);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	SPI_finish();
	return isnull ? 0 : (long) DatumGetInt64(d);
}

static void
record_failure(Datum id, const char *message)
{
	Privileged	priv;

	SPI_connect();
	privileged_begin(&priv);
	queue_fail(DatumGetUUIDP(id), message);
	privileged_end(&priv);
	SPI_finish();
}

/* One attempt of a new Job, which is released however the attempt ends. */
static char *
attempt_and_release(Datum id, bool *retry)
{
	int			parts;
	int			attempts = start_attempt(id, &parts);
	Job		   *job = job_create(DatumGetUUIDP(id), attempts, parts);
	char	   *err;

	PG_TRY();
	{
		err = in_subtransaction(attempt_step, job);
	}
	PG_CATCH();
	{
		job_release(job);
		PG_RE_THROW();
	}
	PG_END_TRY();
	*retry = err == NULL && job_will_retry(job);
	job_release(job);
	return err;
}

/* Run the extraction to its end, retries included. */
static void
run_to_end(Datum id)
{
	for (;;)
	{
		bool		retry;
		char	   *err = attempt_and_release(id, &retry);

		if (err)
			record_failure(id, err);
		if (!retry)
			return;
		wait_ms(retry_due_ms(id));
	}
}

/*
 * extract_document(doc, template, options), template possibly NULL: which
 * DirectFunctionCall cannot pass, so extract_document says what NULL means.
 */
static Datum
submit(Datum doc, pg_uuid_t *template_id, Datum options)
{
	LOCAL_FCINFO(fcinfo, 3);
	Datum		id;

	InitFunctionCallInfoData(*fcinfo, NULL, 3, InvalidOid, NULL, NULL);
	fcinfo->args[0] = (NullableDatum) {doc, false};
	fcinfo->args[1] = (NullableDatum) {UUIDPGetDatum(template_id), template_id == NULL};
	fcinfo->args[2] = (NullableDatum) {options, false};
	id = docextract_extract_document(fcinfo);
	if (fcinfo->isnull)
		elog(ERROR, "extract_document returned NULL");
	return id;
}

Datum
docextract_extract_sync(PG_FUNCTION_ARGS)
{
	Jsonb	   *options = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	Datum		doc;
	Datum		id;
	Datum		result;
	bool		isnull;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("extract_sync needs the document's content")));
	http_init();
	doc = DirectFunctionCall2(docextract_add_document, CStringGetTextDatum("document"),
							  PG_GETARG_DATUM(0));
	id = submit(doc, PG_ARGISNULL(1) ? NULL : DatumGetUUIDP(PG_GETARG_DATUM(1)),
				options ? PointerGetDatum(options)
				: DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	run_to_end(id);

	SPI_connect();
	SPI_execute_with_args("SELECT docextract.get_result($1)", 1, (Oid[]) {UUIDOID}, &id,
						  NULL, false, 1);
	result = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											 &isnull), false, -1);
	SPI_finish();
	PG_RETURN_DATUM(result);
}
