/*
 * template_parse.c: what to extract.
 *
 * template_parse() turns the three jsonb documents of a template into a
 * Template of palloc'd C structs, or returns a message naming the first
 * offending key.  The same parser checks templates on the way in and reads
 * them in the worker, so what was accepted is exactly what runs.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "template.h"
#include "util.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>

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
