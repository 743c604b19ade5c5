/*
 * provider_openai.c: any OpenAI-compatible /chat/completions server.
 *
 * The document goes as the text poppler finds in it (the default), or, when
 * the model's options say document_mode = "file", as a base64 file part;
 * images always go as image_url data URLs.  The answer is constrained with
 * response_format json_schema (strict).
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "document.h"
#include "parser.h"
#include "provider.h"
#include "template.h"

#include "lib/stringinfo.h"

#include <curl/curl.h>


static json_object *
text_part(const char *text)
{
	json_object *p = json_object_new_object();

	json_object_object_add(p, "type", json_object_new_string("text"));
	json_object_object_add(p, "text", json_object_new_string(text));
	return p;
}

static char *
data_url(const DocumentInput *d)
{
	return psprintf("data:%s;base64,%s", d->content_type, base64_encode(d->data, d->len));
}

/* Which pages have no text and follow as images, for the prompt. */
static char *
scans_note(const DocumentInput *d)
{
	StringInfoData s;

	if (d->nscans == 0)
		return "";
	initStringInfo(&s);
	appendStringInfo(&s, " (page%s ", d->nscans == 1 ? "" : "s");
	for (int i = 0; i < d->nscans; i++)
		appendStringInfo(&s, "%s%d", i == 0 ? "" : ", ", d->scans[i].page);
	appendStringInfo(&s, " %s no text layer: %s, in page order, after the text)",
					 d->nscans == 1 ? "has" : "have",
					 d->nscans == 1 ? "it follows as an image" : "they follow as images");
	return s.data;
}

/* The text, then an image part per page without text. */
static json_object *
with_scans(const char *text, const DocumentInput *d)
{
	json_object *parts = json_object_new_array();

	json_object_array_add(parts, text_part(text));
	for (int i = 0; i < d->nscans; i++)
	{
		json_object *part = json_object_new_object();
		json_object *inner = json_object_new_object();

		json_object_object_add(part, "type", json_object_new_string("image_url"));
		json_object_object_add(inner, "url", json_object_new_string(
								   psprintf("data:image/png;base64,%s",
											base64_encode(d->scans[i].png, d->scans[i].len))));
		json_object_object_add(part, "image_url", inner);
		json_object_array_add(parts, part);
	}
	return parts;
}

/* The user message: the document, as text or as a file/image part. */
static json_object *
user_content(const ModelConfig *m, const DocumentInput *d)
{
	bool		is_pdf = strcmp(d->content_type, CONTENT_TYPE_PDF) == 0;
	json_object *parts;
	json_object *part;
	json_object *inner;

	if (is_pdf && !m->send_file)
	{
		/* Before any json-c allocation: parsing may raise an error. */
		const char *text = d->text ? d->text : pdf_text(d->data, d->len);
		char	   *intro = psprintf("Document \"%s\" (%d page%s). Its text, pages "
									 "separated by form feeds%s:\n\n%s",
									 d->filename, d->page_count, d->page_count == 1 ? "" : "s",
									 scans_note(d), text);

		return d->nscans == 0 ? json_object_new_string(intro) : with_scans(intro, d);
	}
	parts = json_object_new_array();
	part = json_object_new_object();
	inner = json_object_new_object();
	json_object_array_add(parts, text_part(document_intro(d)));
	if (is_pdf)
	{
		json_object_object_add(part, "type", json_object_new_string("file"));
		json_object_object_add(inner, "filename", json_object_new_string(d->filename));
		json_object_object_add(inner, "file_data", json_object_new_string(data_url(d)));
		json_object_object_add(part, "file", inner);
	}
	else
	{
		json_object_object_add(part, "type", json_object_new_string("image_url"));
		json_object_object_add(inner, "url", json_object_new_string(data_url(d)));
		json_object_object_add(part, "image_url", inner);
	}
	json_object_array_add(parts, part);
	return parts;
}

static json_object *
message(const char *role, json_object *content)
{
	json_object *msg = json_object_new_object();

	json_object_object_add(msg, "role", json_object_new_string(role));
	json_object_object_add(msg, "content", content);
	return msg;
}

static void
openai_build(const ModelConfig *m, const Template *t, const DocumentInput *d,
			 const ExtractOptions *o, char **url, struct curl_slist **headers, char **body)
{
	json_object *req = json_object_new_object();
	json_object *messages = json_object_new_array();
	json_object *format = json_object_new_object();
	json_object *schema = json_object_new_object();

	json_object_object_add(req, "model", json_object_new_string(m->model));
	json_object_array_add(messages, message("system", json_object_new_string(
												template_system_prompt(t, o->additional_instructions, o->per_key_attribution))));
	json_object_array_add(messages, message("user", user_content(m, d)));
	json_object_object_add(req, "messages", messages);

	json_object_object_add(schema, "name", json_object_new_string("extraction"));
	json_object_object_add(schema, "strict", json_object_new_boolean(1));
	json_object_object_add(schema, "schema", template_json_schema(t, o->per_key_attribution));
	json_object_object_add(format, "type", json_object_new_string("json_schema"));
	json_object_object_add(format, "json_schema", schema);
	json_object_object_add(req, "response_format", format);
	if (o->has_temperature || m->has_temperature)
		json_object_object_add(req, "temperature", json_number_from_double(
								   o->has_temperature ? o->temperature : m->temperature));
	if (o->has_seed)
		json_object_object_add(req, "seed", json_object_new_int64(o->seed));

	*url = psprintf("%s/chat/completions", m->base_url);
	*headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (m->api_key)
	{
		char	   *bearer = psprintf("Bearer %s", m->api_key);

		*headers = append_secret_header(*headers, "Authorization", bearer);
		memset(bearer, 0, strlen(bearer));
		pfree(bearer);
	}
	*body = request_body(req);
}

/* choices[0].message, if the answer has one of that shape. */
static json_object *
first_message(json_object *root)
{
	json_object *choices = json_member(root, "choices", json_type_array);

	if (choices == NULL || json_object_array_length(choices) < 1)
		return NULL;
	return json_member(json_object_array_get_idx(choices, 0), "message", json_type_object);
}

static char *
openai_parse(const char *body, size_t len, ProviderReply *reply)
{
	char	   *err = NULL;
	json_object *root = answer_parse(body, len, &err);
	json_object *msg;
	json_object *usage;
	const char *text;

	memset(reply, 0, sizeof(*reply));
	if (root == NULL)
		return answer_failure("the response is not a JSON object", err);
	if (!json_object_is_type(root, json_type_object))
		err = pstrdup("the response is not a JSON object");
	else if ((msg = first_message(root)) == NULL)
		err = pstrdup("the response has no choices[0].message object");
	else if ((text = json_member_string(msg, "refusal")) != NULL)
		err = psprintf("the model refused: %s", answer_excerpt(text, -1, ANSWER_TEXT_MAX));
	else if ((text = json_member_string(msg, "content")) == NULL)
		err = pstrdup("the response's message has no text content");
	else
		reply->output = answer_object(text, &err);
	if (err == NULL)
	{
		usage = json_member(root, "usage", json_type_object);
		reply->input_tokens = json_member_count(usage, "prompt_tokens");
		reply->output_tokens = json_member_count(usage, "completion_tokens");
	}
	json_object_put(root);
	return err;
}

const Provider openai_provider = {
	.name = "openai",
	.build = openai_build,
	.parse = openai_parse,
	.error_text = provider_error_message,
};
