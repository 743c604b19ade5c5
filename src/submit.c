/*
 * submit.c: enqueueing an extraction (submit_extraction), for
 * extract_document() (extractions.c), extract_sync's worker and the trigger
 * form: the options, document, template and model checked, a duplicate
 * found or a row inserted inside the caller's transaction, a worker woken
 * when it commits.  The worker's side (claiming, requeueing, failing) is
 * queue.c.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "classify.h"
#include "credits.h"

#include "options.h"
#include "privileged.h"
#include "provider.h"
#include "queue.h"
#include "spi_checked.h"
#include "util.h"
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


/* Every option is known and of its type (options.c); returns the model's name. */
static char *
check_options(json_object *o)
{
	json_object *v;
	struct json_object_iter it;

	if (!json_object_is_type(o, json_type_object))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object")));
	json_object_object_foreachC(o, it)
	{
		const char *key = it.key;
		json_object *val = it.val;
		const OptionSpec *spec = option_find(extraction_options, key);

		if (spec == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown option \"%s\"", key),
					 errhint("Options are %s.", option_names(extraction_options))));
		if (!option_value_ok(spec, val))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" has an invalid value %s", key,
							json_object_to_json_string_ext(val, JSON_C_TO_STRING_PLAIN))));
	}
	return json_object_object_get_ex(o, EXTRACT_OPT_MODEL, &v) ? pstrdup(json_object_get_string(v))
		: pstrdup("default");
}

/*
 * The document, in one statement: visible to the caller, and neither
 * rejected (bytes that were not one: nothing to extract) nor deleted.
 * Returns its page count (-1: unknown).
 */
static int32
check_document(Datum document, Oid caller)
{
	static SPIPlanPtr plan = NULL;
	bool		isnull;
	char	   *rejection;
	Datum		pages;

	spi_execute_kept(&plan, "SELECT owner::oid, rejection, deleted_at IS NOT NULL, page_count"
					 " FROM docextract.documents WHERE id = $1",
					 1, (Oid[]) {UUIDOID}, &document, NULL, false, 1);
	check_found_visible("document", document, caller, false);	/* privileged.c */
	rejection = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (rejection)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document %s was rejected: %s", uuid_text(document), rejection)));
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document %s was deleted", uuid_text(document))));
	pages = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull);
	return isnull ? -1 : DatumGetInt32(pages);
}

static void
report_no_model(const char *model)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("model \"%s\" does not exist", model),
			 errhint("Add it with docextract.add_model(); the model named \"default\" is used when options name none.")));
}

static void
check_model(const char *model)
{
	static SPIPlanPtr plan = NULL;

	spi_execute_kept(&plan, "SELECT 1 FROM docextract.models WHERE name = $1",
						  1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(model)},
						  NULL, false, 1);
	if (SPI_processed == 0)
		report_no_model(model);
}

/*
 * The template and the model, in one statement, checked in this order:
 * the template visible to the caller (one of no owner is everyone's),
 * usable (its group has an active version), then the model.
 */
static void
check_template_and_model(Datum template_id, Oid caller, const char *model)
{
	static SPIPlanPtr plan = NULL;
	bool		isnull;
	HeapTuple	row;
	TupleDesc	desc;

	spi_execute_kept(&plan, "SELECT t.owner::oid, t.name,"
					 "  NOT EXISTS (SELECT 1 FROM docextract.templates g"
					 "               WHERE g.group_id = t.group_id AND g.is_active),"
					 "  EXISTS (SELECT 1 FROM docextract.models m WHERE m.name = $2)"
					 " FROM docextract.templates t WHERE t.id = $1",
					 2, (Oid[]) {UUIDOID, TEXTOID},
					 (Datum[]) {template_id, CStringGetTextDatum(model)}, NULL, false, 1);
	check_found_visible("template", template_id, caller, true);	/* privileged.c */
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	if (DatumGetBool(SPI_getbinval(row, desc, 3, &isnull)))
		report_template_deactivated(SPI_getvalue(row, desc, 2));	/* templates.c */
	if (!DatumGetBool(SPI_getbinval(row, desc, 4, &isnull)))
		report_no_model(model);
}

/*
 * options.pages checked against the document's page_count: its pages as an
 * int4[], or 0 (NULL) when the option is absent or names every page (the
 * same work); *charged: how many pages that is.
 */
static Datum
selected_pages(int32 page_count, const char *spec, int32 *charged)
{
	int			n;
	int32	   *pages;
	Datum	   *elems;

	*charged = page_count;
	if (spec == NULL)
		return (Datum) 0;
	pages = pages_parse(spec, page_count, &n);
	*charged = n;
	if (n == page_count)
		return (Datum) 0;
	elems = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		elems[i] = Int32GetDatum(pages[i]);
	return PointerGetDatum(construct_array(elems, n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}

/*
 * The earlier extraction of the same document, template and options, if
 * any.  Template NULL (args[1] 0): an earlier one submitted for
 * classification too (classification not NULL), whatever it chose.
 */
static bool
find_duplicate(Datum *args, Datum page_numbers, Datum *found)
{
	static SPIPlanPtr lock_plan = NULL;
	static SPIPlanPtr by_template = NULL;
	static SPIPlanPtr classified = NULL;
	bool		isnull;
	char		nulls[] = "     ";

	nulls[1] = args[1] ? ' ' : 'n';
	nulls[4] = page_numbers ? ' ' : 'n';
	/* Serialize concurrent submits of the same pair; held to commit. */
	spi_execute_kept(&lock_plan, "SELECT pg_advisory_xact_lock(hashtext($1::text || coalesce($2::text, '')))",
						  2, (Oid[]) {UUIDOID, UUIDOID}, args, nulls, false, 0);
	/* pages compare as the pages they name: "2,1" is "1-2". */
	spi_execute_kept(args[1] ? &by_template : &classified,
					 args[1] ? "SELECT id FROM docextract.extractions"
						  " WHERE document_id = $1 AND template_id = $2"
						  "   AND options - 'force' - 'pages' = $3 - 'force' - 'pages'"
						  "   AND owner = $4::regrole AND page_numbers IS NOT DISTINCT FROM $5"
						  "   AND status IN " STATUSES_ACTIVE_OR_DONE
						  " ORDER BY created_at DESC LIMIT 1"
						  : "SELECT id FROM docextract.extractions"
						  " WHERE document_id = $1 AND $2 IS NULL AND classification IS NOT NULL"
						  "   AND options - 'force' - 'pages' = $3 - 'force' - 'pages'"
						  "   AND owner = $4::regrole AND page_numbers IS NOT DISTINCT FROM $5"
						  "   AND status IN " STATUSES_ACTIVE_OR_DONE
						  " ORDER BY created_at DESC LIMIT 1",
						  5, (Oid[]) {UUIDOID, UUIDOID, JSONBOID, OIDOID, INT4ARRAYOID},
						  (Datum[]) {args[0], args[1], args[2], args[3], page_numbers},
						  nulls, false, 1);
	if (SPI_processed == 0)
		return false;
	*found = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											 &isnull), false, UUID_LEN);
	return true;
}

/*
 * The rest of a submit's INSERT statement, whose row is "x": its
 * extraction.queued outbox row (announce_insert() announces only the rows
 * other code inserts), and whether any webhook is enabled.  In the one
 * statement: a row trigger's call cost a submit a tenth of its time.
 */
#define ANNOUNCE_QUEUED \
	" RETURNING id, owner, document_id, status, template_id, attempts, completion_percentage)," \
	" e AS (INSERT INTO docextract.events (id, event, extraction_id, owner, payload)" \
	"   SELECT n.id, 'extraction.queued', x.id, x.owner, json_build_object(" \
	"     'event', 'extraction.queued', 'extraction_id', x.id, 'document_id', x.document_id," \
	"     'status', x.status, 'template_id', x.template_id, 'attempts', x.attempts," \
	"     'completion_percentage', x.completion_percentage, 'event_id', n.id," \
	"     'created_at', clock_timestamp())" \
	"     FROM x, LATERAL (SELECT nextval('docextract.events_id_seq') AS id) n RETURNING id)" \
	" SELECT x.id, e.id, EXISTS (SELECT 1 FROM docextract.webhooks w WHERE w.enabled) FROM x, e"

/*
 * The two INSERTs: $1 document, $2 template, $3 options, $4 owner, $5
 * model, $6 pages, $7 id, $8 credits reserved, $9 their slot.  parts = 2:
 * the general fields and the line items go as two requests in parallel,
 * when the options or the model's options ask for it and the template has
 * both.  No template: classified first (classify.c), one request at a time.
 */
#define INSERT_COLUMNS \
	"WITH x AS (INSERT INTO docextract.extractions (document_id, template_id, options, owner," \
	"  model_name, page_numbers, id, credits_reserved, credit_slot, parts"
static const char *const insert_classified_sql =
INSERT_COLUMNS ", classification) VALUES ($1, $2, $3, $4::regrole, $5, $6, $7, $8, $9, 1, '{}')"
ANNOUNCE_QUEUED;
static const char *const insert_templated_sql =
INSERT_COLUMNS ") SELECT $1, $2, $3, $4::regrole, $5, $6, $7, $8, $9,"
"   CASE WHEN coalesce(($3->>'" EXTRACT_OPT_PARALLEL_PARTS "')::boolean,"
"                      (m.options->>'" MODEL_OPT_PARALLEL_PARTS "')::boolean, false)"
"         AND jsonb_typeof(t.schema_definition->'table_part') = 'object'"
"         AND t.schema_definition->'table_part' <> '{}'"
"         AND jsonb_typeof(t.schema_definition->'general_part') = 'object'"
"         AND t.schema_definition->'general_part' <> '{}'"
"         AND coalesce((m.options->>'" MODEL_OPT_MAX_CONCURRENCY "')::int, 2) >= 2"
"        THEN 2 ELSE 1 END"
"   FROM docextract.templates t, docextract.models m"
"  WHERE t.id = $2 AND m.name = $5" ANNOUNCE_QUEUED;

/* Its webhook deliveries, when some webhook is enabled (as announce_insert()). */
static void
deliver_queued(Datum id, Datum event_id, Oid owner)
{
	static SPIPlanPtr plan = NULL;

	spi_execute_kept(&plan, "SELECT docextract.deliver_events(ARRAY[$1], ARRAY['extraction.queued'],"
					 " ARRAY[$2::regrole], ARRAY[$3], true)",
					 3, (Oid[]) {INT8OID, OIDOID, UUIDOID},
					 (Datum[]) {event_id, ObjectIdGetDatum(owner), id}, NULL, false, 0);
}

/*
 * Insert the extraction (args: document, template or 0, options, owner) of
 * pages pages (-1: unknown), its credits reserved first when reserve.c can
 * (else its trigger reserves them); returns its id.
 */
static Datum
insert_extraction(Datum *args, const char *model, Datum page_numbers, int32 pages)
{
	static SPIPlanPtr plans[2];
	Datum		id = new_time_ordered_uuid();
	int16		slot = reserve_at_submit(DatumGetObjectId(args[3]), pages, id);
	bool		isnull;
	int			nestlevel;
	HeapTuple	row;
	char		nulls[10];

	memset(nulls, ' ', 9);
	nulls[9] = '\0';
	nulls[1] = args[1] ? ' ' : 'n';
	nulls[5] = page_numbers ? ' ' : 'n';
	nulls[8] = slot < 0 ? 'n' : ' ';
	/* The INSERT triggers act on what we enqueue (see docextract.submitting). */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("docextract.submitting", "on", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	/* count 0: a count would stop it before its statement triggers */
	if (spi_execute_kept(&plans[args[1] ? 1 : 0], args[1] ? insert_templated_sql : insert_classified_sql,
						 9, (Oid[]) {UUIDOID, UUIDOID, JSONBOID, OIDOID, TEXTOID, INT4ARRAYOID,
							 UUIDOID, INT4OID, INT2OID},
						 (Datum[]) {args[0], args[1], args[2], args[3], CStringGetTextDatum(model),
							 page_numbers, id, Int32GetDatum(slot < 0 ? 0 : pages), Int16GetDatum(slot)},
						 nulls, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not enqueue the extraction");
	AtEOXact_GUC(true, nestlevel);
	row = SPI_tuptable->vals[0];
	id = SPI_datumTransfer(id, false, UUID_LEN);
	if (DatumGetBool(SPI_getbinval(row, SPI_tuptable->tupdesc, 3, &isnull)))
		deliver_queued(id, SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &isnull),
					   DatumGetObjectId(args[3]));
	return id;
}

/*
 * Enqueue an extraction of document with template_id (0: classify) and
 * options (NULL: none) for the current user, or return the earlier one
 * (a duplicate).  extract_document(), extract_sync's worker and the trigger
 * form all submit through here.
 */
Datum
submit_extraction(Datum document, Datum template_id, Jsonb *options)
{
	Oid			caller = GetUserId();
	json_object *parsed;
	volatile bool force = false;
	char	   *volatile model = NULL;
	char	   *volatile pages = NULL;
	volatile bool split = false;
	Datum		page_numbers;
	Datum		args[4];
	Datum		id;
	int32		page_count;
	int32		charged;
	Privileged	priv;

	parsed = json_tokener_parse(options ? JsonbToCString(NULL, &options->root, VARSIZE(options))
								: "{}");
	PG_TRY();
	{
		json_object *v;

		model = check_options(parsed);
		force = json_object_object_get_ex(parsed, EXTRACT_OPT_FORCE, &v) && json_object_get_boolean(v);
		split = json_object_object_get_ex(parsed, EXTRACT_OPT_SPLIT, &v) && json_object_get_boolean(v);
		if (json_object_object_get_ex(parsed, EXTRACT_OPT_PAGES, &v))
			pages = pstrdup(json_object_get_string(v));
	}
	PG_FINALLY();
	{
		json_object_put(parsed);
	}
	PG_END_TRY();

	args[0] = document;
	args[1] = template_id;		/* 0: classify */
	args[2] = options ? PointerGetDatum(options)
		: DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
	args[3] = ObjectIdGetDatum(caller);

	spi_connect();
	privileged_begin(&priv);
	page_count = check_document(args[0], caller);
	if (split)
		split_check_submit(args[0], pages != NULL);	/* split.c */
	if (args[1])
		check_template_and_model(args[1], caller, model);
	else
		check_model(model);
	page_numbers = selected_pages(page_count, pages, &charged);
	if (force || !find_duplicate(args, page_numbers, &id))	/* force: no lookup at all */
	{
		id = insert_extraction(args, model, page_numbers, charged);
		docextract_wake_worker_at_commit();
	}
	privileged_end(&priv);
	spi_finish();
	return id;
}
