/*
 * workerset.c: a database's workers, as the workers and the backends see them.
 *
 * Each database the launcher serves has a DbWorkers in shared memory
 * (launcher.c allocates it).  Its workers publish their latches there; a
 * committing backend finds the set of its own database (MyDatabaseId) and
 * wakes one idle job worker for new work, every job worker for a cancel,
 * the first one (which delivers webhooks) for deliveries, and the
 * write-back worker for write-backs.
 */
#include "postgres.h"

#include "workerset.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"

DbWorkers  *MyDbWorkers = NULL;
int			MyJobWorkerIndex = -1;

static bool wake_pending = false;		/* anything below */
static bool work_pending = false;		/* new work for any job worker */
static bool writeback_wake_pending = false;
static bool signal_pending[NUM_WORKER_SIGNALS];

/* The worker's own role, for its exit. */
static DbWorkerRole my_role;

/* -- the workers ----------------------------------------------------------- */

static void
workerset_detach(int code, Datum arg)
{
	SpinLockAcquire(&MyDbWorkers->mutex);
	if (my_role == ROLE_WRITEBACK && MyDbWorkers->writeback_pid == MyProcPid)
	{
		MyDbWorkers->writeback_pid = 0;
		MyDbWorkers->writeback_latch = NULL;
	}
	else if (my_role == ROLE_JOB && MyDbWorkers->job[MyJobWorkerIndex].pid == MyProcPid)
	{
		MyDbWorkers->job[MyJobWorkerIndex].pid = 0;
		MyDbWorkers->job[MyJobWorkerIndex].latch = NULL;
		MyDbWorkers->job[MyJobWorkerIndex].wants_work = false;
		MyDbWorkers->job[MyJobWorkerIndex].inflight = 0;
	}
	SpinLockRelease(&MyDbWorkers->mutex);
}

/*
 * A per-database worker: connect to its database and take its place in
 * that database's set (main_arg: the set's index; bgw_extra: a
 * DbWorkerArgs).  A set that no longer belongs to this database, or a place
 * taken (by a worker an earlier launcher started), means the launcher no
 * longer wants this worker: leave.  Returns the database's name, for messages.
 */
const char *
workerset_connect(Datum main_arg, DbWorkerRole role)
{
	static DbWorkerArgs args;
	DbWorkers  *set = launcher_set_at(DatumGetInt32(main_arg));
	bool		stay;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	BackgroundWorkerInitializeConnectionByOid(args.dboid, InvalidOid, 0);
	my_role = role;
	MyJobWorkerIndex = role == ROLE_JOB ? args.index : -1;
	SpinLockAcquire(&set->mutex);
	stay = set->dboid == MyDatabaseId &&
		(role == ROLE_WRITEBACK ? set->writeback_pid : set->job[args.index].pid) == 0;
	if (stay && role == ROLE_WRITEBACK)
	{
		set->writeback_pid = MyProcPid;
		set->writeback_latch = MyLatch;
	}
	else if (stay)
	{
		set->job[MyJobWorkerIndex].pid = MyProcPid;
		set->job[MyJobWorkerIndex].latch = MyLatch;
	}
	SpinLockRelease(&set->mutex);
	if (!stay)
		proc_exit(0);
	MyDbWorkers = set;
	before_shmem_exit(workerset_detach, (Datum) 0);
	return args.datname;
}

/*
 * Whether the extension exists here, as this worker found it.  "Absent"
 * counts only if no CREATE EXTENSION committed since the worker looked
 * (events_before: the count of extension events read before its snapshot).
 */
void
workerset_report_extension(bool present)
{
	SpinLockAcquire(&MyDbWorkers->mutex);
	MyDbWorkers->present = present;
	MyDbWorkers->absent = !present;
	MyDbWorkers->absent_at = launcher_extension_events_seen;
	SpinLockRelease(&MyDbWorkers->mutex);
	launcher_wake();
}

/* Before the job worker sleeps: whether it has room, and what it runs. */
void
workerset_idle(bool wants_work, int inflight)
{
	MyDbWorkers->job[MyJobWorkerIndex].inflight = inflight;
	MyDbWorkers->job[MyJobWorkerIndex].wants_work = wants_work;
}

/* -- waking ---------------------------------------------------------------- */

/*
 * One job worker of set (not skip), in turn, preferring one that sleeps
 * with room; with skip < 0, another one if none does, so that a worker
 * about to sleep looks once more.
 */
static void
wake_one(DbWorkers *set, int skip)
{
	uint32		start = pg_atomic_fetch_add_u32(&set->next_wake, 1);
	Latch	   *latches[MAX_JOB_WORKERS];
	bool		idle[MAX_JOB_WORKERS];
	int			n = 0;

	SpinLockAcquire(&set->mutex);
	for (int k = 0; k < MAX_JOB_WORKERS; k++)
		if (set->job[k].latch != NULL && k != skip)
		{
			latches[n] = set->job[k].latch;
			idle[n++] = set->job[k].wants_work;
		}
	SpinLockRelease(&set->mutex);
	for (int i = 0; i < n; i++)
		if (idle[(start + i) % n])
		{
			SetLatch(latches[(start + i) % n]);
			return;
		}
	if (skip < 0 && n > 0)
		SetLatch(latches[start % n]);
}

static void
wake_all(DbWorkers *set)
{
	Latch	   *latches[MAX_JOB_WORKERS];
	int			n = 0;

	SpinLockAcquire(&set->mutex);
	for (int i = 0; i < MAX_JOB_WORKERS; i++)
		if (set->job[i].latch)
			latches[n++] = set->job[i].latch;
	SpinLockRelease(&set->mutex);
	for (int i = 0; i < n; i++)
		SetLatch(latches[i]);
}

/* A job worker that claimed a full batch: a sibling with room looks too. */
void
workerset_wake_sibling(void)
{
	wake_one(MyDbWorkers, MyJobWorkerIndex);
}

void
workerset_wake_all(void)
{
	wake_all(MyDbWorkers);
}

static void
wake_first(DbWorkers *set)
{
	Latch	   *latch;

	SpinLockAcquire(&set->mutex);
	latch = set->job[0].latch;
	SpinLockRelease(&set->mutex);
	if (latch)
		SetLatch(latch);
}

static void
wake_writeback(DbWorkers *set)
{
	Latch	   *latch;

	SpinLockAcquire(&set->mutex);
	latch = set->writeback_latch;
	SpinLockRelease(&set->mutex);
	if (latch)
		SetLatch(latch);
}

/* At commit: wake whom the transaction made work for; at abort, one job worker. */
static void
wake_xact_callback(XactEvent event, void *arg)
{
	DbWorkers  *set;

	if (!wake_pending && !writeback_wake_pending)
		return;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		/*
		 * Rows it locked are free again (a cancel or an approval rolled
		 * back): a claim meanwhile skipped any still queued.  Not from a job
		 * worker, which would only wake itself.
		 */
		if (wake_pending && MyJobWorkerIndex < 0 && (set = workerset_find(MyDatabaseId)) != NULL)
			wake_one(set, -1);
		wake_pending = work_pending = writeback_wake_pending = false;
		memset(signal_pending, 0, sizeof(signal_pending));
		return;
	}
	if (event == XACT_EVENT_PREPARE)
	{
		/* Nothing is visible yet: COMMIT PREPARED wakes them (dbhooks.c). */
		wake_pending = work_pending = writeback_wake_pending = false;
		memset(signal_pending, 0, sizeof(signal_pending));
		return;
	}
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_PARALLEL_COMMIT)
		return;
	set = workerset_find(MyDatabaseId);
	if (set && writeback_wake_pending)
		wake_writeback(set);
	if (set && wake_pending)
	{
		for (int i = 0; i < NUM_WORKER_SIGNALS; i++)
			if (signal_pending[i])
				pg_atomic_fetch_add_u64(&set->generation[i], 1);
		if (signal_pending[SIGNAL_CANCEL])
			wake_all(set);		/* any of them may run what was cancelled */
		else if (work_pending)
			wake_one(set, -1);
		if (signal_pending[SIGNAL_DELIVERIES])
			wake_first(set);	/* the one that delivers webhooks */
	}
	wake_pending = work_pending = writeback_wake_pending = false;
	memset(signal_pending, 0, sizeof(signal_pending));
}

static void
register_callback(void)
{
	static bool registered = false;

	if (!registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		registered = true;
	}
}

/*
 * Called by anything that makes work for the job workers.  Without the
 * preload there is no shared memory and no worker; the work waits in the
 * table.
 */
static void
wake_at_commit(void)
{
	if (!launcher_has_shmem())
		return;
	register_callback();
	wake_pending = true;
}

/*
 * The transaction locked a queued job's row: wake a job worker when it ends,
 * whether it commits or aborts (a claim meanwhile skipped the row).
 */
void
docextract_wake_worker_at_end(void)
{
	wake_at_commit();
	work_pending = true;
}

/* The transaction queued work: the same, and a warning if no worker runs. */
void
docextract_wake_worker_at_commit(void)
{
	docextract_warn_unserved();	/* dbhooks.c: nothing would process the work */
	docextract_wake_worker_at_end();
}

/*
 * Wake the workers at commit with something particular to look at, so that
 * they look only when told: a cancel (their in-flight jobs), or new webhook
 * deliveries.
 */
void
docextract_signal_at_commit(WorkerSignal signal)
{
	wake_at_commit();
	signal_pending[signal] = true;
}

/* At commit of a status change of the trigger form: wake the write-back worker. */
void
writeback_wake_at_commit(void)
{
	if (!launcher_has_shmem())
		return;
	register_callback();
	writeback_wake_pending = true;
}

/* In a job worker: how many commits signalled this, in its database. */
uint64
docextract_signal_generation(WorkerSignal signal)
{
	return pg_atomic_read_u64(&MyDbWorkers->generation[signal]);
}

/* SQL: docextract.deliveries_queued(), called by the outbox trigger. */
PG_FUNCTION_INFO_V1(docextract_deliveries_queued);
Datum
docextract_deliveries_queued(PG_FUNCTION_ARGS)
{
	docextract_signal_at_commit(SIGNAL_DELIVERIES);
	PG_RETURN_VOID();
}
