/*
 * nowait.c: the worker never waits on a lock a session can hold.
 *
 * Sessions lock what the worker's status changes need: cancel_extraction,
 * approve and delete_documents lock the extraction's row, extract_document
 * a credit slot of its owner's (which settling finished work updates, trigger
 * settle_credits).  A session may keep those locks as long as it likes
 * (BEGIN; SELECT docextract.extract_document(...); and nothing more).  So
 * before a status change the worker takes both locks with SKIP LOCKED; if
 * one is held, it keeps the finished result and tries again later.
 */
#include "postgres.h"

#include "queue.h"
#include "spi_checked.h"
#include "util.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"

/* Set by the job worker: this process takes its locks with queue_lock_nowait(). */
bool		docextract_never_wait = false;

/* Does the row sql (by $1) exist, whoever holds it? */
static bool
row_exists(const char *sql, Oid type, Datum arg)
{
	if (spi_execute_with_args(sql, 1, &type, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for a docextract row");
	return SPI_processed == 1;
}

/* Does the credit slot (role, slot) exist, whoever holds it? */
static bool
slot_exists(Datum *slot)
{
	if (spi_execute_with_args("SELECT 1 FROM docextract.credit_slots a"
							  " WHERE a.role = $1::pg_catalog.regrole AND a.slot = $2",
							  2, (Oid[]) {OIDOID, INT2OID}, slot, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for a credit slot");
	return SPI_processed == 1;
}

/*
 * Lock extraction id's row and its owner's credit slot, without waiting.
 * False if a session holds either: the caller changes nothing now.
 */
bool
queue_lock_nowait(pg_uuid_t *id)
{
	Datum		idd = UUIDPGetDatum(id);
	bool		free = true;
	bool		isnull;
	Datum		owner;
	Datum		slot[2];

	spi_connect();
	/* The credit slot settling updates: its own, or its split parent's. */
	if (spi_execute_with_args("SELECT x.owner::oid, x.parent_extraction_id,"
							  " coalesce(x.credit_slot, (SELECT p.credit_slot FROM docextract.extractions p"
							  "                          WHERE p.id = x.parent_extraction_id), 0::smallint)"
							  " FROM docextract.extractions x WHERE x.id = $1 FOR UPDATE OF x SKIP LOCKED",
							  1, (Oid[]) {UUIDOID}, &idd, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not lock extraction %s", uuid_text(idd));
	if (SPI_processed == 0)
		free = !row_exists("SELECT 1 FROM docextract.extractions x WHERE x.id = $1", UUIDOID, idd);
	else
	{
		bool		orphan;
		Datum		parent = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &orphan);

		owner = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		slot[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		slot[0] = owner;
		/* A split's sub-document: its end moves the parent on (trigger split_follow). */
		if (!orphan)
		{
			if (spi_execute_with_args("SELECT 1 FROM docextract.extractions x"
									  " WHERE x.id = $1 FOR UPDATE SKIP LOCKED",
									  1, (Oid[]) {UUIDOID}, &parent, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not lock extraction %s", uuid_text(parent));
			if (SPI_processed == 0)
				free = !row_exists("SELECT 1 FROM docextract.extractions x WHERE x.id = $1",
								   UUIDOID, parent);
		}
		if (spi_execute_with_args("SELECT 1 FROM docextract.credit_slots a"
								  " WHERE a.role = $1::pg_catalog.regrole AND a.slot = $2"
								  " FOR UPDATE SKIP LOCKED",
								  2, (Oid[]) {OIDOID, INT2OID}, slot, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not lock a credit slot");
		if (SPI_processed == 0)
			free = free && !slot_exists(slot);
	}
	spi_finish();
	return free;
}
