/*
 * nowait.c: the worker never waits on a lock a session can hold.
 *
 * Sessions lock what the worker's status changes need: cancel_extraction,
 * approve and delete_documents lock the extraction's row (and a split
 * parent's, which its sub-documents' ends update).  A session may keep those
 * locks as long as it likes (BEGIN; SELECT docextract.cancel_extraction(...);
 * and nothing more).  So before a status change the worker takes them with
 * SKIP LOCKED; if one is held, it keeps the finished result and tries again
 * later.  Credits need no lock: settling adds a row to credit_slot_deltas.
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

/*
 * Lock extraction id's row (and its split parent's), without waiting.
 * False if a session holds either: the caller changes nothing now.
 */
bool
queue_lock_nowait(pg_uuid_t *id)
{
	Datum		idd = UUIDPGetDatum(id);
	bool		free = true;

	spi_connect();
	if (spi_execute_with_args("SELECT x.parent_extraction_id FROM docextract.extractions x"
							  " WHERE x.id = $1 FOR UPDATE SKIP LOCKED",
							  1, (Oid[]) {UUIDOID}, &idd, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not lock extraction %s", uuid_text(idd));
	if (SPI_processed == 0)
		free = !row_exists("SELECT 1 FROM docextract.extractions x WHERE x.id = $1", UUIDOID, idd);
	else
	{
		bool		orphan;
		Datum		parent = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &orphan);

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
	}
	spi_finish();
	return free;
}
