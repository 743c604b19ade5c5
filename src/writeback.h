/*
 * writeback.h: the trigger form: per-row errors and write-backs.
 */
#ifndef DOCEXTRACT_WRITEBACK_H
#define DOCEXTRACT_WRITEBACK_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/uuid.h"

/* writeback_run.c, writeback_worker.c: write-backs of the trigger form ----- */

/* A write-back that met a lock is tried again this much later. */
#define WRITEBACK_RETRY_MS 1000
/*
 * A write-back's user code that outlives docextract.writeback_timeout by
 * this much (it caught the cancel) stops the write-back worker: a FATAL no
 * trigger can catch.  Its batch was leased first, so its row waits its turn
 * again; the worker gives the batch's other rows back when it restarts.
 */
#define WRITEBACK_GRACE_MS 1000
extern int	writeback_deadline_timeout;	/* a TimeoutId, -1 outside the worker */
extern void writeback_lease(const Datum *ids, int n, TimestampTz lease_until, bool *leased);
extern void writeback_unlease(Datum id, TimestampTz lease_until, TimestampTz due);

extern int	docextract_writeback_timeout_ms;
extern int	docextract_writeback_lock_timeout_ms;

extern bool writeback_running_user_code;
extern Oid	writeback_tainted_by;	/* whose code loaded a library here */

typedef enum
{
	WRITEBACK_DONE,				/* written, or its failure recorded */
	WRITEBACK_TRY_LATER,		/* met a lock or the like: due again later */
	WRITEBACK_HELD				/* a session holds its row: not recorded */
} WriteBackOutcome;

/* One write-back's attempt, to be recorded on its extraction. */
typedef struct WriteBackAttempt
{
	pg_uuid_t	id;
	bool		found;			/* it was due: there is something to record */
	TimestampTz due;			/* writeback_due as read */
	char	   *err;			/* why it failed; NULL: written */
	bool		try_later;		/* err is transient */
} WriteBackAttempt;
extern void writeback_attempt(Datum id, bool bounded, WriteBackAttempt *a);
extern WriteBackOutcome writeback_record(const WriteBackAttempt *a);
extern void writeback_define_settings(void);

/* trigger_rows.c, documents.c, pdf.c: per-row errors of the trigger form -- */

/* docextract.trigger_errors */
typedef enum
{
	TRIGGER_ERRORS_RECORD,
	TRIGGER_ERRORS_RAISE
} TriggerErrorsMode;
extern int	docextract_trigger_errors;
extern void trigger_rows_define_settings(void);

/* Where a trigger-form row's status and result go back to. */
typedef struct RowTarget
{
	Oid			table;
	Datum		key;			/* text[] of the primary key, or 0 */
	const char *result_col;		/* may be NULL */
	const char *status_col;		/* may be NULL */
} RowTarget;

extern char *trigger_row_template_problem(const char *arg, Datum *template_id, int *sqlstate);
extern char *trigger_row_refusal(int pages, const char **status);
extern Datum trigger_row_record(Datum document, Datum template_id, const char *status,
								const char *reason, const RowTarget *target);

#endif							/* DOCEXTRACT_WRITEBACK_H */
