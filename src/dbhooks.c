/*
 * dbhooks.c: what every backend tells the launcher.
 *
 * The library is preloaded, so its ProcessUtility hook runs in every
 * backend.  At commit of CREATE or DROP EXTENSION docextract it tells the
 * launcher, which starts or stops the database's workers; at commit of
 * CREATE, DROP or ALTER DATABASE it has the launcher read pg_database
 * again.  Before a command that needs a database alone (DROP DATABASE,
 * CREATE DATABASE with it as template, ALTER DATABASE RENAME or SET
 * TABLESPACE; PostgreSQL waits only 5 s for other sessions to leave, and
 * tells only autovacuum), it has the launcher stop that database's workers
 * and start none there until its transaction ends.  It wakes the workers
 * at COMMIT PREPARED and ROLLBACK PREPARED.  And it refuses SET
 * CONSTRAINTS to the users' triggers a write-back runs (writeback_run.c).
 */
#include "postgres.h"

#include "workerset.h"
#include "writeback.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/acl.h"

static ProcessUtility_hook_type prev_utility_hook = NULL;

/* What this transaction did, to tell at its commit. */
static bool extension_event = false;
static bool extension_created = false;
static bool databases_changed = false;
static bool blocking = false;

static void
dbhooks_xact_callback(XactEvent event, void *arg)
{
	bool		commit = event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT;

	if (!commit && event != XACT_EVENT_ABORT && event != XACT_EVENT_PARALLEL_ABORT)
		return;
	if (commit && extension_event)
		launcher_notify_extension(MyDatabaseId, extension_created);
	if (commit && databases_changed)
		launcher_notify_databases();
	if (blocking)
		launcher_step_aside_end();
	extension_event = databases_changed = blocking = false;
}

static void
register_callback(void)
{
	static bool registered = false;

	if (!registered)
		RegisterXactCallback(dbhooks_xact_callback, NULL);
	registered = true;
}

/* A CREATE DATABASE's template, or NULL for the default (template1). */
static const char *
template_of(CreatedbStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		DefElem    *d = lfirst(lc);

		if (strcmp(d->defname, "template") == 0 && d->arg != NULL)
			return defGetString(d);
	}
	return NULL;
}

static bool
sets_tablespace(AlterDatabaseStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
		if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0)
			return true;
	return false;
}

/* The database the statement needs alone, or NULL; *changes: pg_database changes. */
static const char *
database_needed_alone(Node *stmt, bool *changes)
{
	*changes = true;
	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) stmt)->dbname;
		case T_CreatedbStmt:
			return template_of((CreatedbStmt *) stmt);
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) stmt)->subname;
			break;
		case T_AlterDatabaseStmt:
			return sets_tablespace((AlterDatabaseStmt *) stmt)
				? ((AlterDatabaseStmt *) stmt)->dbname : NULL;
		default:
			break;
	}
	*changes = false;
	return NULL;
}

/*
 * Before the statement: step aside from the database it needs alone.  Only
 * for one who may run it (its owner): others must not be able to stop the
 * workers.
 */
static void
before_statement(Node *stmt)
{
	bool		changes;
	const char *name;
	Oid			dboid;

	/* Its effect would outlive the write-back, into the next of its batch. */
	if (IsA(stmt, ConstraintsSetStmt) && writeback_running_user_code)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot execute SET CONSTRAINTS within a docextract write-back")));
	name = database_needed_alone(stmt, &changes);
	dboid = name ? get_database_oid(name, true) : InvalidOid;

	if (changes)
	{
		register_callback();
		databases_changed = true;
	}
	if (!OidIsValid(dboid) || !pg_database_ownercheck(dboid, GetUserId()))
		return;
	blocking = true;
	if (!launcher_step_aside(dboid))
		ereport(WARNING,
				(errmsg("docextract: the workers of database \"%s\" did not stop in time", name)));
}

static bool
names_docextract(List *objects)
{
	ListCell   *lc;

	foreach(lc, objects)
		if (IsA(lfirst(lc), String) && strcmp(strVal(lfirst(lc)), "docextract") == 0)
			return true;
	return false;
}

/* After the statement: what to tell at commit. */
static void
after_statement(Node *stmt)
{
	/*
	 * The prepared transaction's wake-ups were dropped at its PREPARE
	 * (workerset.c): whatever it queued, or the rows it held, the workers
	 * learn of at this commit.
	 */
	if (IsA(stmt, TransactionStmt) &&
		(((TransactionStmt *) stmt)->kind == TRANS_STMT_COMMIT_PREPARED ||
		 ((TransactionStmt *) stmt)->kind == TRANS_STMT_ROLLBACK_PREPARED))
	{
		docextract_signal_at_commit(SIGNAL_CANCEL);		/* wakes them all */
		docextract_signal_at_commit(SIGNAL_DELIVERIES); /* or made events */
		writeback_wake_at_commit();
		return;
	}
	if (IsA(stmt, CreateExtensionStmt) &&
		strcmp(((CreateExtensionStmt *) stmt)->extname, "docextract") == 0)
		extension_event = extension_created = true;
	else if (IsA(stmt, DropStmt) && ((DropStmt *) stmt)->removeType == OBJECT_EXTENSION &&
			 names_docextract(((DropStmt *) stmt)->objects))
	{
		extension_event = true;
		extension_created = false;
	}
	else
		return;
	register_callback();
}

static void
dbhooks_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				ProcessUtilityContext context, ParamListInfo params,
				QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	before_statement(stmt);
	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
	after_statement(stmt);
}

void
dbhooks_install(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = dbhooks_utility;
}

/*
 * extract_document and the trigger form: nothing will process the job (no
 * preload, or this database is not served): say so, once a transaction.
 * Not in a background worker: extract_sync's runs the job itself.
 */
void
docextract_warn_unserved(void)
{
	static LocalTransactionId warned = InvalidLocalTransactionId;

	if (IsBackgroundWorker || MyProc == NULL || MyProc->lxid == warned)
		return;
	if (!launcher_has_shmem())
		ereport(WARNING,
				(errmsg("docextract is not loaded through shared_preload_libraries: no worker will process this extraction"),
				 errhint("Add docextract to shared_preload_libraries and restart the server; extract_sync() works without it.")));
	else if (!launcher_database_listed(get_database_name(MyDatabaseId)))
		ereport(WARNING,
				(errmsg("database \"%s\" is not in docextract.databases: no worker will process this extraction",
						get_database_name(MyDatabaseId)),
				 errhint("Add it to docextract.databases and reload the configuration.")));
	else
		return;
	warned = MyProc->lxid;
}
