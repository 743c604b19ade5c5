/*
 * provider_gemini.c: Google's generateContent.
 *
 * POST {base_url}/models/{model}:generateContent with x-goog-api-key; the
 * PDF or image goes inline (base64 inline_data with its mime type), and the
 * answer is constrained with responseMimeType application/json plus a
 * responseSchema in Gemini's OpenAPI subset.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

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
	json_object *cands,
			   *cand,
			   *content,
			   *parts,
			   *v;
	StringInfoData text;

	if (json_object_object_get_ex(root, "promptFeedback", &v) &&
		json_object_object_get_ex(v, "blockReason", &v))
		return *err = psprintf("the prompt was blocked: %s", json_object_get_string(v)), NULL;
	if (!json_object_object_get_ex(root, "candidates", &cands) ||
		!json_object_is_type(cands, json_type_array) || json_object_array_length(cands) < 1 ||
		!json_object_is_type(cand = json_object_array_get_idx(cands, 0), json_type_object))
		return *err = pstrdup("the response has no candidates[0]"), NULL;
	if (json_object_object_get_ex(cand, "finishReason", &v) &&
		strcmp(json_object_get_string(v), "STOP") != 0)
		return *err = psprintf("the model stopped early: %s", json_object_get_string(v)), NULL;
	if (!json_object_object_get_ex(cand, "content", &content) ||
		!json_object_object_get_ex(content, "parts", &parts) ||
		!json_object_is_type(parts, json_type_array))
		return *err = pstrdup("the response's candidate has no content parts"), NULL;
	initStringInfo(&text);
	for (size_t i = 0; i < json_object_array_length(parts); i++)
		if (json_object_object_get_ex(json_object_array_get_idx(parts, i), "text", &v))
			appendStringInfoString(&text, json_object_get_string(v));
	return text.data;
}

static char *
gemini_parse(const char *body, size_t len, ProviderReply *reply)
{
	json_object *root = json_tokener_parse(body);
	json_object *usage,
			   *v;
	char	   *err = NULL;
	char	   *text;

	memset(reply, 0, sizeof(*reply));
	if (root == NULL || !json_object_is_type(root, json_type_object))
		err = pstrdup("the response is not a JSON object");
	else if ((text = candidate_text(root, &err)) != NULL)
		reply->output = answer_object(text, &err);
	if (err == NULL && json_object_object_get_ex(root, "usageMetadata", &usage))
	{
		if (json_object_object_get_ex(usage, "promptTokenCount", &v))
			reply->input_tokens = json_object_get_int64(v);
		if (json_object_object_get_ex(usage, "candidatesTokenCount", &v))
			reply->output_tokens = json_object_get_int64(v);
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
