/*
 * templates.c: what to extract.
 *
 * template_parse() turns the three jsonb documents of a template into a
 * Template of palloc'd C structs, or returns a message naming the first
 * offending key.  The same parser checks templates on the way in and reads
 * them in the worker, so what was accepted is exactly what runs.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

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

static const char *const format_names[] = {"text", "number", "date", "boolean", "multiple_choice"};

const char *
format_type_name(FormatType f)
{
	return format_names[f];
}

static bool
valid_identifier(const char *s)
{
	if (!(isalpha((unsigned char) s[0]) || s[0] == '_') || strlen(s) > 63)
		return false;
	for (const char *c = s; *c; c++)
		if (!(isalnum((unsigned char) *c) || *c == '_'))
			return false;
	return true;
}

static bool
is_null(json_object *o)
{
	return o == NULL || json_object_get_type(o) == json_type_null;
}

/* A string member, or NULL when absent or null; *err set if of another type. */
static char *
opt_string(json_object *obj, const char *key, const char *where, char **err)
{
	json_object *v;

	if (!json_object_object_get_ex(obj, key, &v) || is_null(v))
		return NULL;
	if (!json_object_is_type(v, json_type_string))
	{
		*err = psprintf("%s.%s must be a string", where, key);
		return NULL;
	}
	return pstrdup(json_object_get_string(v));
}

static char *
check_known_keys(json_object *obj, const char *where, const char *const *known)
{
	struct json_object_iter it;

	json_object_object_foreachC(obj, it)
	{
		bool		found = false;

		for (int i = 0; known[i] && !found; i++)
			found = strcmp(it.key, known[i]) == 0;
		if (!found)
			return psprintf("%s has an unknown key \"%s\"", where, it.key);
	}
	return NULL;
}

static char *
parse_format(json_object *spec, const char *where, TemplateField *f)
{
	json_object *v;
	const char *name;

	if (!json_object_object_get_ex(spec, "format_type", &v) || is_null(v))
		return psprintf("%s.format_type is missing", where);
	name = json_object_get_string(v);
	for (int i = 0; i < (int) lengthof(format_names); i++)
		if (json_object_is_type(v, json_type_string) && strcmp(name, format_names[i]) == 0)
			f->format = (FormatType) i;
	if (!json_object_is_type(v, json_type_string) ||
		strcmp(name, format_names[f->format]) != 0)
		return psprintf("%s.format_type \"%s\" is not one of text, number, date, boolean, multiple_choice",
						where, name);

	if (!json_object_object_get_ex(spec, "format_options", &v) || is_null(v))
		v = NULL;
	else if (!json_object_is_type(v, json_type_array))
		return psprintf("%s.format_options must be an array of strings", where);
	if (f->format != FORMAT_MULTIPLE_CHOICE)
		return NULL;
	if (v == NULL || json_object_array_length(v) == 0)
		return psprintf("%s.format_options must list the choices of a multiple_choice field", where);
	f->noptions = json_object_array_length(v);
	f->options = palloc(sizeof(char *) * f->noptions);
	for (int i = 0; i < f->noptions; i++)
	{
		json_object *o = json_object_array_get_idx(v, i);

		if (!json_object_is_type(o, json_type_string) || json_object_get_string_len(o) == 0)
			return psprintf("%s.format_options[%d] must be a non-empty string", where, i);
		f->options[i] = pstrdup(json_object_get_string(o));
	}
	return NULL;
}

static char *
check_member_type(json_object *spec, const char *where, const char *key,
				  json_type type, const char *type_name)
{
	json_object *v;

	if (json_object_object_get_ex(spec, key, &v) && !is_null(v) && !json_object_is_type(v, type))
		return psprintf("%s.%s must be %s", where, key, type_name);
	return NULL;
}

static char *
parse_field(const char *part, const char *key, json_object *spec, TemplateField *f)
{
	static const char *const known[] = {"name", "prompt", "field_type", "format_type",
		"format_options", "position", "char_limit", "is_editable", "is_displayed",
	"qbo_mapping", NULL};
	char	   *where = psprintf("schema_definition.%s.%s", part, key);
	char	   *err = NULL;
	const char *field_type;
	json_object *v;

	if (!valid_identifier(key))
		return psprintf("schema_definition.%s has a field key \"%s\" that is not an identifier (letters, digits, _; at most 63)",
						part, key);
	if (!json_object_is_type(spec, json_type_object))
		return psprintf("%s must be an object", where);
	if ((err = check_known_keys(spec, where, known)) != NULL)
		return err;
	memset(f, 0, sizeof(*f));
	f->key = pstrdup(key);
	f->name = opt_string(spec, "name", where, &err);
	f->prompt = opt_string(spec, "prompt", where, &err);
	field_type = opt_string(spec, "field_type", where, &err);
	if (err)
		return err;
	if (f->name == NULL)
		f->name = f->key;
	if (field_type && strcmp(field_type, "general") != 0 && strcmp(field_type, "table") != 0)
		return psprintf("%s.field_type \"%s\" is not one of general, table", where, field_type);
	if ((err = parse_format(spec, where, f)) != NULL ||
		(err = check_member_type(spec, where, "position", json_type_int, "an integer")) ||
		(err = check_member_type(spec, where, "char_limit", json_type_int, "an integer")) ||
		(err = check_member_type(spec, where, "is_editable", json_type_boolean, "a boolean")) ||
		(err = check_member_type(spec, where, "is_displayed", json_type_boolean, "a boolean")) ||
		(err = check_member_type(spec, where, "qbo_mapping", json_type_string, "a string")))
		return err;
	f->position = json_object_object_get_ex(spec, "position", &v) && !is_null(v)
		? json_object_get_int(v) : INT_MAX;
	f->qbo_mapping = opt_string(spec, "qbo_mapping", where, &err);
	if (json_object_object_get_ex(spec, "char_limit", &v) && !is_null(v) &&
		(f->char_limit = json_object_get_int(v)) <= 0)
		return psprintf("%s.char_limit must be a positive integer", where);
	/* Correctable at review unless the template says otherwise. */
	f->editable = !(json_object_object_get_ex(spec, "is_editable", &v) && !is_null(v) &&
					!json_object_get_boolean(v));
	return NULL;
}

static int
field_order(const void *a, const void *b)
{
	const TemplateField *fa = a;
	const TemplateField *fb = b;

	if (fa->position != fb->position)
		return fa->position < fb->position ? -1 : 1;
	return strcmp(fa->key, fb->key);
}

static char *
parse_part(json_object *schema, const char *part, int *n, TemplateField **fields)
{
	json_object *obj;
	char	   *err;
	int			i = 0;
	struct json_object_iter it;

	*n = 0;
	*fields = NULL;
	if (!json_object_object_get_ex(schema, part, &obj) || is_null(obj))
		return NULL;
	if (!json_object_is_type(obj, json_type_object))
		return psprintf("schema_definition.%s must be an object of fields", part);
	*n = json_object_object_length(obj);
	*fields = palloc0(sizeof(TemplateField) * Max(*n, 1));
	json_object_object_foreachC(obj, it)
	{
		if ((err = parse_field(part, it.key, it.val, &(*fields)[i++])) != NULL)
			return err;
	}
	qsort(*fields, *n, sizeof(TemplateField), field_order);
	return NULL;
}

static char *
parse_schema(json_object *schema, Template *t)
{
	static const char *const known[] = {"general_part", "table_part", NULL};
	json_object *table;
	char	   *err;

	if (!json_object_is_type(schema, json_type_object))
		return pstrdup("schema_definition must be an object with general_part and table_part");
	if ((err = check_known_keys(schema, "schema_definition", known)) != NULL ||
		(err = parse_part(schema, "general_part", &t->ngeneral, &t->general)) != NULL ||
		(err = parse_part(schema, "table_part", &t->ntable, &t->table)) != NULL)
		return err;
	t->has_table = json_object_object_get_ex(schema, "table_part", &table) && !is_null(table);
	if (t->ngeneral + t->ntable == 0)
		return pstrdup("schema_definition has no fields: general_part and table_part are both empty");
	if (t->has_table && t->ntable == 0)
		return pstrdup("schema_definition.table_part has no columns (use null for no table)");
	return NULL;
}

static char *
parse_prompts(json_object *p, Template *t)
{
	static const char *const known[] = {"global_instructions", "general_prompt", "table_prompt", NULL};
	char	   *err = NULL;

	if (is_null(p))
		return NULL;
	if (!json_object_is_type(p, json_type_object))
		return pstrdup("prompt_set must be an object");
	if ((err = check_known_keys(p, "prompt_set", known)) != NULL)
		return err;
	t->global_instructions = opt_string(p, "global_instructions", "prompt_set", &err);
	t->general_prompt = opt_string(p, "general_prompt", "prompt_set", &err);
	t->table_prompt = opt_string(p, "table_prompt", "prompt_set", &err);
	return err;
}

static const TemplateField *
find_field(const Template *t, const char *path)
{
	const TemplateField *fields = NULL;
	int			n = 0;
	const char *key = NULL;

	if ((key = after_prefix(path, GENERAL_PATH_PREFIX)) != NULL)
		fields = t->general, n = t->ngeneral;
	else if ((key = after_prefix(path, TABLE_PATH_PREFIX)) != NULL)
		fields = t->table, n = t->ntable;
	for (int i = 0; i < n; i++)
		if (strcmp(fields[i].key, key) == 0)
			return &fields[i];
	return NULL;
}

/* Each element of a path list must name a field (a number field if numeric). */
static char *
check_paths(json_object *list, const char *where, const Template *t, bool numeric, bool required)
{
	if (is_null(list))
		return required ? psprintf("%s is missing", where) : NULL;
	if (!json_object_is_type(list, json_type_array) ||
		(required && json_object_array_length(list) == 0))
		return psprintf("%s must be a non-empty array of field paths", where);
	for (size_t i = 0; i < json_object_array_length(list); i++)
	{
		json_object *p = json_object_array_get_idx(list, i);
		const TemplateField *f;

		if (!json_object_is_type(p, json_type_string))
			return psprintf("%s[%zu] must be a field path string", where, i);
		f = find_field(t, json_object_get_string(p));
		if (f == NULL)
			return psprintf("%s[%zu]: field \"%s\" does not exist in the template (paths look like general_part.total or table_part.amount)",
							where, i, json_object_get_string(p));
		if (numeric && f->format != FORMAT_NUMBER)
			return psprintf("%s[%zu]: field \"%s\" is %s, not a number field",
							where, i, json_object_get_string(p), format_type_name(f->format));
	}
	return NULL;
}

static char *
check_tolerance(json_object *v, const char *where)
{
	char	   *end;
	double		d;

	if (is_null(v))
		return NULL;
	if (json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int))
		d = json_object_get_double(v);
	else if (json_object_is_type(v, json_type_string))
	{
		d = strtod(json_object_get_string(v), &end);
		if (end == json_object_get_string(v) || *end != '\0')
			return psprintf("%s.tolerance \"%s\" is not a number", where, json_object_get_string(v));
	}
	else
		return psprintf("%s.tolerance must be a number", where);
	if (d < 0 || isnan(d))
		return psprintf("%s.tolerance must not be negative", where);
	return NULL;
}

static char *
check_compare_totals(json_object *config, const char *where, const Template *t)
{
	json_object *v = NULL;
	char	   *err;
	char	   *cwhere = psprintf("%s.config", where);

	if (is_null(config) || !json_object_is_type(config, json_type_object))
		return psprintf("%s.config must be an object with set_1 and set_2", where);
	json_object_object_get_ex(config, "set_1", &v);
	if ((err = check_paths(v, psprintf("%s.set_1", cwhere), t, true, true)) != NULL)
		return err;
	v = NULL;
	json_object_object_get_ex(config, "set_2", &v);
	if ((err = check_paths(v, psprintf("%s.set_2", cwhere), t, true, true)) != NULL)
		return err;
	v = NULL;
	json_object_object_get_ex(config, "tolerance", &v);
	if ((err = check_tolerance(v, cwhere)) != NULL)
		return err;
	v = NULL;
	if (!json_object_object_get_ex(config, "alternatives", &v) || is_null(v))
		return NULL;
	if (!json_object_is_type(v, json_type_array))
		return psprintf("%s.alternatives must be an array", cwhere);
	for (size_t i = 0; i < json_object_array_length(v); i++)
	{
		json_object *alt = json_object_array_get_idx(v, i);
		json_object *set2 = NULL;

		if (!json_object_is_type(alt, json_type_object))
			return psprintf("%s.alternatives[%zu] must be an object with set_2", cwhere, i);
		json_object_object_get_ex(alt, "set_2", &set2);
		if ((err = check_paths(set2, psprintf("%s.alternatives[%zu].set_2", cwhere, i),
							   t, true, true)) != NULL)
			return err;
	}
	return NULL;
}

static char *
check_rule(json_object *rule, int i, const Template *t)
{
	static const char *const known[] = {"rule_name", "rule_type", "targets", "config", NULL};
	char	   *where = psprintf("validation_rules.rules[%d]", i);
	char	   *err = NULL;
	char	   *name;
	char	   *type;
	json_object *v = NULL;

	if (!json_object_is_type(rule, json_type_object))
		return psprintf("%s must be an object", where);
	if ((err = check_known_keys(rule, where, known)) != NULL)
		return err;
	name = opt_string(rule, "rule_name", where, &err);
	type = opt_string(rule, "rule_type", where, &err);
	if (err)
		return err;
	if (name == NULL || name[0] == '\0')
		return psprintf("%s.rule_name is missing", where);
	if (type == NULL)
		return psprintf("%s.rule_type is missing", where);
	if (strcmp(type, "required") == 0)
	{
		json_object_object_get_ex(rule, "targets", &v);
		return check_paths(v, psprintf("%s.targets", where), t, false, true);
	}
	if (strcmp(type, "compare_totals") == 0)
	{
		json_object_object_get_ex(rule, "config", &v);
		return check_compare_totals(v, where, t);
	}
	return psprintf("%s.rule_type \"%s\" is not one of required, compare_totals", where, type);
}

static char *
check_rules(json_object *rules, const Template *t)
{
	static const char *const known[] = {"rules", NULL};
	json_object *list;
	char	   *err;

	if (is_null(rules))
		return NULL;
	if (!json_object_is_type(rules, json_type_object))
		return pstrdup("validation_rules must be an object with a rules array");
	if ((err = check_known_keys(rules, "validation_rules", known)) != NULL)
		return err;
	if (!json_object_object_get_ex(rules, "rules", &list) || is_null(list))
		return NULL;
	if (!json_object_is_type(list, json_type_array))
		return pstrdup("validation_rules.rules must be an array");
	for (size_t i = 0; i < json_object_array_length(list); i++)
		if ((err = check_rule(json_object_array_get_idx(list, i), (int) i, t)) != NULL)
			return err;
	return NULL;
}

static json_object *
parse_json_text(const char *text)
{
	return text ? json_tokener_parse(text) : NULL;
}

/*
 * Parse and validate.  Returns NULL and fills *out, or returns the message of
 * the first problem.  Arguments are JSON texts; prompt and rules may be NULL.
 */
char *
template_parse(const char *schema_json, const char *prompt_json,
			   const char *rules_json, Template *out)
{
	json_object *schema = parse_json_text(schema_json);
	json_object *prompts = parse_json_text(prompt_json);
	json_object *rules = parse_json_text(rules_json);
	char	   *err;

	memset(out, 0, sizeof(*out));
	err = parse_schema(schema, out);
	if (err == NULL)
		err = parse_prompts(prompts, out);
	if (err == NULL)
		err = check_rules(rules, out);
	json_object_put(schema);
	json_object_put(prompts);
	json_object_put(rules);
	return err;
}

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
 * active version (an older version of an active template still may).
 */
void
check_template_usable(Datum id)
{
	spi_execute_with_args("SELECT t.name FROM docextract.templates t WHERE t.id = $1"
						  " AND NOT EXISTS (SELECT 1 FROM docextract.templates g"
						  "                  WHERE g.group_id = t.group_id AND g.is_active)",
						  1, (Oid[]) {UUIDOID}, &id, NULL, false, 1);
	if (SPI_processed == 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("template \"%s\" is deactivated",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
				 errhint("Reactivate it with docextract.set_template_active(template_id, true).")));
}
