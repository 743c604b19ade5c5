/*
 * validation.c: a template's validation rules, run against typed data.
 *
 * The rules were checked when the template was stored (template_parse.c), so
 * every path names a field, and compare_totals paths name number fields.
 * Each rule gives {"rule_name", "rule_type", "passed", "details"}.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "template.h"
#include "util.h"

#include <ctype.h>
#include <math.h>


/* Sums are compared at this precision: 0.1 + 0.2 must equal 0.3. */
#define SUM_EPSILON 1e-9

static json_object *
general_value(json_object *data, const char *key)
{
	json_object *general;
	json_object *v = NULL;

	if (json_object_object_get_ex(data, "general", &general))
		json_object_object_get_ex(general, key, &v);
	return v;
}

static json_object *
table_rows(json_object *data)
{
	json_object *rows = NULL;

	if (json_object_object_get_ex(data, "table", &rows) &&
		json_object_is_type(rows, json_type_array))
		return rows;
	return NULL;
}

static bool
is_blank(json_object *v)
{
	const char *s;

	if (v == NULL || json_object_is_type(v, json_type_null))
		return true;
	if (!json_object_is_type(v, json_type_string))
		return false;
	for (s = json_object_get_string(v); *s; s++)
		if (!isspace((unsigned char) *s))
			return false;
	return true;
}

/* The column a table path ("table_part.amount") names; template_parse() checked the path. */
static const char *
column_of(const char *path)
{
	const char *column = after_prefix(path, TABLE_PATH_PREFIX);

	return column ? column : path;
}

/* A general field is present; a table column is present in every row (and rows exist). */
static bool
path_present(json_object *data, const char *path)
{
	json_object *rows;

	if (after_prefix(path, GENERAL_PATH_PREFIX))
		return !is_blank(general_value(data, after_prefix(path, GENERAL_PATH_PREFIX)));
	rows = table_rows(data);
	if (rows == NULL || json_object_array_length(rows) == 0)
		return false;
	for (size_t i = 0; i < json_object_array_length(rows); i++)
	{
		json_object *cell = NULL;

		json_object_object_get_ex(json_object_array_get_idx(rows, i), column_of(path), &cell);
		if (is_blank(cell))
			return false;
	}
	return true;
}

/* required: every target present.  details.missing lists those that are not. */
static bool
run_required(json_object *rule, json_object *data, json_object *details)
{
	json_object *targets = NULL;
	json_object *missing = json_object_new_array();
	bool		passed;

	json_object_object_get_ex(rule, "targets", &targets);
	for (size_t i = 0; i < json_object_array_length(targets); i++)
	{
		const char *path = json_object_get_string(json_object_array_get_idx(targets, i));

		if (!path_present(data, path))
			json_object_array_add(missing, json_object_new_string(path));
	}
	passed = json_object_array_length(missing) == 0;
	json_object_object_add(details, "missing", missing);
	return passed;
}

/*
 * The sum of a set of paths: a general field's value, or a table column's
 * total (empty cells count 0).  A general field without a value cannot be
 * summed: it goes into missing, and the sum is not to be trusted.
 */
static double
sum_of(json_object *paths, json_object *data, json_object *missing)
{
	double		sum = 0;

	for (size_t i = 0; i < json_object_array_length(paths); i++)
	{
		const char *path = json_object_get_string(json_object_array_get_idx(paths, i));

		if (after_prefix(path, GENERAL_PATH_PREFIX))
		{
			json_object *v = general_value(data, after_prefix(path, GENERAL_PATH_PREFIX));

			if (is_blank(v))
				json_object_array_add(missing, json_object_new_string(path));
			else
				sum += json_object_get_double(v);
		}
		else
		{
			json_object *rows = table_rows(data);

			for (size_t r = 0; rows && r < json_object_array_length(rows); r++)
			{
				json_object *cell = NULL;

				json_object_object_get_ex(json_object_array_get_idx(rows, r), column_of(path), &cell);
				if (!is_blank(cell))
					sum += json_object_get_double(cell);
			}
		}
	}
	return sum;
}

static double
tolerance_of(json_object *config)
{
	json_object *v = NULL;

	if (!json_object_object_get_ex(config, "tolerance", &v) || v == NULL ||
		json_object_is_type(v, json_type_null))
		return 0;
	if (json_object_is_type(v, json_type_string))
		return strtod(json_object_get_string(v), NULL);
	return json_object_get_double(v);
}

/* Rounded for display: sums of money must not print as 0.30000000000000004. */
static json_object *
amount(double d)
{
	return json_number_from_double(rint(d * 1e6) / 1e6);
}

/*
 * compare_totals: |sum(set_1) - sum(set_2)| <= tolerance, or the same with
 * any alternative's set_2.  details: the sums, the difference, the tolerance
 * and each alternative tried.
 */
static bool
run_compare_totals(json_object *rule, json_object *data, json_object *details)
{
	json_object *config,
			   *set1,
			   *set2,
			   *alts = NULL;
	json_object *missing = json_object_new_array();
	double		tolerance,
				sum1,
				sum2;
	bool		passed;

	json_object_object_get_ex(rule, "config", &config);
	json_object_object_get_ex(config, "set_1", &set1);
	json_object_object_get_ex(config, "set_2", &set2);
	tolerance = tolerance_of(config);
	sum1 = sum_of(set1, data, missing);
	sum2 = sum_of(set2, data, missing);
	passed = json_object_array_length(missing) == 0 &&
		fabs(sum1 - sum2) <= tolerance + SUM_EPSILON;
	json_object_object_add(details, "set_1_sum", amount(sum1));
	json_object_object_add(details, "set_2_sum", amount(sum2));
	json_object_object_add(details, "difference", amount(sum1 - sum2));
	json_object_object_add(details, "tolerance", amount(tolerance));

	if (json_object_object_get_ex(config, "alternatives", &alts) &&
		json_object_is_type(alts, json_type_array) && json_object_array_length(alts) > 0)
	{
		json_object *tried = json_object_new_array();

		for (size_t i = 0; i < json_object_array_length(alts); i++)
		{
			json_object *alt = json_object_array_get_idx(alts, i);
			json_object *label = NULL;
			json_object *alt_set2;
			json_object *alt_missing = json_object_new_array();
			json_object *entry = json_object_new_object();
			double		alt_sum;
			bool		alt_passed;

			json_object_object_get_ex(alt, "set_2", &alt_set2);
			json_object_object_get_ex(alt, "label", &label);
			alt_sum = sum_of(alt_set2, data, alt_missing);
			alt_passed = json_object_array_length(alt_missing) == 0 &&
				json_object_array_length(missing) == 0 &&
				fabs(sum1 - alt_sum) <= tolerance + SUM_EPSILON;
			json_object_object_add(entry, "label", label ? json_object_get(label) : NULL);
			json_object_object_add(entry, "set_2_sum", amount(alt_sum));
			json_object_object_add(entry, "difference", amount(sum1 - alt_sum));
			json_object_object_add(entry, "passed", json_object_new_boolean(alt_passed));
			if (json_object_array_length(alt_missing) > 0)
				json_object_object_add(entry, "missing", alt_missing);
			else
				json_object_put(alt_missing);
			json_object_array_add(tried, entry);
			passed = passed || alt_passed;
		}
		json_object_object_add(details, "alternatives", tried);
	}
	if (json_object_array_length(missing) > 0)
		json_object_object_add(details, "missing", missing);
	else
		json_object_put(missing);
	return passed;
}

/*
 * Every rule of rules_json (NULL: none) against data ({"general", "table"}
 * as typed).  Returns the validation array; *all_passed says whether every
 * rule passed.
 */
json_object *
validation_run(const char *rules_json, json_object *data, bool *all_passed)
{
	json_object *rules = rules_json ? json_tokener_parse(rules_json) : NULL;
	json_object *list = NULL;
	json_object *out = json_object_new_array();

	*all_passed = true;
	if (rules && json_object_object_get_ex(rules, "rules", &list) &&
		json_object_is_type(list, json_type_array))
	{
		for (size_t i = 0; i < json_object_array_length(list); i++)
		{
			json_object *rule = json_object_array_get_idx(list, i);
			json_object *name = NULL,
					   *type = NULL;
			json_object *entry = json_object_new_object();
			json_object *details = json_object_new_object();
			bool		passed;

			json_object_object_get_ex(rule, "rule_name", &name);
			json_object_object_get_ex(rule, "rule_type", &type);
			if (strcmp(json_object_get_string(type), "required") == 0)
				passed = run_required(rule, data, details);
			else
				passed = run_compare_totals(rule, data, details);
			json_object_object_add(entry, "rule_name", json_object_get(name));
			json_object_object_add(entry, "rule_type", json_object_get(type));
			json_object_object_add(entry, "passed", json_object_new_boolean(passed));
			json_object_object_add(entry, "details", details);
			json_object_array_add(out, entry);
			*all_passed = *all_passed && passed;
		}
	}
	json_object_put(rules);
	return out;
}
