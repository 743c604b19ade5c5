/*
 * queue.c: the extractions table as the worker's queue.  The worker claims
 * with FOR UPDATE SKIP LOCKED, inside its own transactions, as superuser;
 * every status change fires the announce trigger.  Submitting is submit.c.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */

#include "options.h"
#include "queue.h"
#include "ratelimit.h"
#include "settings.h"
#include "spi_checked.h"
#include "util.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/guc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/*
 * The claim.  $1, $2: the models with room and their room, in requests
 * (ratelimit.c reserved it); $3: the worker's own room; $4,
 * docextract.max_inflight: at 1, every extraction is sent as one request.
 * Per model, the oldest claimable rows, at most its room of them, through
 * extractions_queue (whose predicate holds only live rows), locked SKIP
 * LOCKED; then those whose running sum of requests fits the model's room
 * and, oldest first, the worker's.  Its cost grows with the room, not with
 * the backlog or the table's history.  A row locked but left out stays
 * pending: its lock ends with this transaction.  The row's room is a
 * LIMIT taken per row of the unnest, so a kept generic plan uses it.
 */
const char *const queue_claim_sql =
"WITH locked AS ("
"  SELECT c.id, c.model_name, c.created_at, c.parts, r.room"
"    FROM unnest($1::text[], $2::int[]) AS r(model, room) CROSS JOIN LATERAL ("
"      SELECT x.id, x.model_name, x.created_at, least(x.parts, $4) AS parts"
"        FROM docextract.extractions x"
"       WHERE x.model_name = r.model AND x.status IN ('pending', 'retrying')"
"         AND (x.status = 'pending' OR x.next_attempt_at <= clock_timestamp())"
"       ORDER BY x.created_at LIMIT r.room"
"         FOR UPDATE OF x SKIP LOCKED) c),"
" fitting AS ("
"  SELECT id, created_at, parts FROM ("
"    SELECT id, created_at, parts, room,"
"           sum(parts) OVER (PARTITION BY model_name ORDER BY created_at, id) AS model_sum"
"      FROM locked) l WHERE model_sum <= room),"
" picked AS ("
"  SELECT id FROM (SELECT id, sum(parts) OVER (ORDER BY created_at, id) AS total FROM fitting) f"
"   WHERE total <= $3)"
" UPDATE docextract.extractions e"
"    SET status = CASE WHEN e.template_id IS NULL THEN 'classifying' ELSE 'processing' END,"
"        started_at = coalesce(e.started_at, clock_timestamp()),"
"        attempts = e.attempts + 1, worker_pid = pg_backend_pid(), next_attempt_at = NULL,"
"        completion_percentage = 0"
/* By id, not joined: a kept (generic) plan may hash-join the whole table. */
"  WHERE e.id = ANY (ARRAY(SELECT picked.id FROM picked))"
" RETURNING e.id, e.attempts, e.model_name, least(e.parts, $4)";

/*
 * NULL when no retry waits (greatest(0, NULL) would be 0: a worker that
 * never sleeps).  Retries already due wait for room, not for time: a job
 * that ends makes the worker look again.  Through extractions_retry_due:
 * live rows only.
 */
static const char *next_due_sql =
"SELECT ceil(1000 * extract(epoch FROM min(next_attempt_at) - clock_timestamp()))::bigint"
" FROM docextract.extractions WHERE status = 'retrying'"
" AND next_attempt_at > clock_timestamp()";

/*
 * The limits (0: none) of each model with a job to claim: room reserved
 * for a model with none would, for the claim's moment, refuse room to an
 * extract_sync call or a sibling worker (TAP 024).  Through
 * extractions_queue: live rows only, the first found ends the look.
 */
static const char *limits_sql =
"SELECT m.name, coalesce((m.options->>'" MODEL_OPT_MAX_CONCURRENCY "')::int, 0),"
"       coalesce((m.options->>'" MODEL_OPT_REQUESTS_PER_MINUTE "')::int, 0) FROM docextract.models m"
" WHERE EXISTS (SELECT FROM docextract.extractions x WHERE x.model_name = m.name"
"                 AND x.status IN ('pending', 'retrying')"
"                 AND (x.status = 'pending' OR x.next_attempt_at <= clock_timestamp()))";

/* The room reserved per model for one claim. */
typedef struct Rooms
{
	int			n;
	char	  **models;
	int		   *rooms;
	int		   *used;
} Rooms;

/* Reserve each model's room, up to max requests each (ratelimit.c). */
static void
reserve_rooms(Rooms *r, int max)
{
	static SPIPlanPtr limits_plan = NULL;
	uint64		nmodels;

	if (spi_execute_plan(spi_kept_plan(&limits_plan, limits_sql, 0, NULL), NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the models' limits");
	nmodels = SPI_processed;
	r->n = 0;
	r->models = palloc(sizeof(char *) * (nmodels + 1));
	r->rooms = palloc(sizeof(int) * (nmodels + 1));
	r->used = palloc0(sizeof(int) * (nmodels + 1));
	for (uint64 i = 0; i < nmodels; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		bool		isnull;
		int			got;

		got = ratelimit_reserve(name, DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull)),
								DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull)), max, 1, false);
		if (got == 0)
			continue;
		r->models[r->n] = name;
		r->rooms[r->n++] = got;
	}
}

/* Give back what the claim did not use. */
static void
release_rooms(Rooms *r)
{
	for (int i = 0; i < r->n; i++)
		ratelimit_release(r->models[i], r->rooms[i] - r->used[i], false);
	r->n = 0;
}

static int
run_claim(ClaimedJob *out, int max, Rooms *r)
{
	static SPIPlanPtr claim_plan = NULL;
	Datum	   *names = palloc(sizeof(Datum) * r->n);
	Datum	   *rooms = palloc(sizeof(Datum) * r->n);
	bool		isnull;
	int			n;

	for (int i = 0; i < r->n; i++)
	{
		names[i] = CStringGetTextDatum(r->models[i]);
		rooms[i] = Int32GetDatum(r->rooms[i]);
	}
	if (spi_execute_plan(spi_kept_plan(&claim_plan, queue_claim_sql, 4,
								   (Oid[]) {TEXTARRAYOID, INT4ARRAYOID, INT4OID, INT4OID}),
						 (Datum[]) {PointerGetDatum(construct_array(names, r->n, TEXTOID, -1, false, TYPALIGN_INT)),
							 PointerGetDatum(construct_array(rooms, r->n, INT4OID, 4, true, TYPALIGN_INT)),
							 Int32GetDatum(max), Int32GetDatum(docextract_max_inflight)},
						 NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not claim extractions");
	n = (int) SPI_processed;
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];

		memcpy(&out[i].id, DatumGetUUIDP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)),
			   sizeof(pg_uuid_t));
		out[i].attempts = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		strlcpy(out[i].model, SPI_getvalue(tup, SPI_tuptable->tupdesc, 3), sizeof(out[i].model));
		out[i].parts = DatumGetInt16(SPI_getbinval(tup, SPI_tuptable->tupdesc, 4, &isnull));
		for (int m = 0; m < r->n; m++)
			if (strcmp(r->models[m], out[i].model) == 0)
				r->used[m] += out[i].parts;
	}
	return n;
}

/*
 * Claim queued jobs worth up to max requests (pending, or retrying and
 * due), oldest first, never more per model than its max_concurrency and
 * requests_per_minute leave room for, across every process.  Each claimed
 * job holds its requests' slots (ratelimit.c): the caller hands them to its
 * Job, or gives them back.  *next_due_ms: when the next retry falls due,
 * -1 if none waits.
 */
int
queue_claim(ClaimedJob *out, int max, long *next_due_ms)
{
	static SPIPlanPtr due_plan = NULL;
	Rooms	   *r = palloc0(sizeof(Rooms));	/* not changed under PG_TRY */
	int			n = 0;
	bool		isnull;
	Datum		due;

	spi_connect();
	PG_TRY();
	{
		reserve_rooms(r, max);
		if (r->n > 0)
			n = run_claim(out, max, r);
		spi_execute_plan(spi_kept_plan(&due_plan, next_due_sql, 0, NULL), NULL, NULL, true, 1);
	}
	PG_CATCH();
	{
		/* Nothing is claimed: every reservation goes back. */
		for (int i = 0; i < r->n; i++)
			r->used[i] = 0;
		release_rooms(r);
		PG_RE_THROW();
	}
	PG_END_TRY();
	release_rooms(r);
	due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	*next_due_ms = isnull ? -1 : Max(0, (long) DatumGetInt64(due));
	spi_finish();
	return n;
}

/*
 * At worker start every job still marked processing lost its worker (crash,
 * restart): put it back.  Its result was never committed, so it is redone
 * once, not twice.
 */
int
queue_requeue_orphans(void)
{
	int			n;

	spi_connect();
	if (spi_execute("UPDATE docextract.extractions SET status = 'pending', worker_pid = NULL"
					" WHERE " ORPHANED_PROCESSING, false, 0) != SPI_OK_UPDATE)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not requeue the extractions of the previous worker")));
	n = (int) SPI_processed;
	spi_finish();
	return n;
}

/* Which of these in-flight jobs are no longer processing (cancelled)? */
void
queue_find_ended(pg_uuid_t **ids, int n, bool *ended)
{
	StringInfoData list;
	bool		isnull;

	initStringInfo(&list);
	appendStringInfoChar(&list, '{');
	for (int i = 0; i < n; i++)
	{
		appendStringInfo(&list, "%s%s", i ? "," : "",
						 uuid_text(UUIDPGetDatum(ids[i])));
		ended[i] = false;
	}
	appendStringInfoChar(&list, '}');
	spi_connect();
	spi_execute_with_args("SELECT id FROM docextract.extractions"
						  " WHERE id = ANY ($1::uuid[]) AND status NOT IN " IN_HAND_STATUSES,
						  1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(list.data)},
						  NULL, false, 0);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		pg_uuid_t  *id = DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[r],
													 SPI_tuptable->tupdesc, 1, &isnull));

		for (int i = 0; i < n; i++)
			if (memcmp(id, ids[i], sizeof(pg_uuid_t)) == 0)
				ended[i] = true;
	}
	spi_finish();
}

/* Another attempt after delay_ms; the last error stays visible meanwhile. */
void
queue_retry(pg_uuid_t *id, const char *message, long delay_ms)
{
	spi_connect();
	spi_execute_with_args("UPDATE docextract.extractions"
						  " SET status = 'retrying', error_message = $2, completion_percentage = 0,"
						  "     next_attempt_at = clock_timestamp() + $3 * interval '1 millisecond'"
						  " WHERE id = $1 AND status IN " IN_HAND_STATUSES,
						  3, (Oid[]) {UUIDOID, TEXTOID, INT8OID},
						  (Datum[]) {UUIDPGetDatum(id), CStringGetTextDatum(message),
							  Int64GetDatum(delay_ms)},
						  NULL, false, 0);
	spi_finish();
}

void
queue_fail(pg_uuid_t *id, const char *message)
{
	spi_connect();
	spi_execute_with_args("UPDATE docextract.extractions"
						  " SET status = 'failed', error_message = $2, completed_at = clock_timestamp()"
						  " WHERE id = $1 AND status IN " IN_HAND_STATUSES,
						  2, (Oid[]) {UUIDOID, TEXTOID},
						  (Datum[]) {UUIDPGetDatum(id), CStringGetTextDatum(message)},
						  NULL, false, 0);
	spi_finish();
}

/* One request of a multi-request extraction is done (event extraction.progress). */
void
queue_progress(pg_uuid_t *id, int percentage)
{
	spi_connect();
	spi_execute_with_args("UPDATE docextract.extractions SET completion_percentage = $2"
						  " WHERE id = $1 AND status IN " IN_HAND_STATUSES,
						  2, (Oid[]) {UUIDOID, INT4OID},
						  (Datum[]) {UUIDPGetDatum(id), Int32GetDatum(percentage)},
						  NULL, false, 0);
	spi_finish();
}

/*
 * The worker's commit of a batch failed: its jobs, still processing, go
 * back to the queue as retries (a later attempt stores the answer), or
 * fail after ten such attempts.
 */
void
queue_requeue_uncommitted(pg_uuid_t *ids, int n, const char *error)
{
	StringInfoData list;

	initStringInfo(&list);
	appendStringInfoChar(&list, '{');
	for (int i = 0; i < n; i++)
		appendStringInfo(&list, "%s%s", i ? "," : "", uuid_text(UUIDPGetDatum(&ids[i])));
	appendStringInfoChar(&list, '}');
	spi_connect();
	if (spi_execute_with_args("UPDATE docextract.extractions"
							  " SET status = CASE WHEN attempts >= 10 THEN 'failed' ELSE 'retrying' END,"
							  "     completed_at = CASE WHEN attempts >= 10 THEN clock_timestamp() END,"
							  "     worker_pid = NULL, completion_percentage = 0,"
							  "     error_message = 'the worker could not commit this extraction''s result: ' || $2,"
							  "     next_attempt_at = CASE WHEN attempts < 10"
							  "       THEN clock_timestamp() + make_interval(secs => attempts) END"
							  " WHERE id = ANY ($1::uuid[]) AND status IN " IN_HAND_STATUSES,
							  2, (Oid[]) {TEXTOID, TEXTOID},
							  (Datum[]) {CStringGetTextDatum(list.data), CStringGetTextDatum(error)},
							  NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not requeue extractions");
	if (SPI_processed > 0)
		elog(WARNING, "docextract worker: %d extraction(s) of a batch whose commit failed put back in the queue: %s",
			 (int) SPI_processed, error);
	spi_finish();
}
