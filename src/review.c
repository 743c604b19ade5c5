/*
 * review.c: human review.  approve() applies a reviewer's corrections to an
 * extraction awaiting approval, re-runs the template's rules and completes
 * it; validate_data() runs a template's rules against any data.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "classify.h"

#include "privileged.h"
#include "spi_checked.h"
#include "template.h"
#include "util.h"
#include "workerset.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

PG_FUNCTION_INFO_V1(docextract_approve);
PG_FUNCTION_INFO_V1(docextract_validate_data);

static char *
jsonb_text(Datum d)
{
	Jsonb	   *j = DatumGetJsonbP(d);

	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

static void
bad_correction(const char *fmt, const char *key, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg(fmt, key, detail)));
}

static const TemplateField *
field_named(const TemplateField *fields, int n, const char *key)
{
	for (int i = 0; i < n; i++)
		if (strcmp(fields[i].key, key) == 0)
			return &fields[i];
	return NULL;
}

/* A corrected value, typed as the field is; an untypable one is an error. */
static json_object *
typed_correction(const TemplateField *f, json_object *v, const char *where)
{
	json_object *typed;

	if (v == NULL || json_object_is_type(v, json_type_null))
		return NULL;
	typed = coerce_value(v, f->format, f->noptions, f->options);
	if (typed == NULL)
		bad_correction("correction %s: %s is not a valid value for this field",
					   where, json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
	return typed;
}

static void
correct_general(json_object *data, json_object *general, const Template *t)
{
	json_object *target;
	struct json_object_iter it;

	if (!json_object_is_type(general, json_type_object))
		bad_correction("corrections.%s must be an object of field values%s", "general", "");
	json_object_object_get_ex(data, "general", &target);
	json_object_object_foreachC(general, it)
	{
		const TemplateField *f = field_named(t->general, t->ngeneral, it.key);
		char	   *where = psprintf("general.%s", it.key);

		if (f == NULL)
			bad_correction("correction %s: the template has no such general field%s", where, "");
		if (!f->editable)
			bad_correction("correction %s: the field is not editable%s", where,
						   " (is_editable is false in the template)");
		json_object_object_add(target, it.key, typed_correction(f, it.val, where));
	}
}

/* "table": the whole list of line items, replacing the model's. */
static void
correct_table(json_object *data, json_object *rows, const Template *t)
{
	json_object *typed_rows = json_object_new_array();

	if (!t->has_table)
		bad_correction("corrections.%s: the template has no table part%s", "table", "");
	if (!json_object_is_type(rows, json_type_array))
		bad_correction("corrections.%s must be an array of line items%s", "table", "");
	for (int c = 0; c < t->ntable; c++)
		if (!t->table[c].editable)
			bad_correction("corrections.table: column %s is not editable%s", t->table[c].key,
						   " (is_editable is false in the template), so the line items cannot be replaced");
	for (size_t i = 0; i < json_object_array_length(rows); i++)
	{
		json_object *row = json_object_array_get_idx(rows, i);
		json_object *typed = json_object_new_object();
		struct json_object_iter it;

		if (!json_object_is_type(row, json_type_object))
			bad_correction("corrections.table[%s] must be an object%s", psprintf("%zu", i), "");
		json_object_object_foreachC(row, it)
			if (field_named(t->table, t->ntable, it.key) == NULL)
				bad_correction("correction table[].%s: the template has no such column%s", it.key, "");
		for (int c = 0; c < t->ntable; c++)
		{
			json_object *v = NULL;

			json_object_object_get_ex(row, t->table[c].key, &v);
			json_object_object_add(typed, t->table[c].key,
								   typed_correction(&t->table[c], v,
													psprintf("table[%zu].%s", i, t->table[c].key)));
		}
		json_object_array_add(typed_rows, typed);
	}
	json_object_object_add(data, "table", typed_rows);
}

static void
apply_corrections(json_object *data, json_object *corrections, const Template *t)
{
	struct json_object_iter it;

	if (!json_object_is_type(corrections, json_type_object))
		bad_correction("corrections must be an object with \"general\" and/or \"table\"%s%s", "", "");
	json_object_object_foreachC(corrections, it)
	{
		if (strcmp(it.key, "general") == 0)
			correct_general(data, it.val, t);
		else if (strcmp(it.key, "table") == 0)
			correct_table(data, it.val, t);
		else
			bad_correction("corrections has an unknown key \"%s\"%s", it.key,
						   " (only \"general\" and \"table\")");
	}
}

/* Lock the extraction; check the caller may approve it and that it waits. */
static void
lock_for_approval(Datum id, Oid caller)
{
	bool		isnull;
	char	   *status;

	spi_execute_with_args("SELECT owner::oid, status FROM docextract.extractions"
						  " WHERE id = $1 FOR UPDATE",
						  1, (Oid[]) {UUIDOID}, &id, NULL, false, 1);
	if (SPI_processed == 0 ||
		!caller_can_act_for(caller, DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
																   SPI_tuptable->tupdesc, 1, &isnull))))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extraction %s does not exist", uuid_text(id))));
	status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	/* Locked while queued: the abort that follows wakes the job worker. */
	if (strcmp(status, "pending") == 0 || strcmp(status, "retrying") == 0)
		docextract_wake_worker_at_end();
	if (strcmp(status, "awaiting_approval") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extraction %s is %s, not awaiting_approval", uuid_text(id), status),
				 errhint("Only an extraction in status awaiting_approval can be approved.")));
}

/*
 * The stored data with the corrections (a jsonb text, or NULL) applied, and
 * the rules' verdict on it, as JSON texts.  json-c memory is freed on error.
 */
static void
review_data(const char *stored, const char *corrections, const Template *t, const char *rules,
			char **data_text, char **validation_text)
{
	json_object *volatile data = json_tokener_parse(stored);
	json_object *volatile corr = corrections ? json_tokener_parse(corrections) : NULL;
	json_object *volatile validation = NULL;
	bool		passed;

	PG_TRY();
	{
		if (corr)
			apply_corrections(data, corr, t);
		validation = validation_run(rules, data, &passed);
		(void) charlimit_apply(data, t, validation);
		*data_text = pstrdup(json_object_to_json_string_ext(data, JSON_C_TO_STRING_PLAIN));
		*validation_text = pstrdup(json_object_to_json_string_ext(validation, JSON_C_TO_STRING_PLAIN));
	}
	PG_FINALLY();
	{
		json_object_put(data);
		json_object_put(corr);
		json_object_put(validation);
	}
	PG_END_TRY();
}

/* What approve() returns: get_result(id); then leaves SPI and the owner's rights. */
static Datum
approval_result(Datum id, Privileged *priv)
{
	bool		isnull;
	Datum		result;

	spi_execute_with_args("SELECT docextract.get_result($1)", 1, (Oid[]) {UUIDOID}, &id,
						  NULL, false, 1);
	result = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											 &isnull), false, -1);
	privileged_end(priv);
	spi_finish();
	return result;
}

Datum
docextract_approve(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Datum		id;
	Privileged	priv;
	Template	t;
	char	   *err;
	char	   *rules;
	char	   *data_text;
	char	   *validation_text;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("approve needs an extraction_id")));
	id = PG_GETARG_DATUM(0);
	spi_connect();
	privileged_begin(&priv);
	lock_for_approval(id, caller);
	/* No template fitted: the reviewer picks one, the extraction goes back to the queue. */
	if (classify_pick(id, caller, PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1)))
	{
		PG_RETURN_DATUM(approval_result(id, &priv));
	}
	spi_execute_with_args("SELECT r.data::text, t.schema_definition::text, t.prompt_set::text,"
						  "       t.validation_rules::text"
						  "  FROM docextract.results r JOIN docextract.templates t ON t.id = r.template_id"
						  " WHERE r.extraction_id = $1",
						  1, (Oid[]) {UUIDOID}, &id, NULL, true, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extraction %s awaits approval but has no result", uuid_text(id))));
	rules = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	err = template_parse(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
						 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3), rules, &t);
	if (err)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the extraction's template is no longer valid: %s", err)));
	review_data(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
				PG_ARGISNULL(1) ? NULL : jsonb_text(PG_GETARG_DATUM(1)), &t, rules,
				&data_text, &validation_text);

	spi_execute_with_args("UPDATE docextract.results SET data = $2::jsonb, validation = $3::jsonb,"
						  "  corrections = $4 WHERE extraction_id = $1",
						  4, (Oid[]) {UUIDOID, TEXTOID, TEXTOID, JSONBOID},
						  (Datum[]) {id, CStringGetTextDatum(data_text),
							  CStringGetTextDatum(validation_text),
							  PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1)},
						  PG_ARGISNULL(1) ? "   n" : "    ", false, 0);
	spi_execute_with_args("UPDATE docextract.extractions"
						  " SET status = 'completed', completed_at = clock_timestamp(),"
						  "     approved_by = $2::regrole, approved_at = clock_timestamp()"
						  " WHERE id = $1",
						  2, (Oid[]) {UUIDOID, OIDOID}, (Datum[]) {id, ObjectIdGetDatum(caller)},
						  NULL, false, 0);
	PG_RETURN_DATUM(approval_result(id, &priv));
}

/* The rules of a template the caller can see, run against data. */
Datum
docextract_validate_data(PG_FUNCTION_ARGS)
{
	Datum		id = PG_GETARG_DATUM(0);
	json_object *data = json_tokener_parse(jsonb_text(PG_GETARG_DATUM(1)));
	json_object *validation = NULL;
	char	   *text;
	bool		passed;

	spi_connect();
	/* As the caller: row-level security decides which templates exist. */
	spi_execute_with_args("SELECT validation_rules::text FROM docextract.templates WHERE id = $1",
						  1, (Oid[]) {UUIDOID}, &id, NULL, true, 1);
	if (SPI_processed == 0)
	{
		json_object_put(data);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("template %s does not exist", uuid_text(id))));
	}
	if (!json_object_is_type(data, json_type_object))
	{
		json_object_put(data);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("data must be an object like {\"general\": {...}, \"table\": [...]}")));
	}
	validation = validation_run(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
								data, &passed);
	text = pstrdup(json_object_to_json_string_ext(validation, JSON_C_TO_STRING_PLAIN));
	json_object_put(validation);
	json_object_put(data);
	spi_finish();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}
