/*
 * retention.c: the worker's cleanup of rows past docextract.retention.
 *
 * Ended extractions (their results go with them) and events whose
 * deliveries are all settled are removed in small batches, one batch per
 * poll, so that cleanup never holds locks or a transaction for long.  The
 * credit ledger is kept: it is the account's history, and so is an
 * extraction whose write-back is still due (written back later, then
 * removed).  Each finds its rows through an index on when they ended or
 * were made (extractions_ended, events_created): a poll that finds nothing
 * reads nothing of the history.
 */
#include "postgres.h"

#include "settings.h"
#include "spi_checked.h"
#include "statuses.h"
#include "worker.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"

#define CLEANUP_BATCH 500

/* Remove one batch of each kind; true if a batch was full (more wait). */
bool
retention_cleanup(void)
{
	Datum		args[2] = {Float8GetDatum((double) docextract_retention_s),
	Int32GetDatum(CLEANUP_BATCH)};
	Oid			types[2] = {FLOAT8OID, INT4OID};
	int			removed;
	bool		more;

	spi_connect();
	spi_execute_with_args("DELETE FROM docextract.extractions e WHERE e.id IN ("
						  " SELECT id FROM docextract.extractions"
						  "  WHERE status IN " STATUSES_FINAL
						  "    AND coalesce(completed_at, created_at) < now() - make_interval(secs => $1)"
						  "    AND writeback_due IS NULL"
						  "  ORDER BY coalesce(completed_at, created_at) LIMIT $2 FOR UPDATE SKIP LOCKED)",
						  2, types, args, NULL, false, 0);
	removed = (int) SPI_processed;
	more = SPI_processed == CLEANUP_BATCH;
	spi_execute_with_args("DELETE FROM docextract.events e WHERE e.id IN ("
						  " SELECT v.id FROM docextract.events v"
						  "  WHERE v.created_at < now() - make_interval(secs => $1)"
						  "    AND NOT EXISTS (SELECT 1 FROM docextract.webhook_deliveries d"
						  "                     WHERE d.event_id = v.id AND " ROW_STATUS_IS("d.status", "pending") ")"
						  "  ORDER BY v.id LIMIT $2)",
						  2, types, args, NULL, false, 0);
	removed += (int) SPI_processed;
	more = more || SPI_processed == CLEANUP_BATCH;
	spi_finish();
	if (removed > 0)
		elog(DEBUG1, "docextract worker: removed %d rows past docextract.retention", removed);
	return more;
}
