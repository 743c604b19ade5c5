/*
 * writeback.c: the trigger form of extract_document and its write-back.
 *
 *   CREATE TRIGGER t AFTER INSERT ON invoices FOR EACH ROW
 *     EXECUTE FUNCTION docextract.extract_document('invoice', 'pdf', 'extracted', 'status');
 *
 * Each inserted row becomes a document and an extraction that remembers the
 * row (table and primary key).  Each status change of that extraction
 * queues the write-back of its status, and once completed its data, into
 * that row; writeback_run.c does it.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "classify.h"

#include "document.h"
#include "privileged.h"
#include "queue.h"
#include "spi_checked.h"
#include "workerset.h"
#include "writeback.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"

PG_FUNCTION_INFO_V1(docextract_extract_document_trigger);

/* What a firing of the trigger needs, resolved from its arguments. */
typedef struct TriggerTarget
{
	Relation	rel;
	const char *trigger;
	const char *template_arg;
	int			content_att;
	const char *result_col;		/* may be NULL */
	const char *status_col;		/* may be NULL */
	Datum		template_id;
} TriggerTarget;

static void
trigger_error(TriggerTarget *t, int code, const char *msg)
{
	ereport(ERROR,
			(errcode(code),
			 errmsg("trigger \"%s\" on table \"%s\": %s", t->trigger,
					RelationGetRelationName(t->rel), msg)));
}

/* The column named by a trigger argument, of one of the given types. */
static int
column_of(TriggerTarget *t, const char *role, const char *name, Oid type1, Oid type2)
{
	TupleDesc	desc = RelationGetDescr(t->rel);
	int			att = SPI_fnumber(desc, name);
	Oid			type;

	if (att <= 0)
		trigger_error(t, ERRCODE_UNDEFINED_COLUMN,
					  psprintf("%s column \"%s\" does not exist", role, name));
	type = SPI_gettypeid(desc, att);
	if (type != type1 && type != type2)
		trigger_error(t, ERRCODE_DATATYPE_MISMATCH,
					  psprintf("%s column \"%s\" is of type %s, not %s", role, name,
							   format_type_be(type), format_type_be(type1)));
	return att;
}

/* An active template visible to the inserting role, by id or name. */
static Datum
template_of(TriggerTarget *t, const char *arg)
{
	int			sqlstate;
	char	   *problem = trigger_row_template_problem(arg, &t->template_id, &sqlstate);

	if (problem)
		trigger_error(t, sqlstate, problem);
	return t->template_id;
}

/* Check the firing and the arguments: a clear error for each mistake. */
static void
resolve_target(TriggerData *td, TriggerTarget *t)
{
	Trigger    *tg = td->tg_trigger;

	t->rel = td->tg_relation;
	t->trigger = tg->tgname;
	t->template_arg = tg->tgnargs > 0 ? tg->tgargs[0] : NULL;
	if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(td->tg_event))
		trigger_error(t, ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
					  "docextract.extract_document() must be fired AFTER INSERT ... FOR EACH ROW");
	if (tg->tgnargs < 2 || tg->tgnargs > 4)
		trigger_error(t, ERRCODE_INVALID_PARAMETER_VALUE,
					  "docextract.extract_document() takes 2 to 4 arguments: template, content column[, result column[, status column]]");
	t->content_att = column_of(t, "content", tg->tgargs[1], BYTEAOID, BYTEAOID);
	t->result_col = tg->tgnargs > 2 && tg->tgargs[2][0] ? tg->tgargs[2] : NULL;
	t->status_col = tg->tgnargs > 3 && tg->tgargs[3][0] ? tg->tgargs[3] : NULL;
	if (t->result_col)
		column_of(t, "result", t->result_col, JSONBOID, JSONBOID);
	if (t->status_col)
		column_of(t, "status", t->status_col, TEXTOID, VARCHAROID);
	if ((t->result_col || t->status_col) && !OidIsValid(RelationGetPrimaryKeyIndex(t->rel)))
		trigger_error(t, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					  "the table has no primary key, which docextract needs to write results back to the row");
}

/* The row's primary key values, as text, in key order. */
static Datum
key_of(TriggerTarget *t, HeapTuple row, char **label)
{
	Relation	index = index_open(RelationGetPrimaryKeyIndex(t->rel), AccessShareLock);
	int			n = index->rd_index->indnkeyatts;
	Datum	   *values = palloc(sizeof(Datum) * n);
	StringInfoData l;

	int			nestlevel = NewGUCNestLevel();

	/*
	 * The key is read back by the write-back worker under its own settings:
	 * write it in forms every setting reads the same (ISO dates, exact
	 * floats), not in the inserting session's DateStyle.
	 */
	(void) set_config_option("datestyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("extra_float_digits", "3", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	initStringInfo(&l);
	appendStringInfoString(&l, RelationGetRelationName(t->rel));
	for (int i = 0; i < n; i++)
	{
		char	   *v = SPI_getvalue(row, RelationGetDescr(t->rel), index->rd_index->indkey.values[i]);

		values[i] = CStringGetTextDatum(v);
		appendStringInfo(&l, "%c%s", i == 0 ? '/' : ',', v);
	}
	AtEOXact_GUC(true, nestlevel);
	index_close(index, AccessShareLock);
	*label = l.data;
	return PointerGetDatum(construct_array(values, n, TEXTOID, -1, false, TYPALIGN_INT));
}

static void
remember_row(Datum extraction, TriggerTarget *t, Datum key)
{
	Privileged	priv;
	char		nulls[] = "     ";

	nulls[3] = t->result_col ? ' ' : 'n';
	nulls[4] = t->status_col ? ' ' : 'n';
	spi_connect();
	privileged_begin(&priv);
	/* Due now: the write-back worker mirrors 'pending' (or what follows). */
	spi_execute_with_args("UPDATE docextract.extractions SET target_table = $2, target_pk = $3,"
						  " target_result_column = $4, target_status_column = $5,"
						  " writeback_due = clock_timestamp()"
						  " WHERE id = $1",
						  5, (Oid[]) {UUIDOID, OIDOID, TEXTARRAYOID, TEXTOID, TEXTOID},
						  (Datum[]) {extraction, ObjectIdGetDatum(RelationGetRelid(t->rel)), key,
							  t->result_col ? CStringGetTextDatum(t->result_col) : (Datum) 0,
							  t->status_col ? CStringGetTextDatum(t->status_col) : (Datum) 0},
						  nulls, false, 0);
	privileged_end(&priv);
	spi_finish();
	writeback_wake_at_commit();
}

/*
 * docextract.trigger_errors = 'record': check the row before acting (the
 * bytes, the template, the credits) and record what stops it as its
 * extraction's status, rather than raising.  Returns the extraction;
 * *recorded when it was recorded so (its row remembered already).
 */
static Datum
submit_or_record(TriggerTarget *t, const char *label, Datum content, Datum key, bool *recorded)
{
	bytea	   *bytes = DatumGetByteaP(content);
	const char *type;
	int			pages;
	char	   *text;
	const char *status = "failed";
	Datum		doc;
	RowTarget	target = {RelationGetRelid(t->rel), key, t->result_col, t->status_col};
	int			sqlstate = 0;

	/* Template NULL: classified by the worker (classify.c). */
	char	   *problem = classify_trigger_arg(t->template_arg) ? NULL
		: trigger_row_template_problem(t->template_arg, &t->template_id, &sqlstate);
	char	   *doc_problem = document_problem(label, VARDATA(bytes), VARSIZE(bytes) - VARHDRSZ,
											   &type, &pages, &text);

	*recorded = true;
	if (doc_problem)
		return trigger_row_record(document_store_rejected(label, type, bytes, doc_problem),
								  t->template_id, status, doc_problem, &target);
	doc = document_store(label, type, bytes, pages, text);
	if (problem == NULL)
		problem = trigger_row_refusal(pages, &status);
	if (problem)
		return trigger_row_record(doc, t->template_id, status, problem, &target);
	*recorded = false;
	return classify_or_extract(doc, t->template_id,
							   DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
}

/* AFTER INSERT FOR EACH ROW: one document and one extraction per row. */
Datum
docextract_extract_document_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TriggerTarget t;
	HeapTuple	row;
	bool		isnull;
	bool		record = docextract_trigger_errors == TRIGGER_ERRORS_RECORD;
	Datum		content;
	Datum		doc;
	Datum		extraction;
	char	   *label;
	Datum		key = (Datum) 0;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("docextract.extract_document() without arguments is a trigger function")));
	resolve_target(td, &t);
	t.template_id = (Datum) 0;	/* NULL: classify */
	if (!record && !classify_trigger_arg(t.template_arg))
		template_of(&t, t.template_arg);
	row = td->tg_trigtuple;
	content = heap_getattr(row, t.content_att, RelationGetDescr(t.rel), &isnull);
	if (isnull)
		return PointerGetDatum(NULL);	/* nothing to extract */
	label = pstrdup(RelationGetRelationName(t.rel));
	if (OidIsValid(RelationGetPrimaryKeyIndex(t.rel)))
		key = key_of(&t, row, &label);
	if (record)
	{
		bool		recorded;

		extraction = submit_or_record(&t, label, content, key, &recorded);
		if (!recorded && (t.result_col || t.status_col))
			remember_row(extraction, &t, key);
		return PointerGetDatum(NULL);
	}
	doc = document_add(label, DatumGetByteaP(content));
	extraction = classify_or_extract(doc, t.template_id,
									 DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	if (t.result_col || t.status_col)
		remember_row(extraction, &t, key);	/* a key exists: resolve_target() checked */
	return PointerGetDatum(NULL);
}
