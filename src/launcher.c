/*
 * launcher.c: workers for every database where the extension exists.
 *
 * One static background worker, connected to no database, reads
 * pg_database and keeps, for each database that allows connections, is
 * not a template and is listed by docextract.databases, a set of workers:
 * docextract.workers job workers and one write-back worker (dynamic
 * workers it restarts itself).  Whether the extension exists in a database
 * only a process connected to it can tell: the first job worker looks, and
 * reports (workerset.c); a database without it then gets no worker until a
 * CREATE EXTENSION there commits (dbhooks.c tells the launcher).  A
 * backend that needs a database alone (DROP DATABASE, CREATE DATABASE from
 * it as a template, ALTER DATABASE RENAME or SET TABLESPACE) blocks it
 * here: the launcher stops its workers, says so, and starts none there
 * until that backend's transaction ends.
 */
#include "postgres.h"

#include "settings.h"
#include "workerset.h"
#include "launcher.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/varlena.h"

#include <unistd.h>

PGDLLEXPORT void docextract_launcher_main(Datum main_arg);

int			docextract_workers = -1;
char	   *docextract_databases = NULL;
char	   *docextract_database = NULL;

LauncherShared *launcher = NULL;
uint64		launcher_extension_events_seen = 0;

/* -- shared memory ----------------------------------------------------------- */

/* One set per worker process at most: a served database has two or more. */
static int
nsets_wanted(void)
{
	return Max(max_worker_processes, 1);
}

Size
launcher_shmem_size(void)
{
	return MAXALIGN(add_size(offsetof(LauncherShared, sets),
							 mul_size(nsets_wanted(), sizeof(DbWorkers))));
}

void
launcher_shmem_init(bool crash_restart)
{
	bool		found;

	launcher = ShmemInitStruct("docextract launcher", launcher_shmem_size(), &found);
	if (found)
		return;
	memset(launcher, 0, launcher_shmem_size());
	SpinLockInit(&launcher->mutex);
	launcher->crash_restart = crash_restart;
	pg_atomic_init_u64(&launcher->extension_events, 0);
	launcher->nsets = nsets_wanted();
	for (int i = 0; i < launcher->nsets; i++)
		SpinLockInit(&launcher->sets[i].mutex);
}

bool
launcher_has_shmem(void)
{
	return launcher != NULL;
}

DbWorkers *
launcher_set_at(int index)
{
	if (index < 0 || index >= launcher->nsets)
		elog(FATAL, "docextract: no worker set %d", index);
	return &launcher->sets[index];
}

/* A committing backend's own database's set, or NULL if none is served. */
DbWorkers *
workerset_find(Oid dboid)
{
	static int	cached = -1;

	if (launcher == NULL)
		return NULL;
	if (cached >= 0 && launcher->sets[cached].dboid == dboid)
		return &launcher->sets[cached];
	for (int i = 0; i < launcher->nsets; i++)
		if (launcher->sets[i].dboid == dboid)
			return &launcher->sets[(cached = i)];
	return NULL;
}

void
launcher_wake(void)
{
	Latch	   *latch;

	SpinLockAcquire(&launcher->mutex);
	latch = launcher->latch;
	SpinLockRelease(&launcher->mutex);
	if (latch)
		SetLatch(latch);
}

uint64
launcher_extension_events(void)
{
	return pg_atomic_read_u64(&launcher->extension_events);
}

/* -- settings ------------------------------------------------------------- */

void
launcher_define_settings(void)
{
	DefineCustomIntVariable("docextract.workers",
							"Job worker processes per database (-1: half the machine's cores, at most a quarter of max_worker_processes, 1 to 4).",
							NULL, &docextract_workers, -1, -1, MAX_JOB_WORKERS,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("docextract.databases",
							   "Databases docextract's workers serve (empty: every database where the extension exists).",
							   NULL, &docextract_databases, "",
							   PGC_SIGHUP, GUC_LIST_INPUT, NULL, NULL, NULL);
	DefineCustomStringVariable("docextract.database",
							   "Deprecated: one database to serve; docextract.databases replaces it.",
							   NULL, &docextract_database, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/*
 * Job workers per database: the setting, or half the cores, at most a
 * quarter of max_worker_processes (parallel query and extract_sync take
 * slots from it too: at the default 8, two), 1 to 4.
 */
int
launcher_job_workers(void)
{
	static long cores = 0;

	if (cores == 0)
		cores = sysconf(_SC_NPROCESSORS_ONLN);
	if (docextract_workers > 0)
		return docextract_workers;
	return (int) Max(1, Min(Min(4, cores / 2), max_worker_processes / 4));
}

/* Does docextract.databases (or the deprecated docextract.database) list it? */
bool
launcher_database_listed(const char *datname)
{
	char	   *raw;
	List	   *names;
	ListCell   *lc;
	bool		listed = false;

	if (docextract_databases == NULL || docextract_databases[0] == '\0')
		return docextract_database == NULL || docextract_database[0] == '\0' ||
			strcmp(docextract_database, datname) == 0;
	raw = pstrdup(docextract_databases);
	if (!SplitGUCList(raw, ',', &names))
	{
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("docextract.databases is not a valid list of names: \"%s\"",
						docextract_databases)));
		return false;
	}
	foreach(lc, names)
		listed = listed || strcmp((char *) lfirst(lc), datname) == 0;
	list_free(names);
	pfree(raw);
	return listed;
}

/* -- what backends tell the launcher ---------------------------------------- */

/* At commit of CREATE or DROP EXTENSION docextract in database dboid. */
void
launcher_notify_extension(Oid dboid, bool created)
{
	if (launcher == NULL)
		return;
	pg_atomic_fetch_add_u64(&launcher->extension_events, 1);
	SpinLockAcquire(&launcher->mutex);
	if (launcher->nevents < MAX_EVENTS)
		launcher->events[launcher->nevents++] = (ExtensionEvent) {dboid, created};
	else
		launcher->events_lost = true;
	SpinLockRelease(&launcher->mutex);
	launcher_wake();
}

/* At commit of CREATE, DROP or ALTER DATABASE: read pg_database again. */
void
launcher_notify_databases(void)
{
	if (launcher == NULL)
		return;
	SpinLockAcquire(&launcher->mutex);
	launcher->rescan = true;
	SpinLockRelease(&launcher->mutex);
	launcher_wake();
}

static bool
block_acked(Oid dboid)
{
	bool		acked = true;

	SpinLockAcquire(&launcher->mutex);
	for (int i = 0; i < MAX_BLOCKS; i++)
		if (launcher->blocks[i].pid == MyProcPid && launcher->blocks[i].dboid == dboid)
			acked = launcher->blocks[i].acked;
	SpinLockRelease(&launcher->mutex);
	return acked;
}

/*
 * This backend needs database dboid alone: no docextract worker may stay
 * connected to it, nor come back, until this transaction ends
 * (launcher_step_aside_end).  Waits until they are gone.  False if it could
 * not (no room to say so, or they took too long: the command may then
 * fail as it would have).
 */
bool
launcher_step_aside(Oid dboid)
{
	int			slot = -1;

	if (launcher == NULL)
		return true;
	SpinLockAcquire(&launcher->mutex);
	for (int i = 0; i < MAX_BLOCKS && slot < 0; i++)
		if (launcher->blocks[i].pid == 0)
			slot = i;
	if (slot >= 0)
		launcher->blocks[slot] = (Block) {dboid, MyProcPid, false};
	SpinLockRelease(&launcher->mutex);
	if (slot < 0)
		return false;
	launcher_wake();
	for (int waited = 0; !block_acked(dboid) && waited < STEP_ASIDE_WAIT_MS; waited += 10)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	return block_acked(dboid);
}

/* This backend's transaction ended: its databases may have workers again. */
void
launcher_step_aside_end(void)
{
	bool		had = false;

	if (launcher == NULL)
		return;
	SpinLockAcquire(&launcher->mutex);
	for (int i = 0; i < MAX_BLOCKS; i++)
		if (launcher->blocks[i].pid == MyProcPid)
		{
			launcher->blocks[i].pid = 0;
			had = true;
		}
	launcher->rescan = launcher->rescan || had;
	SpinLockRelease(&launcher->mutex);
	if (had)
		launcher_wake();
}

/* -- registration ------------------------------------------------------------ */

void
launcher_register(void)
{
	register_static_worker("docextract_launcher_main", "docextract launcher");
}
