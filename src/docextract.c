/*
 * docextract.c: module entry point.
 *
 * Defines the settings and sets shared memory up; loaded from
 * shared_preload_libraries, registers the launcher (launcher.c), which
 * starts the workers of every database, and the hooks that tell it of
 * CREATE/DROP EXTENSION and DATABASE (dbhooks.c).
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "classify.h"

#include "answer.h"
#include "http.h"
#include "parser.h"
#include "ratelimit.h"
#include "settings.h"
#include "worker.h"
#include "workerset.h"
#include "writeback.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

int			docextract_max_document_size = 20 * 1024;	/* kB */
int			docextract_max_inflight = 256;
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

/* Postmaster-local: shared memory set up this many times (> 1: after a crash). */
static int	shmem_setups = 0;

static void
docextract_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(DocextractShared)));
	RequestAddinShmemSpace(inflight_shmem_size());
	RequestAddinShmemSpace(launcher_shmem_size());
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
		shmem_setups++;
	}
	inflight_shmem_init();
	launcher_shmem_init(shmem_setups > 1);
	LWLockRelease(AddinShmemInitLock);
}

static void
define_settings(void)
{
	launcher_define_settings();
	DefineCustomIntVariable("docextract.max_document_size",
							"Largest document add_document accepts.",
							NULL, &docextract_max_document_size, 20 * 1024,
							1, 1024 * 1024, PGC_SUSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.max_inflight",
							"Requests the worker keeps in flight at once, all models together.",
							NULL, &docextract_max_inflight, 256, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	inflight_define_settings();
	classify_define_settings();
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
	/*
	 * On, for the rest of a transaction, once it holds one of a role's
	 * credit slots (credit_slot_for): it must then not wait for another
	 * (credit_gather).  A placeholder, set by set_config(..., true).
	 */
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
	trigger_rows_define_settings();
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
	launcher_register();	/* it starts the workers of each database */
	dbhooks_install();
}
