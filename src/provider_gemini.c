/*
 * provider_gemini.c: Google's generateContent.
 *
 * POST {base_url}/models/{model}:generateContent with x-goog-api-key; the
 * PDF or image goes inline (base64 inline_data with its mime type), and the
 * answer is constrained with responseMimeType application/json plus a
 * responseSchema in Gemini's OpenAPI subset.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "document.h"
#include "provider.h"
#include "template.h"

#include "lib/stringinfo.h"

#include <curl/curl.h>

static json_object *
text_part(const char *text)
{
	json_object *p = json_object_new_object();

	json_object_object_add(p, "text", json_object_new_string(text));
	return p;
}

static json_object *
inline_part(const DocumentInput *d)
{
	json_object *p = json_object_new_object();
	json_object *data = json_object_new_object();

	json_object_object_add(data, "mime_type", json_object_new_string(d->content_type));
	json_object_object_add(data, "data", json_object_new_string(base64_encode(d->data, d->len)));
	json_object_object_add(p, "inline_data", data);
	return p;
}

static json_object *
generation_config(const ModelConfig *m, const Template *t, const ExtractOptions *o)
{
	json_object *g = json_object_new_object();

	json_object_object_add(g, "responseMimeType", json_object_new_string("application/json"));
	json_object_object_add(g, "responseSchema", template_schema(t, SCHEMA_OPENAPI, o->per_key_attribution));
	if (o->has_temperature || m->has_temperature)
		json_object_object_add(g, "temperature", json_number_from_double(
								   o->has_temperature ? o->temperature : m->temperature));
	if (o->has_seed)
		json_object_object_add(g, "seed", json_object_new_int64(o->seed));
	return g;
}

static void
gemini_build(const ModelConfig *m, const Template *t, const DocumentInput *d,
			 const ExtractOptions *o, char **url, struct curl_slist **headers, char **body)
{
	json_object *req = json_object_new_object();
	json_object *system = json_object_new_object();
	json_object *sparts = json_object_new_array();
	json_object *contents = json_object_new_array();
	json_object *user = json_object_new_object();
	json_object *parts = json_object_new_array();

	json_object_array_add(sparts, text_part(template_system_prompt(t, o->additional_instructions, o->per_key_attribution)));
	json_object_object_add(system, "parts", sparts);
	json_object_object_add(req, "systemInstruction", system);
	json_object_array_add(parts, text_part(document_intro(d)));
	json_object_array_add(parts, inline_part(d));
	json_object_object_add(user, "role", json_object_new_string("user"));
	json_object_object_add(user, "parts", parts);
	json_object_array_add(contents, user);
	json_object_object_add(req, "contents", contents);
	json_object_object_add(req, "generationConfig", generation_config(m, t, o));

	*url = psprintf("%s/models/%s:generateContent", m->base_url, m->model);
	*headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (m->api_key)
		*headers = append_secret_header(*headers, "x-goog-api-key", m->api_key);
	*body = request_body(req);
}

/* The text of candidates[0].content.parts, concatenated; NULL and *err if none. */
static char *
candidate_text(json_object *root, char **err)
{
	json_object *cands = json_member(root, "candidates", json_type_array);
	json_object *cand;
	json_object *parts;
	const char *v;
	StringInfoData text;

	if ((v = json_member_string(json_member(root, "promptFeedback", json_type_object),
								"blockReason")) != NULL)
		return *err = psprintf("the prompt was blocked: %s", answer_excerpt(v, -1, ANSWER_TEXT_MAX)), NULL;
	if (cands == NULL || json_object_array_length(cands) < 1 ||
		!json_object_is_type(cand = json_object_array_get_idx(cands, 0), json_type_object))
		return *err = pstrdup("the response has no candidates[0] object"), NULL;
	if ((v = json_member_string(cand, "finishReason")) != NULL && strcmp(v, "STOP") != 0)
		return *err = psprintf("the model stopped early: %s", answer_excerpt(v, -1, ANSWER_TEXT_MAX)), NULL;
	parts = json_member(json_member(cand, "content", json_type_object), "parts", json_type_array);
	if (parts == NULL)
		return *err = pstrdup("the response's candidate has no content parts"), NULL;
	initStringInfo(&text);
	for (size_t i = 0; i < json_object_array_length(parts); i++)
		if ((v = json_member_string(json_object_array_get_idx(parts, i), "text")) != NULL)
			appendStringInfoString(&text, v);
	if (text.len == 0)
		return *err = pstrdup("the response's candidate has no text part"), NULL;
	return text.data;
}

static char *
gemini_parse(const char *body, size_t len, ProviderReply *reply)
{
	char	   *err = NULL;
	json_object *root = answer_parse(body, len, &err);
	json_object *usage;
	char	   *text;

	memset(reply, 0, sizeof(*reply));
	if (root == NULL)
		return answer_failure("the response is not a JSON object", err);
	if (!json_object_is_type(root, json_type_object))
		err = pstrdup("the response is not a JSON object");
	else if ((text = candidate_text(root, &err)) != NULL)
		reply->output = answer_object(text, &err);
	if (err == NULL)
	{
		usage = json_member(root, "usageMetadata", json_type_object);
		reply->input_tokens = json_member_count(usage, "promptTokenCount");
		reply->output_tokens = json_member_count(usage, "candidatesTokenCount");
	}
	json_object_put(root);
	return err;
}

const Provider gemini_provider = {
	.name = "gemini",
	.build = gemini_build,
	.parse = gemini_parse,
	.error_text = provider_error_message,
};
