/*
 * workerset.h: workers for every database (launcher.c, workerset.c, dbhooks.c).
 */
#ifndef DOCEXTRACT_WORKERSET_H
#define DOCEXTRACT_WORKERSET_H

#include "postgres.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/uuid.h"

/* What a commit tells the worker, besides "look at the queue". */
typedef enum WorkerSignal
{
	SIGNAL_CANCEL = 0,			/* something was cancelled: check in-flight jobs */
	SIGNAL_DELIVERIES,			/* webhook deliveries were queued */
	NUM_WORKER_SIGNALS
} WorkerSignal;

/* launcher.c, workerset.c, dbhooks.c: workers for every database -------- */

/*
 * The launcher (one static worker) starts, for each database where the
 * extension exists, docextract.workers job workers and one write-back
 * worker, and stops them when the extension or the database goes.  Each
 * served database has a DbWorkers in shared memory: its workers' latches,
 * what committing backends tell them, and their crash state.
 */
#define MAX_JOB_WORKERS 16

typedef struct JobWorkerSlot
{
	pid_t		pid;			/* 0 while none runs */
	Latch	   *latch;
	bool		wants_work;		/* asleep with room for more jobs */
	int			inflight;		/* jobs in flight (crashguard: suspects run alone) */
	bool		stopped_uncleanly;	/* its last worker did not stop on request */
} JobWorkerSlot;

typedef struct DbWorkers
{
	Oid			dboid;			/* InvalidOid: a free slot */
	slock_t		mutex;
	bool		present;		/* a worker found the extension here */
	bool		absent;			/* a worker found no extension here ... */
	uint64		absent_at;		/* ... at this count of extension events */
	pg_atomic_uint32 next_wake;	/* round robin among idle job workers */
	/* Bumped at each commit that signalled WorkerSignal i. */
	pg_atomic_uint64 generation[NUM_WORKER_SIGNALS];
	JobWorkerSlot job[MAX_JOB_WORKERS];
	/* The write-back worker (writeback_worker.c). */
	pid_t		writeback_pid;
	Latch	   *writeback_latch;
	/* The write-back whose user code runs now, and whether it overran. */
	volatile bool writeback_running_set;
	pg_uuid_t	writeback_running;
	/* Whose batch it leased last: a restarted worker goes on after it. */
	Oid			writeback_last_owner;
	/* Orphans of a crash run one at a time across the workers (crashguard.c). */
	bool		suspects_waiting;
	pid_t		suspect_holder;
} DbWorkers;

/* The roles of a per-database worker (bgw_extra). */
typedef enum DbWorkerRole
{
	ROLE_JOB,
	ROLE_WRITEBACK
} DbWorkerRole;

/* What the launcher hands a per-database worker (bgw_extra). */
typedef struct DbWorkerArgs
{
	Oid			dboid;
	int			index;			/* a job worker's, in its set */
	char		datname[NAMEDATALEN];
} DbWorkerArgs;

extern int	docextract_workers;
extern char *docextract_databases;
extern char *docextract_database;	/* deprecated alias of docextract.databases */

/* Set in a per-database worker: its database's set and its index in it. */
extern DbWorkers *MyDbWorkers;
extern int	MyJobWorkerIndex;

extern Size launcher_shmem_size(void);
extern void launcher_shmem_init(bool crash_restart);
extern void launcher_register(void);
extern void launcher_define_settings(void);
extern int	launcher_job_workers(void);
extern bool launcher_database_listed(const char *datname);
extern void launcher_notify_extension(Oid dboid, bool created);
extern void launcher_notify_databases(void);
extern bool launcher_step_aside(Oid dboid);
extern void launcher_step_aside_end(void);
extern bool launcher_has_shmem(void);
extern DbWorkers *launcher_set_at(int index);
extern void launcher_wake(void);
extern uint64 launcher_extension_events(void);
extern uint64 launcher_extension_events_seen;	/* a worker's, before it looked */

extern DbWorkers *workerset_find(Oid dboid);
extern const char *workerset_connect(Datum main_arg, DbWorkerRole role);
extern void workerset_report_extension(bool present);
extern void workerset_idle(bool wants_work, int inflight);
extern void workerset_wake_sibling(void);
extern void workerset_wake_all(void);
extern void docextract_wake_worker_at_commit(void);
extern void docextract_wake_worker_at_end(void);
extern void docextract_signal_at_commit(WorkerSignal signal);
extern uint64 docextract_signal_generation(WorkerSignal signal);
extern void writeback_wake_at_commit(void);

extern void dbhooks_install(void);
extern void docextract_warn_unserved(void);

#endif							/* DOCEXTRACT_WORKERSET_H */
