/*
 * writeback_worker.c: the process that does the trigger form's write-backs.
 *
 * Writing a result back runs the users' code (triggers on their tables), so
 * it has a background worker of its own: the worker that calls models never
 * runs users' code, and a trigger that sleeps or waits on a lock slows only
 * write-backs.  Among those, owners take turns (round robin), a batch of
 * at most WRITEBACK_BATCH write-backs each, cut short after
 * WRITEBACK_BATCH_MS: so a role whose triggers are slow slows only its own.
 * A batch is leased in one short transaction and run in another (each
 * write-back in a subtransaction of its own, writeback_run.c): two commits
 * for the batch, not two for each row.  Both first take the extension's
 * tables without waiting, as the job workers do, and step aside for DDL on
 * the schema (steplock.c); a batch leased before DDL took the schema is
 * run first once it is free.
 */
#include "postgres.h"

#include "privileged.h"
#include "settings.h"
#include "spi_checked.h"
#include "util.h"
#include "worker.h"
#include "workerset.h"
#include "writeback.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/timeout.h"

PGDLLEXPORT void docextract_writeback_main(Datum main_arg);

int			docextract_writeback_timeout_ms = 5000;
int			docextract_writeback_lock_timeout_ms = 1000;

/* Batches run between two looks at the latch and the settings. */
#define BATCHES_PER_ROUND 20

/*
 * A batch: one owner's due write-backs, leased and run together.  Each
 * write-back's subtransaction takes an xid, and the users' triggers may
 * take more: a batch ends before its transaction holds half the
 * PGPROC_MAX_CACHED_SUBXIDS a backend advertises, past which every
 * snapshot in the cluster slows down.
 */
#define WRITEBACK_BATCH 16
/* A batch takes no new write-back after this long: the next owner's turn. */
#define WRITEBACK_BATCH_MS 100

/*
 * The batch leased and not yet run.  It outlives the transaction that
 * leased it: a batch whose run stepped aside for DDL is run first when the
 * schema is free again (its leases keep it from being picked meanwhile).
 */
typedef struct Batch
{
	int			n;				/* write-backs leased; 0: none waits */
	TimestampTz lease_until;	/* their writeback_due while leased */
	pg_uuid_t	ids[WRITEBACK_BATCH];
	TimestampTz due[WRITEBACK_BATCH];	/* as it was before the lease */
} Batch;

static Batch batch;

void
writeback_define_settings(void)
{
	DefineCustomIntVariable("docextract.writeback_timeout",
							"Longest one write-back of the trigger form (the UPDATE and the triggers it fires) may run.",
							NULL, &docextract_writeback_timeout_ms, 5000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.writeback_lock_timeout",
							"Longest a write-back waits for a lock; then it is tried again later.",
							NULL, &docextract_writeback_lock_timeout_ms, 1000, 1, 600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
}

/*
 * The next due write-backs, owners in turn: the oldest (a batch) of the
 * first owner after last_owner that has one (else of the first owner), except those
 * whose outcome could not be recorded lately ($2).  Each step is a short
 * walk of extractions_writeback_owner: no sort of every due row, which
 * made draining n due write-backs cost n squared.
 */
static const char *pick_sql =
"SELECT e.id, e.owner::oid, e.writeback_due FROM docextract.extractions e"
" WHERE e.owner::oid = coalesce("
"         (SELECT o.owner::oid FROM docextract.extractions o"
"           WHERE o.writeback_due <= clock_timestamp() AND o.owner::oid > $1"
"             AND o.id <> ALL ($2::uuid[]) ORDER BY o.owner::oid LIMIT 1),"
"         (SELECT o.owner::oid FROM docextract.extractions o"
"           WHERE o.writeback_due <= clock_timestamp() AND o.id <> ALL ($2::uuid[])"
"           ORDER BY o.owner::oid LIMIT 1))"
"   AND e.writeback_due <= clock_timestamp() AND e.id <> ALL ($2::uuid[])"
" ORDER BY e.writeback_due LIMIT " CppAsString2(WRITEBACK_BATCH);

/*
 * Write-backs whose extraction row was locked, left alone for
 * WRITEBACK_RETRY_MS: by a session when the outcome was to be recorded
 * (cancel_extraction or approve in an open transaction), so as not to run
 * their triggers over and over; or when they were to be leased (nothing ran
 * yet).  The latter are forgotten when a commit changed statuses (it sets
 * our latch): most often the lock was a job worker's, whose commit made
 * the row due again.
 */
typedef struct Skipped
{
	pg_uuid_t	id;
	TimestampTz until;
	bool		at_lease;		/* not leased: forgotten at the next wake */
} Skipped;

static List *skipped = NIL;
static TimestampTz skipped_until_first = 0;	/* when the first skip ends */

static void
skip_for_a_while(Datum id, bool at_lease)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	Skipped    *s = palloc(sizeof(Skipped));

	s->id = *DatumGetUUIDP(id);
	s->until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), WRITEBACK_RETRY_MS);
	s->at_lease = at_lease;
	skipped = lappend(skipped, s);
	MemoryContextSwitchTo(old);
}

/* Woken by a commit that changed statuses: try the rows not leased again. */
static void
forget_lease_skips(void)
{
	ListCell   *lc;

	foreach(lc, skipped)
	{
		Skipped    *s = lfirst(lc);

		if (!s->at_lease)
			continue;
		skipped = foreach_delete_current(skipped, lc);
		pfree(s);
	}
}

/*
 * The ids still skipped, as a uuid[] text, and when the first of them is
 * no longer (skipped_until_first); expired ones forgotten.
 */
static char *
skipped_ids(void)
{
	StringInfoData list;
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	initStringInfo(&list);
	appendStringInfoChar(&list, '{');
	skipped_until_first = 0;
	foreach(lc, skipped)
	{
		Skipped    *s = lfirst(lc);

		if (s->until <= now)
		{
			skipped = foreach_delete_current(skipped, lc);
			pfree(s);
			continue;
		}
		if (skipped_until_first == 0 || s->until < skipped_until_first)
			skipped_until_first = s->until;
		appendStringInfo(&list, "%s%s", list.len > 1 ? "," : "",
						 uuid_text(UUIDPGetDatum(&s->id)));
	}
	appendStringInfoChar(&list, '}');
	return list.data;
}

/* How long until the first skipped write-back may be picked again. */
static long
skip_left_ms(void)
{
	long		secs;
	int			usecs;

	if (skipped_until_first == 0)
		return WRITEBACK_RETRY_MS;
	TimestampDifference(GetCurrentTimestamp(), skipped_until_first, &secs, &usecs);
	return Max(secs * 1000 + usecs / 1000, 10);
}

static const char *next_due_sql =
"SELECT greatest(0, ceil(1000 * extract(epoch FROM"
"  min(writeback_due) - clock_timestamp())))::bigint"
" FROM docextract.extractions WHERE writeback_due IS NOT NULL";

/*
 * Pick the next owner's due write-backs into b (not leased yet); their
 * count.  None due: *next_ms brought forward to the next.
 */
static int
pick(Batch *b, Oid *last_owner, long *next_ms)
{
	static SPIPlanPtr pick_plan = NULL;
	static SPIPlanPtr next_plan = NULL;
	char	   *skip = skipped_ids();
	bool		isnull;
	int			n;

	spi_connect();
	if (spi_execute_kept(&pick_plan, pick_sql, 2, (Oid[]) {OIDOID, TEXTOID},
						 (Datum[]) {ObjectIdGetDatum(*last_owner), CStringGetTextDatum(skip)},
						 NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for due write-backs");
	n = (int) Min(SPI_processed, WRITEBACK_BATCH);
	for (int i = 0; i < n; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		b->ids[i] = *DatumGetUUIDP(SPI_getbinval(row, desc, 1, &isnull));
		*last_owner = DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull));
		b->due[i] = DatumGetTimestampTz(SPI_getbinval(row, desc, 3, &isnull));
	}
	if (n == 0 && spi_execute_kept(&next_plan, next_due_sql, 0, NULL, NULL, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		Datum		ms = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		/* Due now, yet not picked: skipped for a while.  No busy loop. */
		long		wait = isnull ? *next_ms : DatumGetInt64(ms) == 0 ? skip_left_ms()
			: Max(DatumGetInt64(ms), 10);

		*next_ms = Min(*next_ms, wait);
	}
	spi_finish();
	return n;
}

int			writeback_deadline_timeout = -1;

/* Past the grace after writeback_timeout: stop, as SIGTERM would. */
static void
writeback_deadline_reached(void)
{
	MyDbWorkers->writeback_running_set = true;	/* a byte: safe here */
	ProcDiePending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

/*
 * Which write-back's user code runs now, in shared memory so that it
 * outlives a stop; the deadline's handler marks it as the reason.
 */
static void
set_running(Datum id)
{
	SpinLockAcquire(&MyDbWorkers->mutex);
	MyDbWorkers->writeback_running_set = false;
	if (id != (Datum) 0)
		MyDbWorkers->writeback_running = *DatumGetUUIDP(id);
	SpinLockRelease(&MyDbWorkers->mutex);
}

/*
 * At start: a write-back that was running when the previous worker stopped
 * stopped it (its triggers ignored the cancel).  Say so on its row; its
 * lease keeps it from running again at once, and the other rows of its
 * batch (rolled back with it) are due again now.
 */
static void
record_stopped_write_back(void)
{
	pg_uuid_t	id;
	bool		was_set;

	SpinLockAcquire(&MyDbWorkers->mutex);
	was_set = MyDbWorkers->writeback_running_set;
	id = MyDbWorkers->writeback_running;
	MyDbWorkers->writeback_running_set = false;
	SpinLockRelease(&MyDbWorkers->mutex);
	if (!was_set)
		return;
	StartTransactionCommand();
	steplock_wait();			/* DDL on the schema: after it (steplock.c) */
	PushActiveSnapshot(GetTransactionSnapshot());
	if (docextract_schema_ready() && SPI_connect() == SPI_OK_CONNECT)
	{
		spi_execute_with_args("UPDATE docextract.extractions SET writeback_error ="
							  " 'the write-back did not finish: its triggers ran past"
							  " docextract.writeback_timeout and ignored the cancel, so the"
							  " write-back worker was stopped' WHERE id = $1",
							  1, (Oid[]) {UUIDOID}, (Datum[]) {UUIDPGetDatum(&id)}, NULL, false, 0);
		/* The rest of its batch (the same lease) need not wait for theirs to run out. */
		spi_execute_with_args("UPDATE docextract.extractions o SET writeback_due = clock_timestamp()"
							  " WHERE o.id = ANY (ARRAY(SELECT x.id"
							  "   FROM docextract.extractions c, docextract.extractions x"
							  "  WHERE c.id = $1 AND x.writeback_due = c.writeback_due"
							  "    AND x.owner = c.owner AND x.id <> c.id FOR UPDATE OF x SKIP LOCKED))",
							  1, (Oid[]) {UUIDOID}, (Datum[]) {UUIDPGetDatum(&id)}, NULL, false, 0);
		spi_finish();
		/* Those rows were locked: a claim meanwhile skipped any still queued. */
		docextract_wake_worker_at_end();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	ereport(WARNING,
			(errmsg("docextract: the write-back of extraction %s stopped the write-back worker: its triggers ignored docextract.writeback_timeout",
					uuid_text(UUIDPGetDatum(&id)))));
}

/*
 * A transaction for one step, holding the extension's tables as the job
 * workers do (steplock.c: taken without waiting, all before any row is
 * touched, so that DROP EXTENSION and this worker never wait on each other
 * in a cycle).  False if DDL holds or waits for one of them: then nothing
 * was done, and the transaction is over.
 */
static bool
step_begin(long *next_ms)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (steplock_begin())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		return true;
	}
	CommitTransactionCommand();
	*next_ms = Min(*next_ms, steplock_retry_ms());
	return false;
}

static void
step_end(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * A role's write-back code loaded a library into this process
 * (writeback_tainted_by) and another role's batch is next: end here, so
 * that what the library keeps (dblink's connections, made as that role)
 * meets no other role's code.  The launcher starts a new worker, which goes
 * on after that role (writeback_last_owner).
 */
static void
exit_before_other_role(void)
{
	char	   *role = GetUserNameFromId(writeback_tainted_by, true);

	ereport(LOG,
			(errmsg("docextract write-back worker: the write-back code of role \"%s\" loaded a library into this process; it exits before another role's write-backs run",
					role ? role : "(dropped)")));
	AbortCurrentTransaction();
	proc_exit(0);
}

/*
 * Pick the next owner's due write-backs and lease them (batch), in a
 * transaction of their own.  True if any was due.
 */
static bool
pick_and_lease(Oid *last_owner, long *next_ms)
{
	Datum		ids[WRITEBACK_BATCH];
	bool		leased[WRITEBACK_BATCH];
	int			n = 0;
	int			kept = 0;

	if (!step_begin(next_ms))
		return false;
	if (docextract_schema_ready())
		n = pick(&batch, last_owner, next_ms);
	if (n > 0 && OidIsValid(writeback_tainted_by) && *last_owner != writeback_tainted_by)
		exit_before_other_role(); /* nothing leased: the next process picks it */
	if (n > 0)
	{
		batch.lease_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														docextract_writeback_timeout_ms + 60 * 1000);
		for (int i = 0; i < n; i++)
			ids[i] = UUIDPGetDatum(&batch.ids[i]);
		writeback_lease(ids, n, batch.lease_until, leased);
		for (int i = 0; i < n; i++)
		{
			if (!leased[i])
			{
				skip_for_a_while(ids[i], true);
				continue;
			}
			batch.ids[kept] = batch.ids[i];
			batch.due[kept++] = batch.due[i];
		}
	}
	step_end();
	batch.n = kept;				/* only once the leases are committed */
	if (n > 0)
	{
		SpinLockAcquire(&MyDbWorkers->mutex);
		MyDbWorkers->writeback_last_owner = *last_owner;
		SpinLockRelease(&MyDbWorkers->mutex);
	}
	return n > 0;
}

/*
 * The leases of the batch's write-backs from first on, which it did not
 * run, given back: due again as before, or after WRITEBACK_RETRY_MS if the
 * batch met a lock.
 */
static void
give_back(const Batch *b, int first, bool met_lock)
{
	TimestampTz retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), WRITEBACK_RETRY_MS);

	for (int i = first; i < b->n; i++)
		writeback_unlease(UUIDPGetDatum(&b->ids[i]), b->lease_until,
						  met_lock ? retry_at : b->due[i]);
}

/* May the batch take its next write-back, after one that ended so? */
static bool
batch_goes_on(TimestampTz start, const WriteBackAttempt *last)
{
	return !last->try_later &&
		!TimestampDifferenceExceeds(start, GetCurrentTimestamp(), WRITEBACK_BATCH_MS) &&
		!MyProc->subxidStatus.overflowed &&
		MyProc->subxidStatus.count < PGPROC_MAX_CACHED_SUBXIDS / 2;
}

/*
 * Run the leased batch in a transaction of its own, unless DDL holds the
 * schema.  Cut short after WRITEBACK_BATCH_MS (the next owner's turn),
 * with half the subtransactions a backend advertises, or when a write-back
 * met a lock (the next ones would likely wait for it too).  The outcomes
 * are recorded at the end: the extractions' rows are locked only then,
 * not while the next write-backs run.  False if it stepped aside.
 */
static bool
run_leased(long *next_ms)
{
	Batch		b = batch;
	TimestampTz start = GetCurrentTimestamp();
	WriteBackAttempt tried[WRITEBACK_BATCH];
	int			ran = 0;

	if (!step_begin(next_ms))
		return false;			/* still leased: tried again first */
	batch.n = 0;				/* if it fails, the leases run out */
	if (docextract_schema_ready())	/* not dropped meanwhile */
	{
		while (ran < b.n && (ran == 0 || batch_goes_on(start, &tried[ran - 1])))
		{
			Datum		id = UUIDPGetDatum(&b.ids[ran]);

			set_running(id);
			writeback_attempt(id, true, &tried[ran++]);
			set_running((Datum) 0);
		}
		for (int i = 0; i < ran; i++)
			if (writeback_record(&tried[i]) == WRITEBACK_HELD)
				skip_for_a_while(UUIDPGetDatum(&tried[i].id), false);
		give_back(&b, ran, tried[ran - 1].try_later);
	}
	step_end();
	return true;
}

/*
 * One turn: a batch picked and leased in a transaction, run in another.
 * True if any was due and the turn did not step aside.
 */
static bool
take_turn(Oid *last_owner, long *next_ms)
{
	volatile bool found = false;

	pgstat_report_activity(STATE_RUNNING, "docextract: writing results back");
	PG_TRY();
	{
		if (batch.n == 0)
			found = pick_and_lease(last_owner, next_ms);
		if (batch.n > 0)
			found = run_leased(next_ms);
	}
	PG_CATCH();
	{
		set_running((Datum) 0);
		batch.n = 0;
		/* Our own statements failed: say so, and look again a little later. */
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		found = false;
		*next_ms = Min(*next_ms, WRITEBACK_RETRY_MS);
	}
	PG_END_TRY();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return found;
}

void
docextract_writeback_main(Datum main_arg)
{
	MemoryContext loop_cxt;
	Oid			last_owner = InvalidOid;
	const char *datname;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	datname = workerset_connect(main_arg, ROLE_WRITEBACK);	/* workerset.c */
	writeback_deadline_timeout = (int) RegisterTimeout(USER_TIMEOUT, writeback_deadline_reached);
	pgstat_report_appname("docextract write-back worker");
	SetConfigOption("search_path", "pg_catalog, docextract, pg_temp", PGC_SUSET, PGC_S_SESSION);
	/*
	 * Ours to load, so that a user's PL/pgSQL trigger does not load it
	 * first; JIT off, which would load its library for users' statements.
	 */
	load_file("$libdir/plpgsql", false);
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_SESSION);
	/*
	 * Its own statements' kept plans, made while the tables may be small,
	 * must not read them whole as they grow (worker.c says more); a
	 * role's write-back runs with the configured value (writeback_run.c).
	 */
	SetConfigOption("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION);
	SpinLockAcquire(&MyDbWorkers->mutex);
	last_owner = MyDbWorkers->writeback_last_owner;
	SpinLockRelease(&MyDbWorkers->mutex);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "docextract write-back loop",
									 ALLOCSET_DEFAULT_SIZES);
	record_stopped_write_back();
	elog(LOG, "docextract write-back worker started for database \"%s\"", datname);

	for (;;)
	{
		long		next_ms = docextract_poll_interval_ms;
		int			done = 0;

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* New settings (writeback_timeout...) apply from the next batch on. */
		while (done < BATCHES_PER_ROUND && !ConfigReloadPending &&
			   take_turn(&last_owner, &next_ms))
		{
			done++;
			MemoryContextReset(loop_cxt);
			CHECK_FOR_INTERRUPTS();
		}
		if (done == BATCHES_PER_ROUND || ConfigReloadPending)
			next_ms = 0;		/* more may be due */
		if (WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					  next_ms, PG_WAIT_EXTENSION) & WL_LATCH_SET)
			forget_lease_skips();
		ResetLatch(MyLatch);
	}
}
