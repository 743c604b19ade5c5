/*
 * model_options.c: the SQL side of a model's options.
 *
 * add_model() checks a model's options here before storing anything; the
 * worker reads them when it builds a request (job.c).
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "provider.h"

#include "fmgr.h"
#include "utils/jsonb.h"

PG_FUNCTION_INFO_V1(docextract_validate_model_options);

static void
option_error(const char *key, json_object *v, const char *expected)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("model option \"%s\" must be %s, got %s", key, expected,
					json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN))));
}

static void
check_model_option(const char *key, json_object *v)
{
	json_type	t = json_object_get_type(v);
	bool		is_int = t == json_type_int;
	bool		is_num = is_int || t == json_type_double;

	if (strcmp(key, "timeout_ms") == 0 || strcmp(key, "max_concurrency") == 0)
	{
		if (!is_int || json_object_get_int64(v) < 1)
			option_error(key, v, "a positive integer");
	}
	else if (strcmp(key, "requests_per_minute") == 0 || strcmp(key, "retry_backoff_ms") == 0)
	{
		if (!is_int || json_object_get_int64(v) < 0)
			option_error(key, v, "an integer >= 0");
	}
	else if (strcmp(key, "max_retries") == 0)
	{
		if (!is_int || json_object_get_int64(v) < 0 || json_object_get_int64(v) > MAX_RETRIES_CAP)
			option_error(key, v, "an integer from 0 to " CppAsString2(MAX_RETRIES_CAP));
	}
	else if (strcmp(key, "input_price_per_million") == 0 || strcmp(key, "output_price_per_million") == 0)
	{
		if (!is_num || json_object_get_double(v) < 0)
			option_error(key, v, "a price >= 0 (per million tokens)");
	}
	else if (strcmp(key, "temperature") == 0)
	{
		if (!is_num || json_object_get_double(v) < 0 || json_object_get_double(v) > 2)
			option_error(key, v, "a number from 0 to 2");
	}
	else if (strcmp(key, "document_mode") == 0)
	{
		if (t != json_type_string || (strcmp(json_object_get_string(v), "text") != 0 &&
									  strcmp(json_object_get_string(v), "file") != 0))
			option_error(key, v, "\"text\" or \"file\"");
	}
	else if (strcmp(key, "parallel_parts") == 0)
	{
		if (t != json_type_boolean)
			option_error(key, v, "true or false");
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown model option \"%s\"", key),
				 errhint("Model options are timeout_ms, max_concurrency, requests_per_minute, temperature, max_retries, retry_backoff_ms, document_mode, parallel_parts, input_price_per_million, output_price_per_million.")));
}

/* add_model() calls this before storing anything. */
Datum
docextract_validate_model_options(PG_FUNCTION_ARGS)
{
	Jsonb	   *options = PG_GETARG_JSONB_P(0);
	json_object *o = json_tokener_parse(JsonbToCString(NULL, &options->root, VARSIZE(options)));
	struct json_object_iter it;

	PG_TRY();
	{
		if (!json_object_is_type(o, json_type_object))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("model options must be a JSON object")));
		json_object_object_foreachC(o, it)
			check_model_option(it.key, it.val);
	}
	PG_FINALLY();
	{
		json_object_put(o);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}
