/*
 * extractions.c: extract_document() and cancel_extraction(), the SQL
 * functions over the queue (submit.c enqueues).
 */
#include "postgres.h"
#include "prelude.h"		/* first: see the note on json_object */
#include "privileged.h"
#include "queue.h"
#include "spi_checked.h"
#include "workerset.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/guc.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(docextract_extract_document);
PG_FUNCTION_INFO_V1(docextract_cancel_extraction);

Datum
docextract_extract_document(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("extract_document needs a document_id")));
	PG_RETURN_DATUM(submit_extraction(PG_GETARG_DATUM(0),
									  PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1),
									  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2)));
}

Datum
docextract_cancel_extraction(PG_FUNCTION_ARGS)
{
	Datum		id = PG_GETARG_DATUM(0);
	Oid			caller = GetUserId();	/* before acting as the owner */
	Privileged	priv;
	bool		cancelled;

	spi_connect();
	privileged_begin(&priv);
	check_visible("extraction", "SELECT owner::oid FROM docextract.extractions WHERE id = $1",
				  id, caller, false);
	spi_execute_with_args("UPDATE docextract.extractions"
						  " SET status = 'cancelled', completed_at = clock_timestamp()"
						  " WHERE id = $1 AND status IN " STATUSES_CANCELLABLE,
						  1, (Oid[]) {UUIDOID}, &id, NULL, false, 0);
	cancelled = SPI_processed == 1;
	privileged_end(&priv);
	spi_finish();
	if (cancelled)
		docextract_signal_at_commit(SIGNAL_CANCEL);
	PG_RETURN_BOOL(cancelled);
}
