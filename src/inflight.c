/*
 * inflight.c: what the job worker holds in flight, and which limit stops it.
 *
 * The models' max_concurrency decide how many requests go to each.  Above
 * them the worker has three limits of its own: docextract.max_inflight
 * (requests), the descriptors PostgreSQL lets a process hold for sockets
 * (max_files_per_process; http.c counts them), and
 * docextract.max_inflight_memory (bytes of request bodies and answers).
 *
 * A claimed job whose body does not fit in the memory left waits here,
 * claimed but not sent (its attempt counted once, nothing charged), and
 * nothing more is claimed until the requests in flight free enough: the
 * oldest goes first.  A job larger than the whole budget is sent when
 * nothing else is in flight.  When one of these limits is what stops a
 * claim, the log says so once per limit and value, and
 * docextract.worker_limits() shows it.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "http.h"
#include "options.h"
#include "queue.h"
#include "ratelimit.h"
#include "settings.h"
#include "spi_checked.h"
#include "util.h"
#include "worker.h"

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/memutils.h"

int			docextract_max_inflight_memory = 256 * 1024;	/* kB */

typedef enum InflightCap
{
	CAP_NONE = 0,
	CAP_REQUESTS,
	CAP_DESCRIPTORS,
	CAP_MEMORY,
	NUM_CAPS
} InflightCap;

static const char *const cap_names[NUM_CAPS] = {
	NULL, "docextract.max_inflight", "max_files_per_process", "docextract.max_inflight_memory"
};

/* What the job workers report, for docextract.worker_limits(). */
typedef struct InflightShared
{
	pg_atomic_uint32 waiting_memory;	/* jobs claimed, waiting for memory */
	pg_atomic_uint32 descriptor_cap;	/* sockets the job worker may hold; 0: none runs */
} InflightShared;

static InflightShared *inflight_shared = NULL;

/* A claimed job waiting for memory; bytes: its estimate, -1 if not known yet. */
typedef struct Waiting
{
	ClaimedJob	job;
	int64		bytes;
} Waiting;

static List *waiting = NIL;		/* of Waiting *, in TopMemoryContext, oldest first */
static int	waiting_published = 0;
static uint64 freed_when_blocked = 0;	/* http_bytes_freed() when the oldest could not start */
static InflightCap room_cap = CAP_NONE;
static int	logged_limit[NUM_CAPS];	/* the limit's value when last logged */

/*
 * What a request's body is estimated at before it is built: the document
 * in base64 (file and image parts) or its text, JSON-escaped (text mode),
 * the prompt and schema, and the answer's reserve.
 */
#define PROMPT_ALLOWANCE (128 * 1024)

void
inflight_define_settings(void)
{
	DefineCustomIntVariable("docextract.max_inflight_memory",
							"Bytes of request bodies and answers the worker holds in flight at once.",
							"A job whose body does not fit waits until requests in flight free enough; one larger than the whole budget is sent alone.",
							&docextract_max_inflight_memory, 256 * 1024, 1024, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL, NULL);
}

int64
inflight_memory_budget(void)
{
	return (int64) docextract_max_inflight_memory * 1024;
}

Size
inflight_shmem_size(void)
{
	return MAXALIGN(sizeof(InflightShared));
}

/* Called from the shmem startup hook, under AddinShmemInitLock. */
void
inflight_shmem_init(void)
{
	bool		found;

	inflight_shared = ShmemInitStruct("docextract inflight", sizeof(InflightShared), &found);
	if (!found)
	{
		pg_atomic_init_u32(&inflight_shared->waiting_memory, 0);
		pg_atomic_init_u32(&inflight_shared->descriptor_cap, 0);
	}
}

static void
publish(void)
{
	int			n = list_length(waiting);

	if (inflight_shared == NULL)
		return;
	pg_atomic_write_u32(&inflight_shared->descriptor_cap, (uint32) http_descriptor_cap());
	if (n == waiting_published)
		return;
	pg_atomic_fetch_add_u32(&inflight_shared->waiting_memory, n - waiting_published);
	waiting_published = n;
}

/* The worker leaves: what it reported goes with it. */
void
inflight_worker_exit(void)
{
	list_free_deep(waiting);
	waiting = NIL;
	publish();
	if (inflight_shared)
		pg_atomic_write_u32(&inflight_shared->descriptor_cap, 0);
}

static int
limit_value(InflightCap cap)
{
	switch (cap)
	{
		case CAP_REQUESTS:
			return docextract_max_inflight;
		case CAP_DESCRIPTORS:
			return http_descriptor_cap();
		case CAP_MEMORY:
			return docextract_max_inflight_memory;
		default:
			return 0;
	}
}

/* A limit stopped a claim: say so, once per limit and value. */
static void
note_cap(InflightCap cap, const char *detail)
{
	if (cap == CAP_NONE || logged_limit[cap] == limit_value(cap))
		return;
	logged_limit[cap] = limit_value(cap);
	ereport(LOG,
			(errmsg("docextract worker: %s (%d%s) limits the requests in flight, not the models' max_concurrency",
					cap_names[cap], limit_value(cap), cap == CAP_MEMORY ? " kB" : ""),
			 errdetail_internal("%s", detail),
			 errhint("docextract.worker_limits() shows what each model gets.")));
}

/*
 * Requests the worker may claim now (jobs: its jobs' requests in flight;
 * all: every request of the process, deliveries included).  None while
 * a claimed job waits for memory.
 */
int
inflight_claim_room(int jobs, int all)
{
	int			by_requests = docextract_max_inflight - jobs;
	int			by_descriptors = http_descriptor_cap() - all;

	publish();
	if (waiting != NIL)
	{
		room_cap = CAP_MEMORY;
		return 0;
	}
	room_cap = by_descriptors < by_requests ? CAP_DESCRIPTORS : CAP_REQUESTS;
	return Min(by_requests, by_descriptors);
}

/* The claim took this many requests of room: did the worker's limit stop it? */
void
inflight_claimed(int requests, int room)
{
	if (requests < room || room_cap == CAP_MEMORY)
		return;
	note_cap(room_cap, psprintf("%d request(s) in flight; a model's max_concurrency may allow more.",
								http_inflight()));
}

/* A request's estimated bytes for a document of len bytes and text_len of text. */
static int64
estimate(int64 len, int64 text_len, int parts)
{
	int64		body = Max(4 * ((len + 2) / 3), 2 * text_len);

	return parts * (body + PROMPT_ALLOWANCE + Min((int64) docextract_max_response_size * 1024,
												  (int64) 64 * 1024));
}

/*
 * The estimates of the waiting jobs not known yet; a job no longer
 * processing under this worker (cancelled meanwhile) leaves the list.
 */
static void
size_waiting(void)
{
	static SPIPlanPtr plan = NULL;	/* every batch started: planned once */
	Datum	   *ids = palloc(sizeof(Datum) * list_length(waiting));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, waiting)
		ids[n++] = UUIDPGetDatum(&((Waiting *) lfirst(lc))->job.id);
	spi_connect();
	if (spi_execute_kept(&plan, "SELECT e.id, octet_length(d.content)::int8,"
						 "       coalesce(octet_length(d.text), 0)::int8"
						 "  FROM docextract.extractions e"
						 "  JOIN docextract.documents d ON d.id = e.document_id"
						 " WHERE e.id = ANY ($1) AND e.status IN " IN_HAND_STATUSES,
						 1, (Oid[]) {UUIDARRAYOID},
						 (Datum[]) {PointerGetDatum(construct_array(ids, n, UUIDOID, UUID_LEN,
																	false, TYPALIGN_CHAR))},
						 NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the sizes of claimed documents");
	foreach(lc, waiting)
	{
		Waiting    *w = lfirst(lc);
		bool		found = false;

		for (uint64 r = 0; r < SPI_processed && !found; r++)
		{
			HeapTuple	t = SPI_tuptable->vals[r];
			bool		isnull;

			if (memcmp(DatumGetUUIDP(SPI_getbinval(t, SPI_tuptable->tupdesc, 1, &isnull)),
					   &w->job.id, sizeof(pg_uuid_t)) != 0)
				continue;
			found = true;
			if (w->bytes < 0)
			{
				int64		len = DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &isnull));

				w->bytes = estimate(isnull ? 0 : len,
									DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 3, &isnull)),
									w->job.parts);
			}
		}
		if (!found)
		{
			waiting = foreach_delete_current(waiting, lc);
			pfree(w);
		}
	}
	spi_finish();
}

/* Queue the jobs just claimed behind those already waiting. */
static void
append_waiting(ClaimedJob *jobs, int n)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	for (int i = 0; i < n; i++)
	{
		Waiting    *w = palloc(sizeof(Waiting));

		w->job = jobs[i];
		w->bytes = -1;
		waiting = lappend(waiting, w);
	}
	MemoryContextSwitchTo(old);
}

/*
 * Of the jobs just claimed (n of them) and those waiting for memory, the
 * oldest that fit now go into jobs[] (at most max), to be started; the rest
 * wait.  Returns how many.  Runs in a transaction.
 */
int
inflight_admit(ClaimedJob *jobs, int n, int max)
{
	int64		held = http_bytes_held();
	int			out = 0;

	append_waiting(jobs, n);
	if (waiting == NIL)
		return 0;
	size_waiting();
	while (waiting != NIL && out < max)
	{
		Waiting    *w = linitial(waiting);

		/* Alone, a job may pass the budget: it must be able to run at all. */
		if (held + w->bytes > inflight_memory_budget() && (held > 0 || out > 0))
		{
			note_cap(CAP_MEMORY,
					 psprintf("Extraction %s (about %lld kB) waits until requests in flight free memory (%lld kB held).",
							  uuid_text(UUIDPGetDatum(&w->job.id)), (long long) (w->bytes / 1024),
							  (long long) (held / 1024)));
			freed_when_blocked = http_bytes_freed();
			break;
		}
		held += w->bytes;
		jobs[out++] = w->job;
		waiting = list_delete_first(waiting);
		pfree(w);
	}
	publish();
	return out;
}

/* Have requests in flight freed memory since a job had to wait? */
bool
inflight_memory_freed(void)
{
	return http_bytes_freed() != freed_when_blocked || http_bytes_held() == 0;
}

/* Jobs waiting for memory. */
int
inflight_waiting_jobs(void)
{
	return list_length(waiting);
}

/*
 * SQL: per model, the max_concurrency it sets (NULL: none), the requests it
 * can have in flight, what caps that, if anything does, and the requests
 * in flight (or reserved by a claim) now, every process counted.
 */
PG_FUNCTION_INFO_V1(docextract_worker_limits);
Datum
docextract_worker_limits(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	uint32		worker_cap = inflight_shared ? pg_atomic_read_u32(&inflight_shared->descriptor_cap) : 0;
	int			descriptors = worker_cap > 0 ? (int) worker_cap : http_descriptor_cap();
	bool		memory = inflight_shared && pg_atomic_read_u32(&inflight_shared->waiting_memory) > 0;
	bool		all_stats = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);

	InitMaterializedSRF(fcinfo, 0);
	spi_connect();
	if (spi_execute("SELECT name, (options->>'" MODEL_OPT_MAX_CONCURRENCY "')::int FROM docextract.models ORDER BY name",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read docextract.models");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};
		bool		isnull;
		int			set = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));
		int			wanted = isnull ? docextract_max_inflight : set;
		char	   *name = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
		StringInfoData caps;

		initStringInfo(&caps);
		if (!isnull && set > docextract_max_inflight)
			appendStringInfoString(&caps, cap_names[CAP_REQUESTS]);
		if (Min(wanted, docextract_max_inflight) > descriptors)
			appendStringInfo(&caps, "%s%s", caps.len ? ", " : "", cap_names[CAP_DESCRIPTORS]);
		if (memory)
			appendStringInfo(&caps, "%s%s", caps.len ? ", " : "", cap_names[CAP_MEMORY]);
		values[0] = CStringGetTextDatum(name);
		values[1] = Int32GetDatum(set);
		nulls[1] = isnull;
		values[2] = Int32GetDatum(Min(Min(wanted, docextract_max_inflight), descriptors));
		values[3] = CStringGetTextDatum(caps.data);
		nulls[3] = caps.len == 0;
		/* Other roles' activity: for those who may read all statistics. */
		values[4] = Int32GetDatum(all_stats ? ratelimit_in_flight(name) : 0);
		nulls[4] = !all_stats;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	spi_finish();
	return (Datum) 0;
}
