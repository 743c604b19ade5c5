/*
 * model_options.c: the SQL side of a model's options.
 *
 * add_model() checks a model's options here before storing anything; the
 * worker reads them when it builds a request (job.c).
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "options.h"
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
	const OptionSpec *spec = option_find(model_options, key);

	if (spec == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown model option \"%s\"", key),
				 errhint("Model options are %s.", option_names(model_options))));
	if (!option_value_ok(spec, v))
		option_error(key, v, option_expected(spec));
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
