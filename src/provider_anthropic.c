/*
 * provider_anthropic.c: Anthropic's Messages API.
 *
 * POST {base_url}/messages with x-api-key and anthropic-version; the PDF goes
 * as a base64 document block, an image as an image block.  Structured output
 * comes from a single tool whose input_schema is the template's schema, and a
 * tool_choice that forces it.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "document.h"
#include "provider.h"
#include "template.h"

#include <curl/curl.h>

#define ANTHROPIC_VERSION "2023-06-01"
#define TOOL_NAME "record_extraction"
#define MAX_TOKENS 8192

static json_object *
source_block(const DocumentInput *d)
{
	bool		pdf = strcmp(d->content_type, CONTENT_TYPE_PDF) == 0;
	json_object *block = json_object_new_object();
	json_object *source = json_object_new_object();

	json_object_object_add(block, "type", json_object_new_string(pdf ? "document" : "image"));
	json_object_object_add(source, "type", json_object_new_string("base64"));
	json_object_object_add(source, "media_type", json_object_new_string(d->content_type));
	json_object_object_add(source, "data", json_object_new_string(base64_encode(d->data, d->len)));
	json_object_object_add(block, "source", source);
	return block;
}

static json_object *
text_block(const char *text)
{
	json_object *block = json_object_new_object();

	json_object_object_add(block, "type", json_object_new_string("text"));
	json_object_object_add(block, "text", json_object_new_string(text));
	return block;
}

static json_object *
extraction_tool(const Template *t, bool attributions)
{
	json_object *tools = json_object_new_array();
	json_object *tool = json_object_new_object();

	json_object_object_add(tool, "name", json_object_new_string(TOOL_NAME));
	json_object_object_add(tool, "description", json_object_new_string(
							   "Record the data extracted from the document, following the schema."));
	json_object_object_add(tool, "input_schema", template_json_schema(t, attributions));
	json_object_array_add(tools, tool);
	return tools;
}

static void
anthropic_build(const ModelConfig *m, const Template *t, const DocumentInput *d,
				const ExtractOptions *o, char **url, struct curl_slist **headers, char **body)
{
	json_object *req = json_object_new_object();
	json_object *messages = json_object_new_array();
	json_object *user = json_object_new_object();
	json_object *content = json_object_new_array();
	json_object *choice = json_object_new_object();

	json_object_object_add(req, "model", json_object_new_string(m->model));
	json_object_object_add(req, "max_tokens", json_object_new_int(MAX_TOKENS));
	json_object_object_add(req, "system", json_object_new_string(
							   template_system_prompt(t, o->additional_instructions, o->per_key_attribution)));
	json_object_array_add(content, source_block(d));
	json_object_array_add(content, text_block(document_intro(d)));
	json_object_object_add(user, "role", json_object_new_string("user"));
	json_object_object_add(user, "content", content);
	json_object_array_add(messages, user);
	json_object_object_add(req, "messages", messages);
	json_object_object_add(req, "tools", extraction_tool(t, o->per_key_attribution));
	json_object_object_add(choice, "type", json_object_new_string("tool"));
	json_object_object_add(choice, "name", json_object_new_string(TOOL_NAME));
	json_object_object_add(req, "tool_choice", choice);
	if (o->has_temperature || m->has_temperature)
		json_object_object_add(req, "temperature", json_number_from_double(
								   o->has_temperature ? o->temperature : m->temperature));

	*url = psprintf("%s/messages", m->base_url);
	*headers = curl_slist_append(NULL, "Content-Type: application/json");
	*headers = curl_slist_append(*headers, "anthropic-version: " ANTHROPIC_VERSION);
	if (m->api_key)
		*headers = append_secret_header(*headers, "x-api-key", m->api_key);
	*body = request_body(req);
}

/* The input of the record_extraction tool_use block, as JSON text. */
static char *
tool_input(json_object *root, char **err)
{
	json_object *content = json_member(root, "content", json_type_array);
	const char *stop = json_member_string(root, "stop_reason");

	if (stop && strcmp(stop, "max_tokens") == 0)
		return *err = pstrdup("the answer was cut off at max_tokens"), NULL;
	if (content == NULL)
		return *err = pstrdup("the response has no content blocks"), NULL;
	for (size_t i = 0; i < json_object_array_length(content); i++)
	{
		json_object *block = json_object_array_get_idx(content, i);
		const char *type = json_member_string(block, "type");
		json_object *input = json_member(block, "input", json_type_object);

		if (type == NULL || strcmp(type, "tool_use") != 0)
			continue;
		if (input == NULL)
			return *err = pstrdup("the " TOOL_NAME " tool's input is not a JSON object"), NULL;
		return pstrdup(json_object_to_json_string_ext(input, JSON_C_TO_STRING_PLAIN));
	}
	return *err = pstrdup("the model did not call the " TOOL_NAME " tool"), NULL;
}

static char *
anthropic_parse(const char *body, size_t len, ProviderReply *reply)
{
	char	   *err = NULL;
	json_object *root = answer_parse(body, len, &err);
	json_object *usage;
	char	   *input;

	memset(reply, 0, sizeof(*reply));
	if (root == NULL)
		return answer_failure("the response is not a JSON object", err);
	if (!json_object_is_type(root, json_type_object))
		err = pstrdup("the response is not a JSON object");
	else if ((input = tool_input(root, &err)) != NULL)
		reply->output = answer_object(input, &err);
	if (err == NULL)
	{
		usage = json_member(root, "usage", json_type_object);
		reply->input_tokens = json_member_count(usage, "input_tokens");
		reply->output_tokens = json_member_count(usage, "output_tokens");
	}
	json_object_put(root);
	return err;
}

const Provider anthropic_provider = {
	.name = "anthropic",
	.build = anthropic_build,
	.parse = anthropic_parse,
	.error_text = provider_error_message,
};
