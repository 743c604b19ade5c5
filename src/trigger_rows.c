/*
 * trigger_rows.c: rows the trigger form cannot submit.
 *
 * Under docextract.trigger_errors = 'record' (the default) a row whose
 * bytes are not a document, whose template the inserting role cannot use,
 * or whose submit the role's credits or quota refuse does not abort the
 * INSERT or COPY: its extraction is recorded as failed or
 * insufficient_credits with the reason, announced like any status change,
 * and written back to the row's status column.  Each condition is checked
 * before acting, never by catching the error: a subtransaction per row
 * would slow a large COPY, and the whole cluster with it.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "privileged.h"
#include "settings.h"
#include "spi_checked.h"
#include "statuses.h"
#include "template.h"
#include "workerset.h"
#include "writeback.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/uuid.h"

int			docextract_trigger_errors = TRIGGER_ERRORS_RECORD;

static const struct config_enum_entry trigger_errors_modes[] = {
	{"record", TRIGGER_ERRORS_RECORD, false},
	{"raise", TRIGGER_ERRORS_RAISE, false},
	{NULL, 0, false}
};

void
trigger_rows_define_settings(void)
{
	/*
	 * USERSET: a session may choose all-or-nothing for its own INSERT or
	 * COPY; either way nothing is submitted that would not be, and nothing
	 * is charged that is not extracted.
	 */
	DefineCustomEnumVariable("docextract.trigger_errors",
							 "record: a row the trigger form cannot submit gets a failed extraction; raise: it aborts the statement.",
							 NULL, &docextract_trigger_errors, TRIGGER_ERRORS_RECORD,
							 trigger_errors_modes, PGC_USERSET, 0, NULL, NULL, NULL);
}

/*
 * The active template the inserting role may use, by id or name (an active
 * one first): NULL and *template_id, or why there is none and its SQLSTATE
 * (*sqlstate): 42704 when the role sees none, 55000 when it is deactivated
 * (as extract_document's check says).  Both forms find it so.  Runs as
 * that role, so row-level security decides what it sees.
 */
char *
trigger_row_template_problem(const char *arg, Datum *template_id, int *sqlstate)
{
	bool		isnull;
	bool		is_uuid = strlen(arg) == 36 && strspn(arg, "0123456789abcdefABCDEF-") == 36;
	const char *problem = NULL;

	*template_id = (Datum) 0;
	spi_connect();
	if (spi_execute_with_args(is_uuid
							  ? "SELECT t.id, EXISTS (SELECT 1 FROM docextract.templates g"
							  "                     WHERE g.group_id = t.group_id AND g.is_active)"
							  "  FROM docextract.templates t WHERE t.id = $1::uuid"
							  : "SELECT t.id, t.is_active FROM docextract.templates t WHERE t.name = $1"
							  "   AND " TEMPLATE_USABLE_BY("CURRENT_USER::pg_catalog.regrole::pg_catalog.oid")
							  "  ORDER BY t.is_active DESC, t.owner IS NULL, t.created_at DESC LIMIT 1",
							  1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(arg)},
							  NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up template \"%s\"", arg);
	*sqlstate = ERRCODE_UNDEFINED_OBJECT;
	if (SPI_processed != 1)
		problem = "does not exist";
	else if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		problem = "is deactivated", *sqlstate = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
	else
		*template_id = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0],
													   SPI_tuptable->tupdesc, 1, &isnull),
										 false, UUID_LEN);
	spi_finish();
	/* Formatted here, not in SPI's memory, which SPI_finish() freed. */
	return problem ? psprintf("template \"%s\" %s", arg, problem) : NULL;
}

/*
 * Lock a credit slot of the role with pages free, as reserve_credits will
 * (docextract.credit_slot_for); false if it has too few credits, its
 * available credits then in *available.
 */
static bool
lock_credit_slot(Oid owner, int pages, int64 *available)
{
	Datum		args[4] = {ObjectIdGetDatum(owner), Int32GetDatum(pages),
		BoolGetDatum(docextract_credits_mode == CREDITS_ENFORCE),
	BoolGetDatum(docextract_max_active_per_role > 0)};
	bool		no_slot;
	bool		isnull;

	/* take false: the row's reservation, if it is made, takes them. */
	if (spi_execute_with_args("SELECT docextract.credit_slot_for($1::pg_catalog.regrole, $2, $3, $4, false),"
							  " docextract.credit_available($1::pg_catalog.regrole)",
							  4, (Oid[]) {OIDOID, INT4OID, BOOLOID, BOOLOID}, args, NULL, false, 1)
		!= SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not lock a credit slot of role %u", owner);
	(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &no_slot);
	*available = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return !no_slot;
}

/* Not read-only: the rows this statement enqueued so far count. */
static int64
active_extractions(Oid owner)
{
	bool		isnull;
	Datum		arg = ObjectIdGetDatum(owner);

	if (spi_execute_with_args("SELECT count(*) FROM docextract.extractions x"
							  " WHERE x.owner = $1::regrole"
							  "   AND x.status IN " STATUSES_ACTIVE,
							  1, (Oid[]) {OIDOID}, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the active extractions of role %u", owner);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Would reserve_credits refuse an extraction of these pages (the quota, or
 * too few credits under enforce)?  NULL if not; else the reason, its
 * status in *status.  The credit slot found stays locked to the end of
 * the transaction, as the reservation itself would lock it, so the answer
 * holds until the reservation is made.
 */
char *
trigger_row_refusal(int pages, const char **status)
{
	Oid			owner = GetUserId();
	const char *role = quote_identifier(GetUserNameFromId(owner, false));
	Privileged	priv;
	int64		available;
	bool		enough;
	int64		active = 0;
	char	   *refusal = NULL;

	if (docextract_credits_mode != CREDITS_ENFORCE && docextract_max_active_per_role <= 0)
		return NULL;
	spi_connect();
	privileged_begin(&priv);
	enough = lock_credit_slot(owner, pages, &available);
	if (docextract_max_active_per_role > 0)
		active = active_extractions(owner);
	privileged_end(&priv);
	spi_finish();
	if (docextract_max_active_per_role > 0 && active >= docextract_max_active_per_role)
	{
		*status = "failed";
		refusal = psprintf("role %s has %lld active extractions, the limit is %d", role,
						   (long long) active, docextract_max_active_per_role);
	}
	else if (docextract_credits_mode == CREDITS_ENFORCE && !enough)
	{
		*status = "insufficient_credits";
		refusal = psprintf("insufficient credits: role %s needs %d credit(s) for %d page(s), its balance is %lld",
						   role, pages, pages, (long long) available);
	}
	return refusal;
}

/* The model every trigger-form extraction names: missing, the setup is wrong. */
static void
check_default_model(void)
{
	spi_execute("SELECT 1 FROM docextract.models WHERE name = 'default'", true, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"default\" does not exist"),
				 errhint("Add it with docextract.add_model(); the model named \"default\" is used when options name none.")));
}

/*
 * Record the row's extraction as already ended (status failed or
 * insufficient_credits, with the reason), holding no credits.  Inserted as
 * docextract submits (docextract.submitting): the insert is announced
 * (extraction.failed or .insufficient_credits); reserve_credits leaves a row
 * that is not pending alone.  Its write-back is due at once.
 */
Datum
trigger_row_record(Datum document, Datum template_id, const char *status, const char *reason,
				   const RowTarget *target)
{
	bool		remembered = target->result_col || target->status_col;
	Oid			owner = GetUserId();	/* before acting as the extension owner */
	Privileged	priv;
	bool		isnull;
	Datum		id;
	int			nestlevel;
	char		nulls[10];

	memset(nulls, ' ', 9);
	nulls[9] = '\0';
	nulls[1] = template_id ? ' ' : 'n';
	nulls[5] = nulls[6] = remembered ? ' ' : 'n';
	nulls[7] = target->result_col ? ' ' : 'n';
	nulls[8] = target->status_col ? ' ' : 'n';
	spi_connect();
	privileged_begin(&priv);
	check_default_model();
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("docextract.submitting", "on", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (spi_execute_with_args("INSERT INTO docextract.extractions"
							  " (document_id, template_id, model_name, status, owner, error_message,"
							  "  completed_at, target_table, target_pk, target_result_column,"
							  "  target_status_column, writeback_due)"
							  " VALUES ($1, $2, 'default', $3, $4::regrole, $5, clock_timestamp(),"
							  "         $6, $7, $8, $9,"
							  "         CASE WHEN $6 IS NOT NULL THEN clock_timestamp() END)"
							  " RETURNING id",
							  9, (Oid[]) {UUIDOID, UUIDOID, TEXTOID, OIDOID, TEXTOID, OIDOID,
								  TEXTARRAYOID, TEXTOID, TEXTOID},
							  (Datum[]) {document, template_id, CStringGetTextDatum(status),
								  ObjectIdGetDatum(owner), CStringGetTextDatum(reason),
								  ObjectIdGetDatum(target->table), target->key,
								  target->result_col ? CStringGetTextDatum(target->result_col) : (Datum) 0,
								  target->status_col ? CStringGetTextDatum(target->status_col) : (Datum) 0},
							  /* count 0: a count would stop it before its statement triggers */
							  nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record the extraction of a row that was not submitted");
	AtEOXact_GUC(true, nestlevel);
	id = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull),
						   false, UUID_LEN);
	privileged_end(&priv);
	spi_finish();
	if (remembered)
		writeback_wake_at_commit();
	return id;
}
