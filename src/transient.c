/*
 * transient.c: errors that say "not now", not "this extraction is wrong".
 *
 * A deadlock, a serialization failure, a lock or statement timeout, a
 * cancel, a shutdown, a full disk or memory: the same step may well succeed
 * a moment later.  Such an error (told by its SQLSTATE, never by its text)
 * retries the job's step: an answer in hand is stored later, a failure is
 * recorded later, a request not yet sent goes back to the queue.  It never
 * fails the job.  Stepping aside for DDL (steplock.c) is one too.
 *
 * These retries do not use up the extraction's max_retries, which count
 * requests sent to the model (each one paid); the claim's attempt is given
 * back when a request goes back to the queue unsent.  So that a step that
 * always meets one (a statement_timeout too short for it) cannot loop
 * forever, a job is retried so at most TRANSIENT_MAX times by one worker
 * process (stepping aside not counted); then it fails with the error.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#define TRANSIENT_MAX 10
/* A request sent back to the queue waits 1 s, doubling, at most a minute. */
#define REQUEUE_FIRST_MS 1000
#define REQUEUE_MOST_MS (60 * 1000)
/* Jobs remembered; past this the counts start again (they stay bounded). */
#define TRANSIENT_JOBS_MAX 10000

typedef struct TransientCount
{
	pg_uuid_t	id;				/* the key */
	int			count;
} TransientCount;

static int	last_sqlstate = 0;	/* of the last step, 0 if it succeeded */
static bool last_aside = false;
static HTAB *counts = NULL;

/* Is an error of this SQLSTATE one that may well not happen again? */
bool
error_is_transient(int sqlerrcode)
{
	switch (sqlerrcode)
	{
		case ERRCODE_T_R_SERIALIZATION_FAILURE:
		case ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN:
		case ERRCODE_T_R_DEADLOCK_DETECTED:
		case ERRCODE_LOCK_NOT_AVAILABLE:
		case ERRCODE_QUERY_CANCELED:	/* statement_timeout, pg_cancel_backend */
		case ERRCODE_ADMIN_SHUTDOWN:
		case ERRCODE_CRASH_SHUTDOWN:
		case ERRCODE_CANNOT_CONNECT_NOW:
		case ERRCODE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT:
		case ERRCODE_IDLE_SESSION_TIMEOUT:
		case ERRCODE_DISK_FULL:
		case ERRCODE_OUT_OF_MEMORY:
		case ERRCODE_TOO_MANY_CONNECTIONS:
		case ERRCODE_CONNECTION_FAILURE:
			return true;
		default:
			return false;
	}
}

/* How the last step ended: 0 (it succeeded) or its error's SQLSTATE. */
void
step_note_error(int sqlerrcode)
{
	last_sqlstate = sqlerrcode;
	last_aside = false;
}

/* The last step stepped aside for DDL; its "error" message. */
const char *
step_note_aside(void)
{
	last_sqlstate = ERRCODE_LOCK_NOT_AVAILABLE;
	last_aside = true;
	return "the docextract schema is locked by another session";
}

/* Did the last step fail by a transient error (or step aside)? */
bool
step_transient(void)
{
	return last_sqlstate != 0 && error_is_transient(last_sqlstate);
}

bool
step_stepped_aside(void)
{
	return last_aside;
}

/* This job's count of transient retries, counted up (stepping aside not). */
static int
count_up(pg_uuid_t *id)
{
	TransientCount *c;
	bool		found;
	int			n;

	if (counts == NULL || hash_get_num_entries(counts) >= TRANSIENT_JOBS_MAX)
	{
		HASHCTL		ctl = {.keysize = sizeof(pg_uuid_t), .entrysize = sizeof(TransientCount)};

		if (counts)
			hash_destroy(counts);
		counts = hash_create("docextract transient retries", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	c = hash_search(counts, id, HASH_ENTER, &found);
	n = c->count = (found ? c->count : 0) + (last_aside ? 0 : 1);
	if (n >= TRANSIENT_MAX)
		hash_search(counts, id, HASH_REMOVE, NULL);
	return n;
}

/*
 * The last step of job id failed with err: retry it (true) or let the error
 * fail the job (false: not transient, or TRANSIENT_MAX times already).
 */
bool
transient_retry(pg_uuid_t *id, const char *err)
{
	int			n;

	if (!step_transient())
		return false;
	n = count_up(id);
	if (!last_aside)
		elog(LOG, "docextract worker: extraction %s met a transient error (%d of %d), retried: %s",
			 uuid_text(UUIDPGetDatum(id)), n, TRANSIENT_MAX, err);
	return n < TRANSIENT_MAX;
}

/*
 * Its request not sent, the claimed extraction goes back to the queue
 * (retrying, later), the claim's attempt given back.  In a transaction.
 */
void
transient_requeue(pg_uuid_t *id, const char *message)
{
	TransientCount *c = counts ? hash_search(counts, id, HASH_FIND, NULL) : NULL;
	int			n = c ? c->count : 1;
	long		delay = Min((long) REQUEUE_FIRST_MS << Min(n - 1, 16), REQUEUE_MOST_MS);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("UPDATE docextract.extractions"
							  " SET status = 'retrying', attempts = greatest(attempts - 1, 0),"
							  "     worker_pid = NULL, completion_percentage = 0, error_message = $2,"
							  "     next_attempt_at = clock_timestamp() + $3 * interval '1 millisecond'"
							  " WHERE id = $1 AND status IN " IN_HAND_STATUSES,
							  3, (Oid[]) {UUIDOID, TEXTOID, INT8OID},
							  (Datum[]) {UUIDPGetDatum(id), CStringGetTextDatum(message),
								  Int64GetDatum(delay)},
							  NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not requeue extraction %s", uuid_text(UUIDPGetDatum(id)));
	SPI_finish();
}
