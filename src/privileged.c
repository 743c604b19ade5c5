/*
 * privileged.c: doing the caller's writes as the extension owner.
 *
 * The tables are read-only to PUBLIC (with row-level security); the public
 * functions check what the caller may do, then switch to the extension owner
 * for the write itself, with a search_path that user objects cannot shadow.
 */
#include "postgres.h"

#include "privileged.h"
#include "spi_checked.h"
#include "util.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/genam.h"
#include "catalog/indexing.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/syscache.h"


Oid
docextract_extension_owner(void)
{
	Oid			owner;
	char	   *version;

	if (!docextract_extension_row(&owner, &version))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"docextract\" is not installed in this database")));
	return owner;
}

/*
 * Become role, with a search_path that no role's objects can shadow (the
 * locked path, pg_temp last).  An error before the matching end is fine:
 * transaction abort restores the user id and the GUC nest level.
 */
static void
switch_user(Privileged *p, Oid role, int sec_context)
{
	GetUserIdAndSecContext(&p->save_userid, &p->save_sec_context);
	SetUserIdAndSecContext(role, p->save_sec_context | SECURITY_LOCAL_USERID_CHANGE | sec_context);
	p->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, docextract, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

/* Switch to the extension owner, to write what the caller may not write itself. */
void
privileged_begin(Privileged *p)
{
	switch_user(p, docextract_extension_owner(), 0);
}

void
privileged_end(Privileged *p)
{
	act_as_end(p);
}

/*
 * Act as role, as SET ROLE would: the worker does a job's reads and the
 * write-back into a user's table with the rights of the role that submitted
 * it, row-level security included.  The user's code that this can run (its
 * triggers, index expressions, defaults) runs as a security-restricted
 * operation, as PostgreSQL runs it for maintenance commands: it cannot
 * create temporary objects in the worker's session, nor queue deferred
 * triggers, which would fire at commit with the worker's rights.
 */
void
act_as_begin(Privileged *p, Oid role)
{
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u no longer exists", role)));
	switch_user(p, role, SECURITY_RESTRICTED_OPERATION);
}

void
act_as_end(Privileged *p)
{
	AtEOXact_GUC(false, p->save_nestlevel);
	SetUserIdAndSecContext(p->save_userid, p->save_sec_context);
}

/*
 * check_visible's statements, planned once each and kept: the callers pass
 * string literals, so their addresses tell them apart.
 */
static SPIPlanPtr
visible_plan(const char *sql)
{
	static struct
	{
		const char *sql;
		SPIPlanPtr	plan;
	}			kept[8];

	for (int i = 0; i < (int) lengthof(kept); i++)
	{
		if (kept[i].sql == sql)
			return kept[i].plan;
		if (kept[i].sql == NULL)
		{
			kept[i].plan = spi_prepare_kept(sql, 1, (Oid[]) {UUIDOID});
			kept[i].sql = sql;
			return kept[i].plan;
		}
	}
	elog(ERROR, "docextract: more than %d visibility statements", (int) lengthof(kept));
}

/*
 * Is the row of id that the last SPI statement found (at most one; its
 * first column the owner) the caller's to see?  Raise 42704 if not:
 * someone else's row behaves as if it did not exist.  A NULL owner (a
 * system template) is fine if null_owner_ok.
 */
void
check_found_visible(const char *what, Datum id, Oid caller, bool null_owner_ok)
{
	bool		isnull;
	Datum		owner;

	if (SPI_processed == 1)
	{
		owner = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (isnull ? null_owner_ok : caller_can_act_for(caller, DatumGetObjectId(owner)))
			return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("%s %s does not exist", what, uuid_text(id))));
}

/* check_found_visible for the row sql finds by id ($1). */
void
check_visible(const char *what, const char *sql, Datum id, Oid caller, bool null_owner_ok)
{
	spi_execute_plan(visible_plan(sql), &id, NULL, false, 1);
	check_found_visible(what, id, caller, null_owner_ok);
}

/* May `caller` act on rows owned by `owner`?  Membership, as in the policies. */
bool
caller_can_act_for(Oid caller, Oid owner)
{
	return is_member_of_role(caller, owner);
}
