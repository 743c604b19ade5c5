/*
 * subxact.c: one step in a subtransaction, its error captured as a message.
 *
 * The worker stores a batch of results in one transaction, and extract_sync
 * makes its attempts inside the caller's: either way each job's failure must
 * stay that job's, without ending the transaction around it.  Cancellation,
 * timeouts and shutdown are not a job's failure: they propagate.
 */
#include "postgres.h"

#include "job.h"

#include "access/xact.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

static bool
must_propagate(ErrorData *e)
{
	return e->sqlerrcode == ERRCODE_QUERY_CANCELED || e->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
		e->elevel > ERROR;
}

/* Run fn(arg); NULL on success, else its error message in the caller's context. */
char *
in_subtransaction(StepFn fn, void *arg)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	char	   *volatile err = NULL;

	step_note_error(0);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller_cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(caller_cxt);
		edata = CopyErrorData();
		if (must_propagate(edata))
			PG_RE_THROW();
		step_note_error(edata->sqlerrcode);	/* transient.c */
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		err = pstrdup(edata->message ? edata->message : "unknown error");
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller_cxt);
	CurrentResourceOwner = owner;
	return err;
}
