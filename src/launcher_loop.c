/*
 * launcher_loop.c: the launcher process (see launcher.c).
 *
 * Its loop: read pg_database when told or now and then, take the
 * extension events that committing backends posted, see which of its
 * workers stopped, then for each database start what is missing and stop
 * what is not wanted.  The workers are dynamic, never restarted by the
 * postmaster: the launcher restarts one that stopped by itself a second
 * later, and knows that it stopped through bgw_notify_pid.
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
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include <signal.h>

PGDLLEXPORT void docextract_launcher_main(Datum main_arg);

/* What the launcher knows of a database. */
typedef struct LocalDb
{
	Oid			dboid;			/* hash key */
	char		name[NAMEDATALEN];
	bool		in_catalog;		/* in pg_database at the last look */
	bool		wanted;			/* allows connections, not a template, listed */
	bool		absent;			/* no extension there, until an event says otherwise */
	bool		present;		/* the extension was found there */
	bool		had_set;		/* a set was given to it before (crash flags only once) */
	int			set;			/* its set's index, -1 if none */
} LocalDb;

/* The launcher's handles on one set's workers. */
typedef struct SetHandles
{
	BackgroundWorkerHandle *job[MAX_JOB_WORKERS];
	TimestampTz job_retry[MAX_JOB_WORKERS];
	BackgroundWorkerHandle *writeback;
	TimestampTz writeback_retry;
} SetHandles;

static HTAB *dbs = NULL;
static SetHandles *handles = NULL;
static bool crash_restart = false;
static bool start_failing = false;	/* said once until a start succeeds */
static bool sets_full_said = false;

static void
launcher_exit(int code, Datum arg)
{
	SpinLockAcquire(&launcher->mutex);
	launcher->latch = NULL;
	SpinLockRelease(&launcher->mutex);
}

/*
 * Workers an earlier launcher started (it stopped, this one has no handle
 * on them): stop them, so that each set starts again from nothing.
 */
static void
stop_leftover_workers(void)
{
	for (int waited = 0; waited < STEP_ASIDE_WAIT_MS; waited += 10)
	{
		bool		left = false;

		for (int i = 0; i < launcher->nsets; i++)
		{
			DbWorkers  *set = &launcher->sets[i];

			SpinLockAcquire(&set->mutex);
			for (int k = 0; k < MAX_JOB_WORKERS; k++)
				if (set->job[k].pid != 0)
				{
					kill(set->job[k].pid, SIGTERM);
					left = true;
				}
			if (set->writeback_pid != 0)
			{
				kill(set->writeback_pid, SIGTERM);
				left = true;
			}
			if (!left)
				set->dboid = InvalidOid;
			SpinLockRelease(&set->mutex);
		}
		if (!left)
			return;
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10, PG_WAIT_EXTENSION);
	}
}

/* Read pg_database: which databases docextract may serve. */
static void
scan_databases(void)
{
	HASH_SEQ_STATUS seq;
	LocalDb    *e;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	hash_seq_init(&seq, dbs);
	while ((e = hash_seq_search(&seq)) != NULL)
		e->in_catalog = e->wanted = false;
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		bool		found;

		e = hash_search(dbs, &db->oid, HASH_ENTER, &found);
		if (!found)
		{
			e->absent = e->present = e->had_set = false;
			e->set = -1;
		}
		strlcpy(e->name, NameStr(db->datname), NAMEDATALEN);
		e->in_catalog = true;
		e->wanted = db->datallowconn && !db->datistemplate &&
			db->datconnlimit != DATCONNLIMIT_INVALID_DB &&
			launcher_database_listed(e->name);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	/* Forget dropped databases whose workers are gone. */
	hash_seq_init(&seq, dbs);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (!e->in_catalog && e->set < 0)
			hash_search(dbs, &e->dboid, HASH_REMOVE, NULL);
}

/* CREATE and DROP EXTENSION that committed since the last look. */
static void
take_events(bool *rescan)
{
	ExtensionEvent events[MAX_EVENTS];
	int			n;
	bool		lost;

	SpinLockAcquire(&launcher->mutex);
	n = launcher->nevents;
	memcpy(events, launcher->events, sizeof(ExtensionEvent) * n);
	lost = launcher->events_lost;
	launcher->nevents = 0;
	launcher->events_lost = false;
	*rescan = *rescan || launcher->rescan;
	launcher->rescan = false;
	SpinLockRelease(&launcher->mutex);
	for (int i = 0; i < n; i++)
	{
		LocalDb    *e = hash_search(dbs, &events[i].dboid, HASH_FIND, NULL);

		if (e == NULL)
		{
			*rescan = true;		/* a database created since the last look */
			continue;
		}
		e->absent = !events[i].created;
		e->present = e->present && events[i].created;
	}
	if (lost)
	{
		HASH_SEQ_STATUS seq;
		LocalDb    *e;

		hash_seq_init(&seq, dbs);
		while ((e = hash_seq_search(&seq)) != NULL)
			e->absent = false;	/* look again everywhere */
	}
}

/* Forget the handles of workers that stopped; those we did not stop restart later. */
static void
collect_stopped(void)
{
	TimestampTz later = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RESTART_DELAY_MS);
	pid_t		pid;

	for (int i = 0; i < launcher->nsets; i++)
	{
		SetHandles *h = &handles[i];

		for (int k = 0; k <= MAX_JOB_WORKERS; k++)
		{
			BackgroundWorkerHandle **hp = k < MAX_JOB_WORKERS ? &h->job[k] : &h->writeback;
			BgwHandleStatus st;

			if (*hp == NULL)
				continue;
			st = GetBackgroundWorkerPid(*hp, &pid);
			if (st == BGWH_POSTMASTER_DIED)
				proc_exit(1);
			if (st != BGWH_STOPPED)
				continue;
			pfree(*hp);
			*hp = NULL;
			if (k < MAX_JOB_WORKERS)
				h->job_retry[k] = later;
			else
				h->writeback_retry = later;
		}
	}
}

/* Give database e a free set; -1 if none is free. */
static int
alloc_set(LocalDb *e)
{
	bool		crashed = crash_restart && !e->had_set;

	for (int i = 0; i < launcher->nsets; i++)
	{
		DbWorkers  *set = &launcher->sets[i];

		if (set->dboid != InvalidOid)
			continue;
		SpinLockAcquire(&set->mutex);
		set->present = e->present;
		set->absent = false;
		set->suspects_waiting = false;
		set->suspect_holder = 0;
		set->writeback_pid = 0;
		set->writeback_latch = NULL;
		set->writeback_running_set = false;
		set->writeback_last_owner = InvalidOid;
		memset(set->job, 0, sizeof(set->job));
		for (int k = 0; k < MAX_JOB_WORKERS; k++)
			set->job[k].stopped_uncleanly = crashed;
		set->dboid = e->dboid;
		SpinLockRelease(&set->mutex);
		memset(&handles[i], 0, sizeof(SetHandles));
		e->had_set = true;
		sets_full_said = false;
		return i;
	}
	if (!sets_full_said)
		ereport(WARNING,
				(errmsg("docextract launcher: no room to serve database \"%s\": more databases than max_worker_processes (%d)",
						e->name, max_worker_processes),
				 errhint("Raise max_worker_processes, or list the databases to serve in docextract.databases.")));
	sets_full_said = true;
	return -1;
}

static void
free_set(LocalDb *e)
{
	DbWorkers  *set = &launcher->sets[e->set];

	SpinLockAcquire(&set->mutex);
	set->dboid = InvalidOid;
	SpinLockRelease(&set->mutex);
	e->set = -1;
}

/*
 * What the set's workers found: the extension there, or not.  "Not" holds
 * only if no extension event committed after the worker looked; else the
 * first worker starts again and looks again.
 */
static void
take_report(LocalDb *e)
{
	DbWorkers  *set = &launcher->sets[e->set];

	SpinLockAcquire(&set->mutex);
	if (set->present)
		e->present = true;
	if (set->absent && set->absent_at == launcher_extension_events())
		e->absent = true;
	set->absent = false;
	SpinLockRelease(&set->mutex);
}

static BackgroundWorkerHandle *
start_worker(LocalDb *e, DbWorkerRole role, int index)
{
	BackgroundWorker w;
	BackgroundWorkerHandle *h;
	DbWorkerArgs args = {e->dboid, index, ""};

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "docextract");
	snprintf(w.bgw_function_name, BGW_MAXLEN,
			 role == ROLE_JOB ? "docextract_worker_main" : "docextract_writeback_main");
	if (role == ROLE_JOB)
		snprintf(w.bgw_name, BGW_MAXLEN, "docextract worker %d for database %s", index + 1, e->name);
	else
		snprintf(w.bgw_name, BGW_MAXLEN, "docextract write-back worker for database %s", e->name);
	snprintf(w.bgw_type, BGW_MAXLEN, role == ROLE_JOB ? "docextract worker" : "docextract write-back worker");
	w.bgw_main_arg = Int32GetDatum(e->set);
	strlcpy(args.datname, e->name, NAMEDATALEN);
	StaticAssertStmt(sizeof(DbWorkerArgs) <= BGW_EXTRALEN, "DbWorkerArgs fits bgw_extra");
	memcpy(w.bgw_extra, &args, sizeof(args));
	w.bgw_notify_pid = MyProcPid;
	if (RegisterDynamicBackgroundWorker(&w, &h))
	{
		start_failing = false;
		return h;
	}
	if (!start_failing)
		ereport(WARNING,
				(errmsg("docextract launcher: could not start the %s of database \"%s\": no background worker slot is free (max_worker_processes = %d)",
						role == ROLE_JOB ? psprintf("job worker %d", index + 1) : "write-back worker",
						e->name, max_worker_processes),
				 errdetail("Parallel query, extract_sync and other extensions take slots too; docextract needs docextract.workers + 1 per database, and one for its launcher."),
				 errhint("Raise max_worker_processes, or lower docextract.workers. The launcher tries again every second.")));
	start_failing = true;
	return NULL;
}

static void
stop_worker(BackgroundWorkerHandle *h)
{
	if (h != NULL)
		TerminateBackgroundWorker(h);
}

/* Stop every worker of e's set; true once none is left. */
static bool
stop_all(LocalDb *e)
{
	SetHandles *h = &handles[e->set];
	bool		none = h->writeback == NULL;

	stop_worker(h->writeback);
	for (int k = 0; k < MAX_JOB_WORKERS; k++)
	{
		stop_worker(h->job[k]);
		none = none && h->job[k] == NULL;
	}
	return none;
}

/*
 * Start what e's set lacks.  Before the
 * extension is known to be there, only the first job worker, which looks.
 * first_only: only the first job worker and the write-back worker, so that
 * every database has those before any has more.
 */
static void
keep_workers(LocalDb *e, bool first_only, TimestampTz now)
{
	SetHandles *h = &handles[e->set];
	int			want = e->present ? launcher_job_workers() : 1;

	/* Workers past want retire by themselves once their jobs are stored (worker.c). */
	for (int k = 0; k < want; k++)
	{
		if (h->job[k] == NULL && now >= h->job_retry[k] && (k == 0 || !first_only))
			h->job[k] = start_worker(e, ROLE_JOB, k);
	}
	if (e->present && h->writeback == NULL && now >= h->writeback_retry)
		h->writeback = start_worker(e, ROLE_WRITEBACK, 0);
	else if (!e->present)
		stop_worker(h->writeback);
}

/* Is database dboid held alone by a live backend?  Drops blocks of dead ones. */
static bool
blocked(Oid dboid)
{
	bool		held = false;

	SpinLockAcquire(&launcher->mutex);
	for (int i = 0; i < MAX_BLOCKS; i++)
		if (launcher->blocks[i].pid != 0 && launcher->blocks[i].dboid == dboid)
			held = true;
	SpinLockRelease(&launcher->mutex);
	return held;
}

/* Blocks on databases with no worker left: tell their backends. */
static void
ack_blocks(void)
{
	SpinLockAcquire(&launcher->mutex);
	for (int i = 0; i < MAX_BLOCKS; i++)
	{
		Block	   *b = &launcher->blocks[i];
		LocalDb    *e;

		if (b->pid == 0 || b->acked)
			continue;
		e = hash_search(dbs, &b->dboid, HASH_FIND, NULL);
		b->acked = e == NULL || e->set < 0;
	}
	SpinLockRelease(&launcher->mutex);
}

/* A backend that blocked a database and died without ending it. */
static void
drop_dead_blocks(void)
{
	for (int i = 0; i < MAX_BLOCKS; i++)
	{
		pid_t		pid = launcher->blocks[i].pid;

		if (pid != 0 && BackendPidGetProc(pid) == NULL)
		{
			SpinLockAcquire(&launcher->mutex);
			if (launcher->blocks[i].pid == pid)
				launcher->blocks[i].pid = 0;
			SpinLockRelease(&launcher->mutex);
		}
	}
}

/* Every database: the workers it should have. */
static void
reconcile(void)
{
	HASH_SEQ_STATUS seq;
	LocalDb    *e;
	TimestampTz now = GetCurrentTimestamp();
	int			probes = 0;

	drop_dead_blocks();
	hash_seq_init(&seq, dbs);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->set >= 0)
		{
			take_report(e);
			probes += !e->present && !e->absent;
		}
	for (int pass = 0; pass < 2; pass++)
	{
		hash_seq_init(&seq, dbs);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			bool		keep = e->in_catalog && e->wanted && !e->absent && !blocked(e->dboid);

			if (!keep && e->set >= 0 && stop_all(e))
				free_set(e);
			if (!keep)
				continue;
			if (e->set < 0 && (e->present || probes < PROBES_AT_ONCE) &&
				(e->set = alloc_set(e)) >= 0)
				probes += !e->present;
			if (e->set >= 0)
				keep_workers(e, pass == 0, now);
		}
	}
	ack_blocks();
}

void
docextract_launcher_main(Datum main_arg)
{
	bool		rescan = true;
	TimestampTz next_scan = 0;
	HASHCTL		ctl;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);	/* pg_database only */
	pgstat_report_appname("docextract launcher");
	SpinLockAcquire(&launcher->mutex);
	crash_restart = launcher->crash_restart;
	launcher->crash_restart = false;
	launcher->latch = MyLatch;
	SpinLockRelease(&launcher->mutex);
	before_shmem_exit(launcher_exit, (Datum) 0);
	stop_leftover_workers();
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(LocalDb);
	dbs = hash_create("docextract launcher databases", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	handles = MemoryContextAllocZero(TopMemoryContext, sizeof(SetHandles) * launcher->nsets);
	elog(LOG, "docextract launcher started");

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			rescan = true;		/* docextract.databases may have changed */
		}
		take_events(&rescan);
		if (rescan || GetCurrentTimestamp() >= next_scan)
		{
			scan_databases();
			next_scan = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													Max(docextract_poll_interval_ms, 1000));
			rescan = false;
		}
		collect_stopped();
		reconcile();
		pgstat_report_stat(false);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 RESTART_DELAY_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
