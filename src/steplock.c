/*
 * steplock.c: the workers step aside for DDL on the extension's tables.
 *
 * DROP EXTENSION docextract CASCADE takes AccessExclusiveLock on the
 * extension's relations one at a time, in the order it finds them; ALTER
 * EXTENSION ... UPDATE and ALTER TABLE take theirs as their statements come.
 * A worker transaction locks a relation when a statement first names it:
 * holding one (taken while parsing), it could wait for another that the DDL
 * already holds, while the DDL waits for the first: a deadlock, in which
 * either the DDL or the worker's step was the victim.
 *
 * So every worker transaction begins by taking AccessShareLock on all the
 * extension's tables and sequences (the members recorded in pg_depend,
 * looked up afresh in each transaction: a DROP and CREATE gives them new
 * oids), in oid order, without waiting (ConditionalLockRelationOid, as
 * pg_net's worker does).  If one is held or asked for by DDL, it takes none
 * and does nothing this time: the step is tried again a little later.  With
 * all of them held before any row is touched, the worker never waits for a
 * lock the DDL holds (the DDL locks a table's indexes and TOAST table only
 * after the table itself), so no cycle can form: the DDL only waits for the
 * worker's short transaction to end.
 */
#include "postgres.h"

#include "worker.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

/* Stepping aside: tried again after this, doubling up to the most. */
#define ASIDE_FIRST_MS 10
#define ASIDE_MOST_MS 1000

/* Does the extension of the current transaction exist?  (steplock_begin) */
static bool extension_absent = false;

static bool stepping_aside = false;
static long aside_ms = 0;

/* The extension's tables and sequences, in oid order; how many. */
static int
member_relations(Oid extension, Oid **oids)
{
	Relation	depend = table_open(DependRelationId, AccessShareLock);
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tup;
	int			n = 0,
				size = 32;

	*oids = palloc(sizeof(Oid) * size);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ExtensionRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extension));
	scan = systable_beginscan(depend, DependReferenceIndexId, true, NULL, 2, key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend d = (Form_pg_depend) GETSTRUCT(tup);
		char		kind;

		if (d->classid != RelationRelationId || d->deptype != DEPENDENCY_EXTENSION)
			continue;
		kind = get_rel_relkind(d->objid);
		if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE &&
			kind != RELKIND_SEQUENCE && kind != RELKIND_MATVIEW)
			continue;
		if (n == size)
			*oids = repalloc(*oids, sizeof(Oid) * (size *= 2));
		(*oids)[n++] = d->objid;
	}
	systable_endscan(scan);
	table_close(depend, AccessShareLock);
	qsort(*oids, n, sizeof(Oid), oid_cmp);
	return n;
}

/*
 * The member list of one version of the extension, kept across
 * transactions: scanning pg_depend (every function is a member too) on
 * each worker transaction would cost more than the step.  A new version
 * (CREATE, ALTER EXTENSION UPDATE: a new pg_extension row) reads it anew.
 */
static Oid	cached_extension = InvalidOid;
static TransactionId cached_xmin = InvalidTransactionId;
static Oid *cached_oids = NULL;	/* in TopMemoryContext */
static int	cached_n = 0;

/* The xmin of the extension's pg_extension row: which version of it this is. */
static TransactionId
extension_row_xmin(Oid extension)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	TransactionId xmin = InvalidTransactionId;

	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extension));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	if (HeapTupleIsValid(tup = systable_getnext(scan)))
		xmin = HeapTupleHeaderGetRawXmin(tup->t_data);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return xmin;
}

static int
cached_member_relations(Oid extension, Oid **oids)
{
	TransactionId xmin = extension_row_xmin(extension);

	if (extension != cached_extension || xmin != cached_xmin || !TransactionIdIsValid(xmin))
	{
		Oid		   *fresh;
		int			n = member_relations(extension, &fresh);

		if (cached_oids)
			pfree(cached_oids);
		cached_oids = MemoryContextAlloc(TopMemoryContext, sizeof(Oid) * Max(n, 1));
		memcpy(cached_oids, fresh, sizeof(Oid) * n);
		pfree(fresh);
		cached_n = n;
		cached_extension = extension;
		cached_xmin = xmin;
	}
	*oids = cached_oids;
	return cached_n;
}

/* Say once that the worker steps aside, and once that it resumes. */
static void
note_aside(bool aside)
{
	if (aside && !stepping_aside)
		ereport(LOG,
				(errmsg("%s: the docextract schema is locked by another session (DROP or ALTER EXTENSION, ALTER TABLE...); stepping aside until it is free",
						MyBgworkerEntry ? MyBgworkerEntry->bgw_type : "docextract")));
	else if (!aside && stepping_aside)
		ereport(LOG,
				(errmsg("%s: the docextract schema is free again; resuming",
						MyBgworkerEntry ? MyBgworkerEntry->bgw_type : "docextract")));
	aside_ms = aside ? Min(Max(aside_ms * 2, ASIDE_FIRST_MS), ASIDE_MOST_MS) : 0;
	stepping_aside = aside;
}

/*
 * At the start of a worker transaction: AccessShareLock on all the
 * extension's tables, without waiting.  False if DDL holds or waits for
 * one: then none is held, and the caller ends the transaction, changing
 * nothing.  True also when the extension is not there (steplock_absent()).
 */
bool
steplock_begin(void)
{
	Oid			extension = get_extension_oid("docextract", true);
	Oid		   *oids;
	int			n;
	int			locked = 0;
	bool		changed = false;

	extension_absent = !OidIsValid(extension);
	if (extension_absent)
		return true;
	n = cached_member_relations(extension, &oids);
	while (locked < n && ConditionalLockRelationOid(oids[locked], AccessShareLock))
		locked++;
	/* Locking read the invalidations: a DROP that committed meanwhile shows. */
	if (locked == n)
	{
		Oid			now = get_extension_oid("docextract", true);

		extension_absent = !OidIsValid(now);
		changed = now != extension;
	}
	if (locked < n || changed)
	{
		while (locked > 0)
			UnlockRelationOid(oids[--locked], AccessShareLock);
		note_aside(!extension_absent);
		return extension_absent;
	}
	note_aside(false);
	return true;
}

/* Was the extension absent when this transaction began? */
bool
steplock_absent(void)
{
	return extension_absent;
}

/* In how many ms to try again after stepping aside (-1: not stepping aside). */
long
steplock_retry_ms(void)
{
	return stepping_aside ? aside_ms : -1;
}

/*
 * steplock_begin(), waiting (holding none of the locks) until DDL is done:
 * for extract_sync's worker, whose caller waits for it anyway.
 */
void
steplock_wait(void)
{
	while (!steplock_begin())
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 aside_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
