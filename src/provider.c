/*
 * provider.c: what every provider shares: lookup by name, base64 for
 * inline documents, and keeping API keys out of messages.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "common/base64.h"

#include <curl/curl.h>
#include "fmgr.h"
#include "utils/jsonb.h"


const Provider *
provider_lookup(const char *name)
{
	static const Provider *const all[] = {&openai_provider, &gemini_provider, &anthropic_provider};

	for (int i = 0; i < (int) lengthof(all); i++)
		if (strcmp(name, all[i]->name) == 0)
			return all[i];
	return NULL;
}

/*
 * {"error": {"message": "..."}}: the error body of OpenAI, Gemini and
 * Anthropic alike (and of most compatible servers), or {"error": "..."}.
 * NULL if not that.  Clipped to a message's length.
 */
char *
provider_error_message(const char *body, size_t len)
{
	char	   *err;
	json_object *root = answer_parse(body, len, &err);
	const char *text = json_member_string(root, "error");
	char	   *out;

	if (text == NULL)
		text = json_member_string(json_member(root, "error", json_type_object), "message");
	out = text ? answer_excerpt(text, -1, ANSWER_TEXT_MAX) : NULL;
	json_object_put(root);
	return out;
}

/* Append "name: secret" to the headers, wiping the temporary copy. */
struct curl_slist *
append_secret_header(struct curl_slist *headers, const char *name, const char *secret)
{
	char	   *h = psprintf("%s: %s", name, secret);

	headers = curl_slist_append(headers, h);
	memset(h, 0, strlen(h));
	pfree(h);
	return headers;
}

/* The request body as a malloc'd string for libcurl; frees req. */
char *
request_body(json_object *req)
{
	char	   *body = strdup(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN));

	json_object_put(req);
	if (body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory building a request")));
	return body;
}

/* The sentence that introduces the document in every provider's request. */
char *
document_intro(const DocumentInput *d)
{
	return psprintf("Document \"%s\" (%d page%s) follows. Extract the data described in the instructions.",
					d->filename, d->page_count, d->page_count == 1 ? "" : "s");
}

/*
 * The model's answer text as the object the schema asks for: NULL and *err
 * set unless it is a JSON object with a "general" object or (the table-only
 * part of a split extraction) a "table" array.
 */
json_object *
answer_object(const char *text, char **err)
{
	json_object *answer;

	if (text == NULL)
	{
		*err = pstrdup("the model's answer has no text");
		return NULL;
	}
	answer = answer_parse(text, strlen(text), err);
	if (answer == NULL ||
		(json_member(answer, "general", json_type_object) == NULL &&
		 json_member(answer, "table", json_type_array) == NULL))
	{
		json_object_put(answer);
		*err = answer_failure("the model's answer is not a JSON object with a \"general\" object, as the schema requires",
							  answer ? NULL : *err);
		return NULL;
	}
	return answer;
}

/* palloc'd, NUL-terminated base64 of data. */
char *
base64_encode(const char *data, size_t len)
{
	int			enclen = pg_b64_enc_len((int) len);
	char	   *out = palloc(enclen + 1);
	int			n = pg_b64_encode(data, (int) len, out, enclen);

	if (n < 0)
		elog(ERROR, "could not base64-encode %zu bytes", len);
	out[n] = '\0';
	return out;
}

/*
 * A copy of text with every occurrence of secret (and of its first 8+
 * characters, which providers like to echo back "sk-abc12***") replaced.
 */
char *
redact_secret(const char *text, const char *secret)
{
	StringInfoData out;
	size_t		keylen;
	size_t		prefix;

	if (text == NULL)
		return NULL;
	if (secret == NULL || (keylen = strlen(secret)) < 4)
		return pstrdup(text);
	prefix = Min(keylen, 8);
	initStringInfo(&out);
	for (const char *p = text; *p;)
	{
		if (strncmp(p, secret, keylen) == 0)
		{
			appendStringInfoString(&out, "[redacted]");
			p += keylen;
		}
		else if (strncmp(p, secret, prefix) == 0)
		{
			appendStringInfoString(&out, "[redacted]");
			p += prefix;
			while (*p && !isspace((unsigned char) *p) && *p != '"' && *p != '.' && *p != ',')
				p++;
		}
		else
			appendStringInfoChar(&out, *p++);
	}
	return out.data;
}

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
