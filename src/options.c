/*
 * options.c: the tables of model and extraction options (options.h), and
 * checking a value against its option's type.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "options.h"
#include "provider.h"

#include "lib/stringinfo.h"

/* In the order the hints list them. */
const OptionSpec model_options[] = {
	{MODEL_OPT_TIMEOUT_MS, OPTION_POSITIVE},
	{MODEL_OPT_MAX_CONCURRENCY, OPTION_POSITIVE},
	{MODEL_OPT_REQUESTS_PER_MINUTE, OPTION_NON_NEGATIVE},
	{MODEL_OPT_TEMPERATURE, OPTION_TEMPERATURE},
	{MODEL_OPT_MAX_RETRIES, OPTION_RETRIES},
	{MODEL_OPT_RETRY_BACKOFF_MS, OPTION_NON_NEGATIVE},
	{MODEL_OPT_DOCUMENT_MODE, OPTION_DOCUMENT_MODE},
	{MODEL_OPT_PARALLEL_PARTS, OPTION_BOOLEAN},
	{MODEL_OPT_INPUT_PRICE, OPTION_PRICE},
	{MODEL_OPT_OUTPUT_PRICE, OPTION_PRICE},
	{NULL, 0}
};

const OptionSpec extraction_options[] = {
	{EXTRACT_OPT_MODEL, OPTION_STRING},
	{EXTRACT_OPT_TEMPERATURE, OPTION_TEMPERATURE},
	{EXTRACT_OPT_SEED, OPTION_INTEGER},
	{EXTRACT_OPT_MAX_RETRIES, OPTION_RETRIES},
	{EXTRACT_OPT_ADDITIONAL_INSTRUCTIONS, OPTION_STRING},
	{EXTRACT_OPT_PER_KEY_ATTRIBUTION, OPTION_BOOLEAN},
	{EXTRACT_OPT_CITATIONS, OPTION_BOOLEAN},
	{EXTRACT_OPT_PARALLEL_PARTS, OPTION_BOOLEAN},
	{EXTRACT_OPT_AUTO_APPROVE, OPTION_BOOLEAN},
	{EXTRACT_OPT_ZERO_RETENTION, OPTION_BOOLEAN},
	{EXTRACT_OPT_FORCE, OPTION_BOOLEAN},
	{EXTRACT_OPT_PAGES, OPTION_STRING},
	{EXTRACT_OPT_SPLIT, OPTION_BOOLEAN},
	{NULL, 0}
};

/* The option of that name, or NULL. */
const OptionSpec *
option_find(const OptionSpec *table, const char *name)
{
	for (const OptionSpec *o = table; o->name; o++)
		if (strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

/* Does the value have the option's type (and lie in its range)? */
bool
option_value_ok(const OptionSpec *spec, json_object *v)
{
	json_type	t = json_object_get_type(v);
	bool		is_int = t == json_type_int;
	bool		is_num = is_int || t == json_type_double;

	switch (spec->type)
	{
		case OPTION_BOOLEAN:
			return t == json_type_boolean;
		case OPTION_STRING:
			return t == json_type_string;
		case OPTION_INTEGER:
			return is_int;
		case OPTION_POSITIVE:
			return is_int && json_object_get_int64(v) >= 1;
		case OPTION_NON_NEGATIVE:
			return is_int && json_object_get_int64(v) >= 0;
		case OPTION_RETRIES:
			return is_int && json_object_get_int64(v) >= 0 &&
				json_object_get_int64(v) <= MAX_RETRIES_CAP;
		case OPTION_TEMPERATURE:
			return is_num && json_object_get_double(v) >= 0 && json_object_get_double(v) <= 2;
		case OPTION_PRICE:
			return is_num && json_object_get_double(v) >= 0;
		case OPTION_DOCUMENT_MODE:
			return t == json_type_string &&
				(strcmp(json_object_get_string(v), DOCUMENT_MODE_TEXT) == 0 ||
				 strcmp(json_object_get_string(v), DOCUMENT_MODE_FILE) == 0);
	}
	return false;
}

/* What a value of the option must be, for messages. */
const char *
option_expected(const OptionSpec *spec)
{
	switch (spec->type)
	{
		case OPTION_BOOLEAN:
			return "true or false";
		case OPTION_STRING:
			return "a string";
		case OPTION_INTEGER:
			return "an integer";
		case OPTION_POSITIVE:
			return "a positive integer";
		case OPTION_NON_NEGATIVE:
			return "an integer >= 0";
		case OPTION_RETRIES:
			return "an integer from 0 to " CppAsString2(MAX_RETRIES_CAP);
		case OPTION_TEMPERATURE:
			return "a number from 0 to 2";
		case OPTION_PRICE:
			return "a price >= 0 (per million tokens)";
		case OPTION_DOCUMENT_MODE:
			return "\"" DOCUMENT_MODE_TEXT "\" or \"" DOCUMENT_MODE_FILE "\"";
	}
	return "valid";
}

/* The table's names, "a, b, c", for hints. */
char *
option_names(const OptionSpec *table)
{
	StringInfoData s;

	initStringInfo(&s);
	for (const OptionSpec *o = table; o->name; o++)
		appendStringInfo(&s, "%s%s", o == table ? "" : ", ", o->name);
	return s.data;
}
