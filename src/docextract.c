/*
 * docextract.c: module entry point.
 *
 * Defines the settings, the small shared-memory area through which a
 * committing backend wakes the worker, and registers the worker when loaded
 * from shared_preload_libraries.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "access/xact.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"


PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *docextract_database = NULL;
int			docextract_max_document_size = 20 * 1024;	/* kB */
int			docextract_max_inflight = 16;
int			docextract_poll_interval_ms = 5000;
int			docextract_default_timeout_ms = 120000;
int			docextract_credits_mode = CREDITS_ENFORCE;
int			docextract_max_active_per_role = 0;
int			docextract_webhook_timeout_ms = 10000;
int			docextract_webhook_max_attempts = 10;
int			docextract_webhook_disable_after = 20;
int			docextract_webhook_backoff_ms = 1000;
int			docextract_retention_s = 0;
bool		docextract_submitting = false;
int			docextract_max_webhook_inflight = 16;
double		docextract_notify_queue_limit = 0.9;

static const struct config_enum_entry credits_modes[] = {
	{"enforce", CREDITS_ENFORCE, false},
	{"track", CREDITS_TRACK, false},
	{NULL, 0, false}
};

DocextractShared *docextract_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static bool wake_pending = false;
static bool signal_pending[NUM_WORKER_SIGNALS];
static bool xact_callback_registered = false;
static bool writeback_wake_pending = false;

/* At commit of a status change of the trigger form: wake the write-back worker. */
static void
writeback_xact_callback(XactEvent event, void *arg)
{
	Latch	   *latch = NULL;

	if (!writeback_wake_pending)
		return;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		writeback_wake_pending = false;
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_PARALLEL_COMMIT)
		return;
	writeback_wake_pending = false;
	SpinLockAcquire(&docextract_shared->mutex);
	if (docextract_shared->writeback_dboid == MyDatabaseId)
		latch = docextract_shared->writeback_latch;
	SpinLockRelease(&docextract_shared->mutex);
	if (latch)
		SetLatch(latch);
}

void
writeback_wake_at_commit(void)
{
	static bool registered = false;

	if (docextract_shared == NULL)
		return;
	if (!registered)
	{
		RegisterXactCallback(writeback_xact_callback, NULL);
		registered = true;
	}
	writeback_wake_pending = true;
}

/* The write-back worker's latch, for committing backends; NULL latch: gone. */
void
writeback_worker_publish(Latch *latch, Oid dboid)
{
	SpinLockAcquire(&docextract_shared->mutex);
	docextract_shared->writeback_latch = latch;
	docextract_shared->writeback_dboid = dboid;
	docextract_shared->writeback_pid = latch ? MyProcPid : 0;
	SpinLockRelease(&docextract_shared->mutex);
}

static void
docextract_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(DocextractShared)));
	ratelimit_shmem_request();
}

static void
docextract_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	docextract_shared = ShmemInitStruct("docextract", sizeof(DocextractShared), &found);
	ratelimit_shmem_startup();
	if (!found)
	{
		SpinLockInit(&docextract_shared->mutex);
		docextract_shared->worker_latch = NULL;
		docextract_shared->worker_dboid = InvalidOid;
		docextract_shared->worker_pid = 0;
		for (int i = 0; i < NUM_WORKER_SIGNALS; i++)
			pg_atomic_init_u64(&docextract_shared->generation[i], 0);
		crashguard_shmem_init(docextract_shared);
		docextract_shared->writeback_latch = NULL;
		docextract_shared->writeback_dboid = InvalidOid;
		docextract_shared->writeback_pid = 0;
		docextract_shared->writeback_running_set = false;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Set the worker's latch once the transaction that queued work commits. */
static void
wake_xact_callback(XactEvent event, void *arg)
{
	Latch	   *latch = NULL;

	if (!wake_pending)
		return;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		wake_pending = false;
		memset(signal_pending, 0, sizeof(signal_pending));
		return;
	}
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_PARALLEL_COMMIT)
		return;
	wake_pending = false;
	if (docextract_shared == NULL)
		return;
	for (int i = 0; i < NUM_WORKER_SIGNALS; i++)
		if (signal_pending[i])
			pg_atomic_fetch_add_u64(&docextract_shared->generation[i], 1);
	memset(signal_pending, 0, sizeof(signal_pending));
	SpinLockAcquire(&docextract_shared->mutex);
	if (docextract_shared->worker_dboid == MyDatabaseId)
		latch = docextract_shared->worker_latch;
	SpinLockRelease(&docextract_shared->mutex);
	if (latch)
		SetLatch(latch);
}

/*
 * Called by anything that makes work for the worker.  Without the preload
 * there is no shared memory and no worker; the work waits in the table.
 */
void
docextract_wake_worker_at_commit(void)
{
	if (docextract_shared == NULL)
		return;
	if (!xact_callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_pending = true;
}

/*
 * Wake the worker at commit with something particular to look at, so that
 * it looks only when told: a cancel (its in-flight jobs), or new webhook
 * deliveries.
 */
void
docextract_signal_at_commit(WorkerSignal signal)
{
	docextract_wake_worker_at_commit();
	signal_pending[signal] = true;
}

uint64
docextract_signal_generation(WorkerSignal signal)
{
	return pg_atomic_read_u64(&docextract_shared->generation[signal]);
}

/* SQL: docextract.deliveries_queued(), called by the outbox trigger. */
PG_FUNCTION_INFO_V1(docextract_deliveries_queued);
Datum
docextract_deliveries_queued(PG_FUNCTION_ARGS)
{
	docextract_signal_at_commit(SIGNAL_DELIVERIES);
	PG_RETURN_VOID();
}

void
docextract_worker_publish(Latch *latch, Oid dboid)
{
	SpinLockAcquire(&docextract_shared->mutex);
	docextract_shared->worker_latch = latch;
	docextract_shared->worker_dboid = dboid;
	docextract_shared->worker_pid = MyProcPid;
	SpinLockRelease(&docextract_shared->mutex);
}

void
docextract_worker_unpublish(void)
{
	SpinLockAcquire(&docextract_shared->mutex);
	if (docextract_shared->worker_pid == MyProcPid)
	{
		docextract_shared->worker_latch = NULL;
		docextract_shared->worker_dboid = InvalidOid;
		docextract_shared->worker_pid = 0;
	}
	SpinLockRelease(&docextract_shared->mutex);
}

static void
define_settings(void)
{
	/* A postmaster-level setting can only be defined while preloading. */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("docextract.database",
								   "Database the docextract worker serves.",
								   NULL, &docextract_database, "postgres",
								   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.max_document_size",
							"Largest document add_document accepts.",
							NULL, &docextract_max_document_size, 20 * 1024,
							1, 1024 * 1024, PGC_SUSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.max_inflight",
							"Requests the worker keeps in flight at once.",
							NULL, &docextract_max_inflight, 16, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.poll_interval",
							"How often the worker looks at the queue when nobody wakes it.",
							NULL, &docextract_poll_interval_ms, 5000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.request_timeout",
							"Timeout of one model request when the model sets no timeout_ms.",
							NULL, &docextract_default_timeout_ms, 120000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	/* SUSET: a role must not be able to switch off its own limits. */
	DefineCustomEnumVariable("docextract.credits",
							 "enforce: refuse submits the credit balance cannot cover; track: record only.",
							 NULL, &docextract_credits_mode, CREDITS_ENFORCE, credits_modes,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.max_active_per_role",
							"Queued and running extractions a role may have at once (0: no limit).",
							NULL, &docextract_max_active_per_role, 0, 0, INT_MAX,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.webhook_timeout",
							"Timeout of one webhook delivery.",
							NULL, &docextract_webhook_timeout_ms, 10000, 100, 600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.webhook_max_attempts",
							"Attempts at delivering one event before it is marked failed.",
							NULL, &docextract_webhook_max_attempts, 10, 1, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.webhook_disable_after",
							"Consecutive failed deliveries after which a webhook is disabled.",
							NULL, &docextract_webhook_disable_after, 20, 1, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.webhook_retry_backoff",
							"First delay before a webhook delivery is retried; it doubles each attempt.",
							NULL, &docextract_webhook_backoff_ms, 1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.retention",
							"How long ended extractions and delivered events are kept (0: forever).",
							NULL, &docextract_retention_s, 0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	/*
	 * On only while docextract itself inserts an extraction: its INSERT
	 * triggers reserve credits and announce the row then, and leave rows
	 * loaded any other way (a restore of a dump) as they come.
	 */
	DefineCustomBoolVariable("docextract.submitting",
							 "Set by docextract while it enqueues an extraction.",
							 NULL, &docextract_submitting, false,
							 PGC_SUSET, GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							 NULL, NULL, NULL);
	parser_define_settings();
	DefineCustomIntVariable("docextract.max_webhook_inflight",
							"Webhook deliveries the worker keeps in flight at once, besides max_inflight model requests.",
							NULL, &docextract_max_webhook_inflight, 16, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	/* Read by announce_status(); SUSET so that tests can lower it. */
	DefineCustomRealVariable("docextract.notify_queue_limit",
							 "Fill of the NOTIFY queue above which status changes are not announced by NOTIFY.",
							 "A session that LISTENs and keeps a transaction open pins the queue; events stay in docextract.events.",
							 &docextract_notify_queue_limit, 0.9, 0.0, 1.0,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	egress_define_settings();
	DefineCustomIntVariable("docextract.max_response_size",
							"Largest answer read from a model endpoint or a webhook receiver.",
							NULL, &docextract_max_response_size, 10 * 1024, 1, 512 * 1024,
							PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.max_crashes",
							"Times the worker may crash with an extraction alone in flight before that extraction is failed.",
							NULL, &docextract_max_crashes, 3, 1, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	/* SUSET: a fault-injection point for the tests, never for roles. */
	DefineCustomStringVariable("docextract.debug_crash_on_document",
							   "Testing only: the worker aborts while preparing the extraction of a document of this filename.",
							   NULL, &docextract_debug_crash_on_document, "",
							   PGC_SUSET, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	writeback_define_settings();
	MarkGUCPrefixReserved("docextract");
}

/* A worker started with the server, restarted a second after it stops. */
void
register_static_worker(const char *function, const char *name)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "docextract");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", name);
	RegisterBackgroundWorker(&worker);
}

void
_PG_init(void)
{
	define_settings();

	if (!process_shared_preload_libraries_in_progress)
		return;
	/* pg_upgrade runs the server to move the schema: no worker then. */
	if (IsBinaryUpgrade)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = docextract_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = docextract_shmem_startup;
	register_static_worker("docextract_worker_main", "docextract worker");
	register_static_worker("docextract_writeback_main", "docextract write-back worker");
}
