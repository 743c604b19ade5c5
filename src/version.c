/*
 * version.c: the schema the library runs against.
 *
 * After a package upgrade the new library is loaded while the database still
 * holds the old schema, until ALTER EXTENSION docextract UPDATE.  The SQL
 * functions keep every C symbol an older script binds; the worker does no
 * work until the installed version is the one it was built for.
 */
#include "postgres.h"

#include "privileged.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

/*
 * The extension's row in this database: its owner and installed version
 * (palloc'd).  False if it is not installed.
 */
bool
docextract_extension_row(Oid *owner, char **version)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found;

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("docextract"));
	rel = table_open(ExtensionRelationId, AccessShareLock);
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	found = HeapTupleIsValid(tup);
	if (found)
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		*owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
		*version = isnull ? NULL : text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* The installed version, or NULL if the extension is not installed. */
char *
docextract_installed_version(void)
{
	Oid			owner;
	char	   *version;

	return docextract_extension_row(&owner, &version) ? version : NULL;
}

/*
 * Is the schema here the one this library was built for?  Says so in the
 * log once each time the answer changes, so an operator sees why nothing is
 * processed between a package upgrade and ALTER EXTENSION ... UPDATE.
 */
bool
docextract_schema_ready(void)
{
	static char last_seen[64] = "";
	char	   *version = docextract_installed_version();
	const char *now = version ? version : "";

	if (strcmp(now, last_seen) != 0)
	{
		if (version && strcmp(version, EXTVERSION) != 0)
			ereport(LOG,
					(errmsg("docextract worker: the docextract schema in database \"%s\" is version %s, this library is %s; waiting",
							get_database_name(MyDatabaseId), version, EXTVERSION),
					 errhint("Run ALTER EXTENSION docextract UPDATE in that database.")));
		else if (version && last_seen[0] != '\0')
			ereport(LOG,
					(errmsg("docextract worker: schema version %s matches the library; resuming", version)));
		strlcpy(last_seen, now, sizeof(last_seen));
	}
	return version != NULL && strcmp(version, EXTVERSION) == 0;
}
