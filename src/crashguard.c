/*
 * crashguard.c: a job that keeps crashing the worker is failed, not retried
 * forever.
 *
 * When the worker dies (a signal, an abort, a FATAL error), every extraction
 * it had in flight stays 'processing'; the next worker requeues them.  If
 * the worker stopped by crashing rather than by being told to stop (SIGTERM),
 * each orphan's crashes column is counted up.  One of them killed the worker,
 * but which one is unknown while several were in flight: so orphans of a
 * crash (pending with crashes > 0) are then claimed one at a time, nothing
 * else in flight beside them.  An orphan that was alone in flight when the
 * worker crashed is the culprit for certain; when that has happened
 * docextract.max_crashes times, it is failed instead of requeued.
 *
 * Whether the last stop was a crash: the postmaster sets shared memory up
 * again after any crash (docextract.c counts how often it did, and the
 * launcher flags every job worker's slot then); a worker that exits on
 * SIGTERM says so in its slot (launcher.h's DbWorkers).  With several job
 * workers in a database, the suspects run one at a time across all of
 * them, while none of them has anything else in flight.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "tcop/tcopprot.h"

#include <signal.h>
#include <stdlib.h>

int			docextract_max_crashes = 3;
char	   *docextract_debug_crash_on_document = NULL;

static volatile sig_atomic_t got_sigterm = false;

/* The worker's SIGTERM: a requested stop, not a crash. */
void
crashguard_sigterm(SIGNAL_ARGS)
{
	got_sigterm = true;
	die(postgres_signal_arg);
}

/*
 * At worker start: was the previous worker's stop a crash?  From now until
 * a clean exit, assume this one's will be.
 */
bool
crashguard_last_stop_was_crash(void)
{
	bool		crashed;

	JobWorkerSlot *me = &MyDbWorkers->job[MyJobWorkerIndex];

	SpinLockAcquire(&MyDbWorkers->mutex);
	crashed = me->stopped_uncleanly;
	me->stopped_uncleanly = true;
	SpinLockRelease(&MyDbWorkers->mutex);
	return crashed;
}

/*
 * At worker exit (not reached on a crash): clean if asked to stop; a
 * suspect it held is another worker's to run now.
 */
void
crashguard_worker_exit(void)
{
	SpinLockAcquire(&MyDbWorkers->mutex);
	if (got_sigterm)
		MyDbWorkers->job[MyJobWorkerIndex].stopped_uncleanly = false;
	if (MyDbWorkers->suspect_holder == MyProcPid)
		MyDbWorkers->suspect_holder = 0;
	SpinLockRelease(&MyDbWorkers->mutex);
}

/*
 * Requeue what the previous worker left processing; after a crash, count
 * the crash against each, and fail one that was alone in flight for the
 * max_crashes-th time.  Returns how many were requeued; *failed how many
 * were failed.  In a transaction.
 */
int
crashguard_requeue_orphans(bool after_crash, int *failed)
{
	int			n;
	bool		isnull;

	*failed = 0;
	/* Of this crash or an earlier one: look, in every worker of the database. */
	SpinLockAcquire(&MyDbWorkers->mutex);
	MyDbWorkers->suspects_waiting = true;
	SpinLockRelease(&MyDbWorkers->mutex);
	if (!after_crash)
		return queue_requeue_orphans();
	SPI_connect();
	SPI_execute("SELECT count(*) FROM docextract.extractions WHERE " ORPHANED_PROCESSING, true, 1);
	n = (int) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (n > 0 &&
		SPI_execute_with_args("WITH o AS (UPDATE docextract.extractions"
							  "  SET crashes = crashes + 1, worker_pid = NULL,"
							  "      status = CASE WHEN $1 AND crashes + 1 >= $2 THEN 'failed' ELSE 'pending' END,"
							  "      completed_at = CASE WHEN $1 AND crashes + 1 >= $2 THEN clock_timestamp() END,"
							  "      error_message = CASE WHEN $1 AND crashes + 1 >= $2 THEN"
							  "        format('the docextract worker stopped %s times while processing this extraction"
							  " (docextract.max_crashes = %s); it is not tried again', crashes + 1, $2)"
							  "        ELSE error_message END"
							  "  WHERE " ORPHANED_PROCESSING " RETURNING status)"
							  " SELECT count(*) FILTER (WHERE status = 'failed') FROM o",
							  2, (Oid[]) {BOOLOID, INT4OID},
							  (Datum[]) {BoolGetDatum(n == 1), Int32GetDatum(docextract_max_crashes)},
							  NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not requeue the extractions of the previous worker");
	if (n > 0)
		*failed = (int) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
													&isnull));
	SPI_finish();
	return n - *failed;
}

/* Are orphans of a crash still to be run one at a time, in this database? */
bool
crashguard_single_mode(void)
{
	return MyDbWorkers->suspects_waiting;
}

/*
 * May this worker run a suspect now?  Only one worker of the database at a
 * time, and only while no other has anything in flight: a crash must name
 * its culprit.
 */
static bool
hold_suspect_turn(void)
{
	bool		mine;

	SpinLockAcquire(&MyDbWorkers->mutex);
	mine = MyDbWorkers->suspect_holder == 0 || MyDbWorkers->suspect_holder == MyProcPid;
	for (int k = 0; k < MAX_JOB_WORKERS && mine; k++)
		mine = k == MyJobWorkerIndex || MyDbWorkers->job[k].pid == 0 ||
			MyDbWorkers->job[k].inflight == 0;
	if (mine)
		MyDbWorkers->suspect_holder = MyProcPid;
	SpinLockRelease(&MyDbWorkers->mutex);
	return mine;
}

/* No suspect left: every worker of the database claims as usual again. */
static void
end_single_mode(void)
{
	SpinLockAcquire(&MyDbWorkers->mutex);
	MyDbWorkers->suspects_waiting = false;
	MyDbWorkers->suspect_holder = 0;
	SpinLockRelease(&MyDbWorkers->mutex);
	workerset_wake_all();
}

/*
 * Claim the oldest orphan of a crash, alone; 0 when none is left (then
 * single mode ends) or when it is not this worker's turn.  In a transaction.
 */
int
crashguard_claim_suspect(ClaimedJob *out)
{
	bool		isnull;
	int			n;

	if (!hold_suspect_turn())
		return 0;
	SPI_connect();
	SPI_execute("UPDATE docextract.extractions e"
				" SET status = CASE WHEN e.template_id IS NULL THEN 'classifying' ELSE 'processing' END,"
				"     started_at = coalesce(e.started_at, clock_timestamp()),"
				"     attempts = e.attempts + 1, worker_pid = pg_backend_pid(), next_attempt_at = NULL,"
				"     completion_percentage = 0"
				" WHERE e.id = (SELECT x.id FROM docextract.extractions x"
				"               WHERE x.status = 'pending' AND x.crashes > 0"
				"               ORDER BY x.created_at, x.id LIMIT 1 FOR UPDATE SKIP LOCKED)"
				" RETURNING e.id, e.attempts, e.model_name, e.parts", false, 1);
	n = (int) SPI_processed;
	if (n == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		memcpy(&out->id, DatumGetUUIDP(SPI_getbinval(tup, desc, 1, &isnull)), sizeof(pg_uuid_t));
		out->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		strlcpy(out->model, SPI_getvalue(tup, desc, 3), sizeof(out->model));
		out->parts = DatumGetInt16(SPI_getbinval(tup, desc, 4, &isnull));
	}
	SPI_finish();
	if (n == 0)
		end_single_mode();
	return n;
}

/*
 * Fault injection for the tests: the worker aborts while preparing the
 * extraction of a document of this filename.  docextract.debug_crash_on_document
 * is superuser-only, and only the database's job worker ever stops here
 * (not extract_sync's workers, whose documents any role names).
 */
void
crashguard_fault_point(const char *filename)
{
	if (docextract_debug_crash_on_document == NULL ||
		docextract_debug_crash_on_document[0] == '\0' ||
		!docextract_is_job_worker || filename == NULL ||
		strcmp(filename, docextract_debug_crash_on_document) != 0)
		return;
	elog(LOG, "docextract worker: aborting on document \"%s\" (docextract.debug_crash_on_document)",
		 filename);
	abort();
}
