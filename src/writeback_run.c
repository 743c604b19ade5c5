/*
 * writeback_run.c: writing a trigger-form extraction back into its row.
 *
 * A status change only queues the write-back (extractions.writeback_due);
 * the write-back worker (writeback_worker.c) does it later, in a short
 * transaction of its own with other write-backs of the same role, so the
 * users' code it runs (triggers on their tables) never runs inside the
 * transactions that claim jobs or store results.  The UPDATE runs as the
 * role that inserted the row, as a security-restricted operation (as
 * PostgreSQL runs index expressions and maintenance commands): no SET
 * ROLE, no temporary objects, no LISTEN, settings rolled back.  In the
 * worker it is bounded by docextract.writeback_timeout and
 * docextract.writeback_lock_timeout; any error of the users' code fails
 * that write-back only (writeback_error), and a lock it could not get
 * makes it wait for a later try.  State a library keeps in the process
 * (dblink's connections) is no other role's to meet: once a role's code
 * loaded one, the worker ends before another role's batch
 * (writeback_tainted_by).
 */
#include "postgres.h"

#include "job.h"
#include "spi_checked.h"
#include "util.h"
#include "workerset.h"
#include "writeback.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/portal.h"
#include "utils/timeout.h"

#include <link.h>

PG_FUNCTION_INFO_V1(docextract_write_back);
PG_FUNCTION_INFO_V1(docextract_run_write_backs);

/* A primary key has at most INDEX_MAX_KEYS columns: all of them are matched. */
#define MAX_KEY_COLUMNS INDEX_MAX_KEYS

/*
 * BEFORE UPDATE OF status (trigger extractions_write_back): a changed status
 * makes the row's write-back due.  Nothing of the user's runs here.
 */
Datum
docextract_write_back(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	bool		isnull;
	Datum		old_status;
	Datum		new_status;
	int			att;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("docextract.write_back() is a trigger function")));
	/* The 0.1.0 schema fires it AFTER, deferred: it waits for the upgrade. */
	if (!TRIGGER_FIRED_BEFORE(td->tg_event) || !TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return PointerGetDatum(NULL);
	desc = RelationGetDescr(td->tg_relation);
	att = SPI_fnumber(desc, "writeback_due");
	old_status = heap_getattr(td->tg_trigtuple, SPI_fnumber(desc, "status"), desc, &isnull);
	new_status = heap_getattr(td->tg_newtuple, SPI_fnumber(desc, "status"), desc, &isnull);
	if (att <= 0 || strcmp(TextDatumGetCString(old_status), TextDatumGetCString(new_status)) == 0)
		return PointerGetDatum(td->tg_newtuple);
	writeback_wake_at_commit();
	return PointerGetDatum(heap_modify_tuple_by_cols(td->tg_newtuple, desc, 1, &att,
													 (Datum[]) {TimestampTzGetDatum(GetCurrentTimestamp())},
													 (bool[]) {false}));
}

/* UPDATE the row: status, and the data once completed ($1 data, $2 status, $3.. key). */
static char *
update_sql(Oid table, const char *result_col, const char *status_col, Oid *types, int *nargs)
{
	Relation	rel = relation_open(table, AccessShareLock);
	Relation	index;
	StringInfoData sql;

	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the table no longer has a primary key")));
	index = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE %s SET ",
					 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												RelationGetRelationName(rel)));
	if (result_col)
		appendStringInfo(&sql, "%s = CASE WHEN $2 = 'completed' THEN $1 ELSE %s END%s",
						 quote_identifier(result_col), quote_identifier(result_col),
						 status_col ? ", " : "");
	if (status_col)
		appendStringInfo(&sql, "%s = $2", quote_identifier(status_col));
	types[0] = JSONBOID;
	types[1] = TEXTOID;
	*nargs = 2 + index->rd_index->indnkeyatts;
	for (int i = 0; i < *nargs - 2; i++)
	{
		AttrNumber	att = index->rd_index->indkey.values[i];
		Form_pg_attribute a = TupleDescAttr(RelationGetDescr(rel), att - 1);

		appendStringInfo(&sql, " %s %s = $%d::%s", i == 0 ? "WHERE" : "AND",
						 quote_identifier(NameStr(a->attname)), i + 3,
						 format_type_be_qualified(a->atttypid));
		types[i + 2] = TEXTOID;
	}
	index_close(index, AccessShareLock);
	relation_close(rel, AccessShareLock);
	return sql.data;
}

typedef struct WriteBack
{
	Oid			owner;
	Oid			table;
	char	   *result_col;
	char	   *status_col;
	Datum		data;
	bool		data_null;
	char	   *status;
	Datum	   *key;
	int			nkey;
	Datum		due;			/* writeback_due as read: cleared only if unchanged */
	bool		bounded;		/* in the worker: arm the statement timeout */
} WriteBack;

/* What the users' code may change, saved to be put back. */
typedef struct Restricted
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} Restricted;

/*
 * Act as role in a security-restricted operation, with the locked
 * search_path and the lock timeout, as PostgreSQL does for index expressions.
 */
static void
restricted_begin(Restricted *r, Oid role)
{
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u no longer exists", role)));
	GetUserIdAndSecContext(&r->save_userid, &r->save_sec_context);
	SetUserIdAndSecContext(role, r->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	r->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, docextract, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("lock_timeout", psprintf("%d", docextract_writeback_lock_timeout_ms),
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	/* The worker's own statements plan without it (writeback_worker.c); the role's, as configured. */
	(void) set_config_option("enable_seqscan", GetConfigOptionResetString("enable_seqscan"),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

static void
restricted_end(Restricted *r)
{
	AtEOXact_GUC(false, r->save_nestlevel);
	SetUserIdAndSecContext(r->save_userid, r->save_sec_context);
}

/* The update itself, as the role that inserted the row. */
static void
write_back_step(WriteBack *w)
{
	Oid			types[2 + MAX_KEY_COLUMNS];
	Datum		values[2 + MAX_KEY_COLUMNS];
	char		nulls[2 + MAX_KEY_COLUMNS + 1];
	int			nargs;
	char	   *sql;
	Restricted	as_role;

	restricted_begin(&as_role, w->owner);
	sql = update_sql(w->table, w->result_col, w->status_col, types, &nargs);
	if (nargs - 2 != w->nkey)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the table's primary key has %d column(s), the row was remembered by %d",
						nargs - 2, w->nkey)));
	memset(nulls, ' ', sizeof(nulls));
	nulls[nargs] = '\0';
	values[0] = w->data;
	nulls[0] = w->data_null ? 'n' : ' ';
	values[1] = CStringGetTextDatum(w->status);
	for (int i = 0; i < w->nkey; i++)
		values[i + 2] = w->key[i];
	spi_connect();
	if (spi_execute_with_args(sql, nargs, types, values, nulls, false, 0) < 0)
		elog(ERROR, "the write-back statement failed");
	spi_finish();
	/*
	 * The worker's next write-back of the batch runs in this transaction:
	 * cursors the triggers left open go now, as the role (they would
	 * collide with its own), closed as DISCARD ALL closes them.  Not in a
	 * session (run_write_backs()): those are the caller's too.
	 */
	if (w->bounded)
		PortalHashTableDeleteAll();
	restricted_end(&as_role);
}

/*
 * PostgreSQL refuses temporary tables and types in a security-restricted
 * operation, but not functions or operators in pg_temp, which would stay in
 * the worker's session for its later statements to resolve: a write-back
 * that made the session's temporary schema fails, which rolls the schema
 * back with it.
 */
static void
check_no_temp_schema(const char *message)
{
	Oid			temp_ns;
	Oid			temp_toast_ns;

	GetTempNamespaceState(&temp_ns, &temp_toast_ns);
	if (OidIsValid(temp_ns))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s", message)));
}

/* Stop the statement timeout; if it fired after the step ended, forget it. */
static void
disarm(bool bounded)
{
	if (!bounded)
		return;
	disable_timeout(STATEMENT_TIMEOUT, false);
	if (writeback_deadline_timeout >= 0)
		disable_timeout((TimeoutId) writeback_deadline_timeout, false);
	if (get_timeout_indicator(STATEMENT_TIMEOUT, true))
		QueryCancelPending = false;
}

/* Set while a write-back's UPDATE (and the users' triggers) runs. */
bool		writeback_running_user_code = false;

/*
 * Run the step in a subtransaction.  NULL on success, else the error
 * message; *sqlstate its code.  In the worker every ERROR is the users'
 * code's (57014 included: the timeout armed here); in a session a cancel
 * is the session's own and propagates.
 */
static char *
attempt(WriteBack *w, int *sqlstate)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	char	   *volatile err = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (w->bounded)
		{
			enable_timeout_after(STATEMENT_TIMEOUT, docextract_writeback_timeout_ms);
			if (writeback_deadline_timeout >= 0)
				enable_timeout_after((TimeoutId) writeback_deadline_timeout,
									 docextract_writeback_timeout_ms + WRITEBACK_GRACE_MS);
		}
		writeback_running_user_code = true;
		write_back_step(w);
		writeback_running_user_code = false;
		disarm(w->bounded);
		check_no_temp_schema("a write-back may not create temporary objects");
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		writeback_running_user_code = false;
		disarm(w->bounded);
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		/*
		 * A stop is FATAL (ProcessInterrupts); an ERROR of 57P01 is the
		 * users' code's own (RAISE, or a remote server's through dblink),
		 * that write-back's failure like any other.
		 */
		if (edata->elevel > ERROR || (!w->bounded && edata->sqlerrcode == ERRCODE_QUERY_CANCELED))
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		*sqlstate = edata->sqlerrcode;
		err = pstrdup(edata->message ? edata->message : "unknown error");
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return err;
}

/*
 * Read the extraction as it is now: the latest status is what is written.
 * Found by its id alone: a condition on writeback_due would let the planner
 * walk the due rows' partial index instead, whose cost grows with them.
 */
static bool
load_write_back(Datum id, WriteBack *w)
{
	static SPIPlanPtr plan = NULL;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		due_null;
	ArrayType  *key;

	spi_execute_kept(&plan, "SELECT e.owner::oid, e.target_table::oid, e.target_result_column,"
					 "       e.target_status_column, e.status, r.data, e.target_pk,"
					 "       e.writeback_due"
					 "  FROM docextract.extractions e"
					 "  LEFT JOIN docextract.results r ON r.extraction_id = e.id"
					 " WHERE e.id = $1",
					 1, (Oid[]) {UUIDOID}, &id, NULL, false, 1);
	if (SPI_processed != 1)
		return false;
	tup = SPI_copytuple(SPI_tuptable->vals[0]);
	desc = SPI_tuptable->tupdesc;
	w->due = SPI_getbinval(tup, desc, 8, &due_null);
	w->table = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	if (due_null || isnull)
		return false;			/* not due, or not of the trigger form */
	w->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
	w->result_col = SPI_getvalue(tup, desc, 3);
	w->status_col = SPI_getvalue(tup, desc, 4);
	w->status = SPI_getvalue(tup, desc, 5);
	w->data = SPI_getbinval(tup, desc, 6, &w->data_null);
	key = DatumGetArrayTypeP(SPI_getbinval(tup, desc, 7, &isnull));
	deconstruct_array(key, TEXTOID, -1, false, TYPALIGN_INT, &w->key, NULL, &w->nkey);
	return true;
}

/* Is the extraction, still due as read, locked by a session? */
static bool
row_locked(Datum id, Datum due)
{
	static SPIPlanPtr plan = NULL;

	if (spi_execute_kept(&plan, "SELECT 1 FROM docextract.extractions e"
						 " WHERE e.id = $1 AND e.writeback_due = $2",
						 2, (Oid[]) {UUIDOID, TIMESTAMPTZOID}, (Datum[]) {id, due},
						 NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read extraction %s", uuid_text(id));
	return SPI_processed == 1;
}

/*
 * A write-back's statement just locked the extraction's row: if
 * its job is still queued, a claim meanwhile skipped it (SKIP LOCKED), and
 * nothing else would make the job worker look again before its poll.  So
 * the transaction's end (commit or abort) wakes it.
 */
static void
wake_if_queued(int status_column)
{
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *status = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
										  status_column);

		if (status && (strcmp(status, "pending") == 0 || strcmp(status, "retrying") == 0))
		{
			docextract_wake_worker_at_end();
			return;
		}
	}
}

/*
 * Record the outcome, unless the extraction changed since it was read (a
 * newer status is due: the next write-back writes it) or is locked (being
 * changed now): the worker never waits on a row a session holds.
 */
static bool
record_outcome(Datum id, Datum due, const char *err, bool retry)
{
	static SPIPlanPtr plan = NULL;

	/* The row by its id, as an InitPlan: never joined over the whole table. */
	spi_execute_kept(&plan, "UPDATE docextract.extractions e"
					 " SET writeback_due = CASE WHEN $4 THEN clock_timestamp()"
					 "       + $5 * interval '1 millisecond' END,"
					 "     writeback_error = CASE WHEN $4 THEN e.writeback_error ELSE $3 END"
					 " WHERE e.id = (SELECT x.id FROM docextract.extractions x"
					 "               WHERE x.id = $1 AND x.writeback_due = $2 FOR UPDATE SKIP LOCKED)"
					 " RETURNING e.status",
					 5, (Oid[]) {UUIDOID, TIMESTAMPTZOID, TEXTOID, BOOLOID, INT4OID},
					 (Datum[]) {id, due, err ? CStringGetTextDatum(err) : (Datum) 0,
						 BoolGetDatum(retry), Int32GetDatum(WRITEBACK_RETRY_MS)},
					 err ? "     " : "  n  ", false, 0);
	/* run_write_backs() too: it holds the row until its caller commits. */
	wake_if_queued(1);
	if (SPI_processed == 1)
		return true;
	/* Not recorded: changed since (a newer write-back is due), or held. */
	return !row_locked(id, due);
}

/* dl_iterate_phdr: the loader's count of objects ever loaded (it only grows). */
static int
read_adds(struct dl_phdr_info *info, size_t size, void *adds)
{
	if (size < offsetof(struct dl_phdr_info, dlpi_adds) + sizeof(info->dlpi_adds))
		elog(ERROR, "the C library does not count the objects it loads");
	*(unsigned long long *) adds = info->dlpi_adds;
	return 1;
}

static unsigned long long
objects_loaded(void)
{
	unsigned long long adds = 0;

	(void) dl_iterate_phdr(read_adds, &adds);
	return adds;
}

/*
 * The role whose write-back code loaded a library into the worker (dblink,
 * a procedural language, LOAD, a dictionary): what that library keeps
 * across transactions (dblink's open connections, made as that role) would
 * meet the next role's code, so the worker ends before another role's
 * batch (writeback_worker.c) and a new process runs it.
 */
Oid			writeback_tainted_by = InvalidOid;

/* random()'s generator seeded anew, as a new backend's is. */
static void
reseed_random(void)
{
	uint32		seed;

	if (!pg_strong_random(&seed, sizeof(seed)))
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not generate a random seed")));
	(void) DirectFunctionCall1(setseed, Float8GetDatum((double) seed / PG_UINT32_MAX * 2.0 - 1.0));
}

/*
 * Whatever the users' code left in this session goes: session-level
 * advisory locks (PREPARE, cursors WITH HOLD and LISTEN are refused).  A
 * temporary schema cannot be left (check_no_temp_schema); if one were, the
 * process ends rather than run another statement with it.  What lasts
 * until the transaction ends (its locks, large objects) stays for the
 * next write-backs of the batch, all the same role's; its cursors were
 * closed (write_back_step) and SET CONSTRAINTS refused (dbhooks.c).
 */
static void
clean_session(void)
{
	Oid			temp_ns;
	Oid			temp_toast_ns;

	GetTempNamespaceState(&temp_ns, &temp_toast_ns);
	if (OidIsValid(temp_ns))
		ereport(FATAL,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("docextract: a write-back left a temporary schema in the write-back worker's session")));
	LockReleaseSession(USER_LOCKMETHOD);
	/* Not the next role's to read: lastval(), and random() after setseed(). */
	ResetSequenceCaches();
	reseed_random();
}

/*
 * Before the worker runs write-backs' user code: push their due time to
 * lease_until, past the batch's attempts, committed apart.  If that code
 * stops the worker (WRITEBACK_GRACE_MS), its rows wait their turn like any
 * other instead of being run first again; a finished attempt records its
 * own outcome.  leased[i] is false for a row a session holds (leave it for
 * a while) or that is no longer due.  In a transaction.
 *
 * Not a plain "writeback_due IS NOT NULL": the planner would walk the due
 * rows' partial index for it, and read every due row on each lease.
 */
void
writeback_lease(const Datum *ids, int n, TimestampTz lease_until, bool *leased)
{
	static SPIPlanPtr plan = NULL;
	Datum		array = PointerGetDatum(construct_array(unconstify(Datum *, ids), n, UUIDOID,
														UUID_LEN, false, TYPALIGN_CHAR));

	spi_connect();
	if (spi_execute_kept(&plan, "UPDATE docextract.extractions e SET writeback_due = $2"
						 " WHERE e.id = ANY (ARRAY(SELECT x.id FROM docextract.extractions x"
						 "   WHERE x.id = ANY ($1)"
						 "     AND CASE WHEN x.writeback_due IS NULL THEN false ELSE true END"
						 "   FOR UPDATE SKIP LOCKED))"
						 " RETURNING e.id, e.status",
						 2, (Oid[]) {UUIDARRAYOID, TIMESTAMPTZOID},
						 (Datum[]) {array, TimestampTzGetDatum(lease_until)},
						 NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not lease write-backs");
	for (int i = 0; i < n; i++)
	{
		leased[i] = false;
		for (uint64 r = 0; r < SPI_processed && !leased[i]; r++)
		{
			bool		isnull;
			Datum		got = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);

			leased[i] = memcmp(DatumGetPointer(got), DatumGetPointer(ids[i]), UUID_LEN) == 0;
		}
	}
	wake_if_queued(2);
	spi_finish();
}

/*
 * Give back the lease of a write-back that the batch did not get to: due
 * again at due.  A row a session holds keeps its lease (the worker never
 * waits), and one changed since is due already.  In a transaction.
 */
void
writeback_unlease(Datum id, TimestampTz lease_until, TimestampTz due)
{
	static SPIPlanPtr plan = NULL;

	spi_connect();
	spi_execute_kept(&plan, "UPDATE docextract.extractions e SET writeback_due = $3"
					 " WHERE e.id = (SELECT x.id FROM docextract.extractions x"
					 "               WHERE x.id = $1 AND x.writeback_due = $2 FOR UPDATE SKIP LOCKED)"
					 " RETURNING e.status",
					 3, (Oid[]) {UUIDOID, TIMESTAMPTZOID, TIMESTAMPTZOID},
					 (Datum[]) {id, TimestampTzGetDatum(lease_until), TimestampTzGetDatum(due)},
					 NULL, false, 0);
	wake_if_queued(1);
	spi_finish();
}

/*
 * Attempt the write-back of extraction id, in the current transaction;
 * bounded in the worker.  What became of it is left in *a, in the caller's
 * memory, for writeback_record().
 */
void
writeback_attempt(Datum id, bool bounded, WriteBackAttempt *a)
{
	MemoryContext caller = CurrentMemoryContext;
	WriteBack	w;
	char	   *err = NULL;
	int			sqlstate = 0;
	unsigned long long objects = bounded ? objects_loaded() : 0;

	memset(a, 0, sizeof(*a));
	a->id = *DatumGetUUIDP(id);
	spi_connect();
	if ((a->found = load_write_back(id, &w)))
	{
		w.bounded = bounded;
		if (get_rel_name(w.table) == NULL)
			err = pstrdup("the table no longer exists");
		else
			err = attempt(&w, &sqlstate);
		a->due = DatumGetTimestampTz(w.due);
		a->err = err ? MemoryContextStrdup(caller, err) : NULL;
		/*
		 * A lock it could not get, a deadlock, a serialization failure...:
		 * try again later.  Not a cancel: that is writeback_timeout, the
		 * triggers' fault.
		 */
		a->try_later = err && error_is_transient(sqlstate) && sqlstate != ERRCODE_QUERY_CANCELED;
	}
	spi_finish();
	if (bounded)
	{
		clean_session();
		if (a->found && objects_loaded() != objects)
			writeback_tainted_by = w.owner;
	}
}

/*
 * Record an attempt on its extraction.  WRITEBACK_HELD if that could not be
 * done because a session holds the row (the caller leaves it for a while),
 * WRITEBACK_TRY_LATER if it met a lock or the like and is due again later.
 */
WriteBackOutcome
writeback_record(const WriteBackAttempt *a)
{
	Datum		id = UUIDPGetDatum(unconstify(pg_uuid_t *, &a->id));
	bool		recorded;

	if (!a->found)
		return WRITEBACK_DONE;
	spi_connect();
	recorded = record_outcome(id, TimestampTzGetDatum(a->due), a->err, a->try_later);
	spi_finish();
	if (a->err && !a->try_later)
		ereport(WARNING,
				(errmsg("docextract: could not write extraction %s back to its row: %s",
						uuid_text(id), a->err)));
	return !recorded ? WRITEBACK_HELD : a->try_later ? WRITEBACK_TRY_LATER : WRITEBACK_DONE;
}

/* SQL: docextract.run_write_backs(), for installations without the worker. */
Datum
docextract_run_write_backs(PG_FUNCTION_ARGS)
{
	MemoryContext outer = CurrentMemoryContext;
	int			done = 0;
	uint64		n;
	Datum	   *ids;
	bool		isnull;

	/* Users' triggers run here: nothing of theirs may stay in this session. */
	check_no_temp_schema("run_write_backs() runs users' triggers: not in a session that has temporary objects");
	spi_connect();
	spi_execute("SELECT id FROM docextract.extractions WHERE writeback_due <= clock_timestamp()"
				" ORDER BY writeback_due, id", true, 0);
	n = SPI_processed;
	ids = MemoryContextAlloc(outer, sizeof(Datum) * (n + 1));
	for (uint64 i = 0; i < n; i++)
		ids[i] = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
												 1, &isnull), false, UUID_LEN);
	spi_finish();
	for (uint64 i = 0; i < n; i++)
	{
		WriteBackAttempt a;

		writeback_attempt(ids[i], false, &a);
		done += writeback_record(&a) != WRITEBACK_HELD ? 1 : 0;	/* recorded */
	}
	PG_RETURN_INT32(done);
}
