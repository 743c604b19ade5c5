/*
 * templates.c: the SQL functions that manage templates.
 *
 * create_template, create_system_template, update_template,
 * template_json_schema and set_template_active check a template with
 * template_parse() (template_parse.c), the parser the worker uses too.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "privileged.h"
#include "spi_checked.h"
#include "template.h"
#include "util.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include <math.h>


PG_FUNCTION_INFO_V1(docextract_create_template);
PG_FUNCTION_INFO_V1(docextract_create_system_template);
PG_FUNCTION_INFO_V1(docextract_update_template);
PG_FUNCTION_INFO_V1(docextract_template_json_schema);
PG_FUNCTION_INFO_V1(docextract_set_template_active);

static char *
jsonb_arg_text(FunctionCallInfo fcinfo, int arg)
{
	Jsonb	   *j;

	if (PG_ARGISNULL(arg))
		return NULL;
	j = PG_GETARG_JSONB_P(arg);
	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

static void
validate_or_error(const char *schema, const char *prompts, const char *rules, Template *t)
{
	char	   *err;

	if (schema == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid template: schema_definition is missing")));
	err = template_parse(schema, prompts, rules, t);
	if (err)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid template: %s", err)));
}

static Datum
spi_uuid_result(void)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

	return SPI_datumTransfer(d, false, UUID_LEN);
}

/* A new template group at version 1; owner_system: no owner (a system template). */
static Datum
create_template(FunctionCallInfo fcinfo, bool system)
{
	Oid			types[7] = {TEXTOID, JSONBOID, JSONBOID, JSONBOID, TEXTOID, OIDOID, OIDOID};
	Datum		values[7];
	char		nulls[7];
	Oid			caller = GetUserId();
	Template	t;
	Privileged	priv;
	Datum		id;

	if (PG_ARGISNULL(0) || VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(0)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid template: name is missing")));
	validate_or_error(jsonb_arg_text(fcinfo, 1), jsonb_arg_text(fcinfo, 2),
					  jsonb_arg_text(fcinfo, 3), &t);
	for (int i = 0; i < 5; i++)
	{
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	values[5] = ObjectIdGetDatum(caller);
	nulls[5] = system ? 'n' : ' ';
	values[6] = ObjectIdGetDatum(caller);
	nulls[6] = ' ';
	if (system && !superuser_arg(caller) && caller != docextract_extension_owner())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create a system template"),
				 errdetail("System templates are created by the extension owner.")));

	spi_connect();
	privileged_begin(&priv);
	spi_execute_with_args("SELECT 1 FROM docextract.templates"
						  " WHERE name = $1 AND is_active AND owner IS NOT DISTINCT FROM $2::regrole",
						  2, (Oid[]) {TEXTOID, OIDOID}, (Datum[]) {values[0], values[5]},
						  (char[]) {' ', nulls[5]}, true, 1);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("template \"%s\" already exists", TextDatumGetCString(values[0])),
				 errhint("Use docextract.update_template() to make a new version of it.")));
	if (spi_execute_with_args(
			"WITH g AS (SELECT gen_random_uuid() AS id)"
			" INSERT INTO docextract.templates (id, group_id, name, schema_definition,"
			"  prompt_set, validation_rules, description, owner, created_by)"
			" SELECT g.id, g.id, $1, $2, $3, $4, $5, $6::regrole, $7::regrole FROM g"
			" RETURNING id",
			7, types, values, nulls, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store template");
	id = spi_uuid_result();
	privileged_end(&priv);
	spi_finish();
	return id;
}

Datum
docextract_create_template(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(create_template(fcinfo, false));
}

Datum
docextract_create_system_template(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(create_template(fcinfo, true));
}

/*
 * Lock the template and check the caller may change it: someone else's is,
 * to the caller, no template at all; a system one is the owner's to change.
 * Leaves the row (is_active, owner, name, version, the group's last
 * version) in SPI_tuptable.
 */
static void
lock_template(Datum id, Oid caller, const char *action)
{
	bool		isnull;
	bool		owner_null;
	HeapTuple	row;
	TupleDesc	desc;

	if (spi_execute_with_args("SELECT is_active, owner::oid, name, version,"
							  "  (SELECT max(version) FROM docextract.templates g"
							  "    WHERE g.group_id = t.group_id)"
							  " FROM docextract.templates t WHERE id = $1 FOR UPDATE",
							  1, (Oid[]) {UUIDOID}, &id, NULL, false, 1) != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not read template %s", uuid_text(id))));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("template %s does not exist",
						uuid_text(id))));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	(void) SPI_getbinval(row, desc, 2, &owner_null);
	if (!owner_null &&
		!caller_can_act_for(caller, DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull))))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("template %s does not exist",
						uuid_text(id))));
	if (owner_null && !superuser_arg(caller) && caller != docextract_extension_owner())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s template \"%s\"", action,
						SPI_getvalue(row, desc, 3))));
}

/* Lock the template and check the caller may make a new version of it. */
static void
lock_template_for_update(Datum id, Oid caller)
{
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;

	lock_template(id, caller, "update");
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	if (!DatumGetBool(SPI_getbinval(row, desc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("template \"%s\" version %s is not the active version",
						SPI_getvalue(row, desc, 3), SPI_getvalue(row, desc, 4)),
				 errhint("Update the active version (version %s) instead.",
						 SPI_getvalue(row, desc, 5))));
}

/* The old version's prompt_set or validation_rules when the caller passes NULL. */
static char *
inherited_json(Datum id, const char *column)
{
	bool		isnull;
	char	   *sql = psprintf("SELECT %s::text FROM docextract.templates WHERE id = $1", column);
	Datum		d;

	spi_execute_with_args(sql, 1, (Oid[]) {UUIDOID}, &id, NULL, true, 1);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? NULL : TextDatumGetCString(d);
}

Datum
docextract_update_template(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Datum		id;
	Datum		newid;
	char	   *prompts;
	char	   *rules;
	Template	t;
	Privileged	priv;
	Datum		values[4];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("update_template needs a template_id")));
	id = PG_GETARG_DATUM(0);

	spi_connect();
	privileged_begin(&priv);
	lock_template_for_update(id, caller);
	prompts = PG_ARGISNULL(2) ? inherited_json(id, "prompt_set") : jsonb_arg_text(fcinfo, 2);
	rules = PG_ARGISNULL(3) ? inherited_json(id, "validation_rules") : jsonb_arg_text(fcinfo, 3);
	validate_or_error(jsonb_arg_text(fcinfo, 1), prompts, rules, &t);

	values[0] = id;
	values[1] = PG_GETARG_DATUM(1);
	values[2] = prompts ? CStringGetTextDatum(prompts) : (Datum) 0;
	values[3] = rules ? CStringGetTextDatum(rules) : (Datum) 0;
	spi_execute_with_args("UPDATE docextract.templates SET is_active = false WHERE id = $1",
						  1, (Oid[]) {UUIDOID}, &id, NULL, false, 0);
	if (spi_execute_with_args(
			"INSERT INTO docextract.templates (group_id, version, parent_id, name, description,"
			"  schema_definition, prompt_set, validation_rules, owner, created_by)"
			" SELECT group_id, version + 1, id, name, description, $2, $3::jsonb, $4::jsonb,"
			"  owner, $5::regrole FROM docextract.templates WHERE id = $1 RETURNING id",
			5, (Oid[]) {UUIDOID, JSONBOID, TEXTOID, TEXTOID, OIDOID},
			(Datum[]) {values[0], values[1], values[2], values[3], ObjectIdGetDatum(caller)},
			(char[]) {' ', ' ', prompts ? ' ' : 'n', rules ? ' ' : 'n', ' '},
			false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store template version");
	newid = spi_uuid_result();
	privileged_end(&priv);
	spi_finish();
	PG_RETURN_DATUM(newid);
}

Datum
docextract_template_json_schema(PG_FUNCTION_ARGS)
{
	Template	t;
	json_object *schema;
	char	   *json_text;

	validate_or_error(jsonb_arg_text(fcinfo, 0), NULL, NULL, &t);
	schema = template_json_schema(&t, false);
	json_text = pstrdup(json_object_to_json_string_ext(schema, JSON_C_TO_STRING_PLAIN));
	json_object_put(schema);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json_text)));
}

/*
 * set_template_active(template_id, active): deactivate a template (its
 * group then has no active version: it is offered to no new extraction),
 * or make this version the group's active one.  True if anything changed.
 */
Datum
docextract_set_template_active(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Datum		id;
	bool		active;
	bool		was_active;
	bool		isnull;
	Privileged	priv;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("set_template_active needs a template_id and true or false")));
	id = PG_GETARG_DATUM(0);
	active = PG_GETARG_BOOL(1);
	spi_connect();
	privileged_begin(&priv);
	lock_template(id, caller, active ? "activate" : "deactivate");
	was_active = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											&isnull));
	/* Then the whole group, so that two activations in one group take turns. */
	if (spi_execute_with_args("SELECT 1 FROM docextract.templates WHERE group_id ="
							  "  (SELECT group_id FROM docextract.templates WHERE id = $1)"
							  " ORDER BY version FOR UPDATE",
							  1, (Oid[]) {UUIDOID}, &id, NULL, false, 0) != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not lock template %s", uuid_text(id))));
	/* One active version per group: the other steps down first. */
	if (active != was_active &&
		((active && spi_execute_with_args("UPDATE docextract.templates SET is_active = false"
										  " WHERE is_active AND group_id ="
										  "  (SELECT group_id FROM docextract.templates WHERE id = $1)",
										  1, (Oid[]) {UUIDOID}, &id, NULL, false, 0) != SPI_OK_UPDATE) ||
		 spi_execute_with_args("UPDATE docextract.templates SET is_active = $2 WHERE id = $1",
							   2, (Oid[]) {UUIDOID, BOOLOID}, (Datum[]) {id, BoolGetDatum(active)},
							   NULL, false, 0) != SPI_OK_UPDATE))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not change template %s", uuid_text(id))));
	privileged_end(&priv);
	spi_finish();
	PG_RETURN_BOOL(active != was_active);
}

/*
 * A template may be used for a new extraction while its group has an
 * active version (an older version of an active template still may); the
 * error when it may not (submit.c checks it).
 */
void
report_template_deactivated(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("template \"%s\" is deactivated", name),
			 errhint("Reactivate it with docextract.set_template_active(template_id, true).")));
}
