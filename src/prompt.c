/*
 * prompt.c: what we ask the model.
 *
 * The JSON Schema is strict (every property required, no others), as
 * OpenAI's structured outputs demand; "not found" is expressed as null.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "template.h"

#include "lib/stringinfo.h"


static json_object *
string_array(const char *a, const char *b)
{
	json_object *arr = json_object_new_array();

	json_object_array_add(arr, json_object_new_string(a));
	json_object_array_add(arr, json_object_new_string(b));
	return arr;
}

static const char *
format_hint(const TemplateField *f)
{
	switch (f->format)
	{
		case FORMAT_NUMBER:
			return "a number, without currency symbols or thousands separators";
		case FORMAT_DATE:
			return "a date as YYYY-MM-DD";
		case FORMAT_BOOLEAN:
			return "true or false";
		case FORMAT_MULTIPLE_CHOICE:
			return "exactly one of the listed choices";
		default:
			return "text as written in the document";
	}
}

/*
 * One field.  JSON Schema says "nullable" with a type array; Gemini's
 * OpenAPI subset with upper-case types and "nullable": true.
 */
static json_object *
field_schema(const TemplateField *f, SchemaDialect dialect)
{
	static const char *const json_types[] = {"string", "number", "string", "boolean", "string"};
	static const char *const openapi_types[] = {"STRING", "NUMBER", "STRING", "BOOLEAN", "STRING"};
	json_object *s = json_object_new_object();
	StringInfoData desc;

	if (dialect == SCHEMA_OPENAPI)
	{
		json_object_object_add(s, "type", json_object_new_string(openapi_types[f->format]));
		json_object_object_add(s, "nullable", json_object_new_boolean(1));
	}
	else
		json_object_object_add(s, "type", string_array(json_types[f->format], "null"));
	if (f->format == FORMAT_MULTIPLE_CHOICE)
	{
		json_object *e = json_object_new_array();

		for (int i = 0; i < f->noptions; i++)
			json_object_array_add(e, json_object_new_string(f->options[i]));
		if (dialect == SCHEMA_JSON)
			json_object_array_add(e, NULL);
		else
			json_object_object_add(s, "format", json_object_new_string("enum"));
		json_object_object_add(s, "enum", e);
	}
	initStringInfo(&desc);
	appendStringInfo(&desc, "%s", f->name);
	if (f->prompt && f->prompt[0])
		appendStringInfo(&desc, ": %s", f->prompt);
	appendStringInfo(&desc, " (%s; null if not in the document)", format_hint(f));
	json_object_object_add(s, "description", json_object_new_string(desc.data));
	pfree(desc.data);
	return s;
}

static json_object *
object_schema(const TemplateField *fields, int n, SchemaDialect dialect)
{
	json_object *obj = json_object_new_object();
	json_object *props = json_object_new_object();
	json_object *req = json_object_new_array();
	json_object *order = json_object_new_array();

	json_object_object_add(obj, "type", json_object_new_string(dialect == SCHEMA_JSON ? "object" : "OBJECT"));
	for (int i = 0; i < n; i++)
	{
		json_object_object_add(props, fields[i].key, field_schema(&fields[i], dialect));
		json_object_array_add(req, json_object_new_string(fields[i].key));
		json_object_array_add(order, json_object_new_string(fields[i].key));
	}
	json_object_object_add(obj, "properties", props);
	json_object_object_add(obj, "required", req);
	if (dialect == SCHEMA_JSON)
	{
		json_object_object_add(obj, "additionalProperties", json_object_new_boolean(0));
		json_object_put(order);
	}
	else
		json_object_object_add(obj, "propertyOrdering", order);
	return obj;
}

/* {"confidence": 0-1, "evidence": {"quote", "page"}}: one field's attribution. */
static json_object *
attribution_schema(SchemaDialect dialect)
{
	bool		json = dialect == SCHEMA_JSON;
	json_object *a = json_object_new_object();
	json_object *props = json_object_new_object();
	json_object *ev = json_object_new_object();
	json_object *evprops = json_object_new_object();
	json_object *v;

	v = json_object_new_object();
	json_object_object_add(v, "type", json_object_new_string(json ? "number" : "NUMBER"));
	json_object_object_add(v, "description", json_object_new_string(
							   "how sure you are of the value, from 0 to 1"));
	json_object_object_add(props, "confidence", v);
	v = json_object_new_object();
	if (json)
		json_object_object_add(v, "type", string_array("string", "null"));
	else
	{
		json_object_object_add(v, "type", json_object_new_string("STRING"));
		json_object_object_add(v, "nullable", json_object_new_boolean(1));
	}
	json_object_object_add(v, "description", json_object_new_string(
							   "the text of the document the value comes from, quoted exactly"));
	json_object_object_add(evprops, "quote", v);
	v = json_object_new_object();
	if (json)
		json_object_object_add(v, "type", string_array("integer", "null"));
	else
	{
		json_object_object_add(v, "type", json_object_new_string("INTEGER"));
		json_object_object_add(v, "nullable", json_object_new_boolean(1));
	}
	json_object_object_add(v, "description", json_object_new_string("its page, from 1"));
	json_object_object_add(evprops, "page", v);
	json_object_object_add(ev, "type", json_object_new_string(json ? "object" : "OBJECT"));
	json_object_object_add(ev, "properties", evprops);
	json_object_object_add(ev, "required", string_array("quote", "page"));
	if (json)
		json_object_object_add(ev, "additionalProperties", json_object_new_boolean(0));
	json_object_object_add(props, "evidence", ev);
	json_object_object_add(a, "type", json_object_new_string(json ? "object" : "OBJECT"));
	json_object_object_add(a, "properties", props);
	json_object_object_add(a, "required", string_array("confidence", "evidence"));
	if (json)
		json_object_object_add(a, "additionalProperties", json_object_new_boolean(0));
	return a;
}

/* {"<field>": attribution, ...} for these fields */
static json_object *
attributions_schema(const TemplateField *fields, int n, SchemaDialect dialect)
{
	bool		json = dialect == SCHEMA_JSON;
	json_object *obj = json_object_new_object();
	json_object *props = json_object_new_object();
	json_object *req = json_object_new_array();

	json_object_object_add(obj, "type", json_object_new_string(json ? "object" : "OBJECT"));
	for (int i = 0; i < n; i++)
	{
		json_object_object_add(props, fields[i].key, attribution_schema(dialect));
		json_object_array_add(req, json_object_new_string(fields[i].key));
	}
	json_object_object_add(obj, "properties", props);
	json_object_object_add(obj, "required", req);
	if (json)
		json_object_object_add(obj, "additionalProperties", json_object_new_boolean(0));
	return obj;
}

/* [{"<column>": attribution, ...}]: one entry per line item, in order. */
static json_object *
table_attributions_schema(const Template *t, SchemaDialect dialect)
{
	json_object *arr = json_object_new_object();

	json_object_object_add(arr, "type", json_object_new_string(dialect == SCHEMA_JSON ? "array" : "ARRAY"));
	json_object_object_add(arr, "items", attributions_schema(t->table, t->ntable, dialect));
	return arr;
}

/*
 * {"general": {...}, "table": [{...}]}: the shape of every answer, with
 * "attributions" for the general fields and "table_attributions" for each
 * line item when asked.  The table-only part of a split extraction asks
 * for {"table": [...]}.
 */
json_object *
template_schema(const Template *t, SchemaDialect dialect, bool attributions)
{
	const char *const top[4] = {"general", "table", "attributions", "table_attributions"};
	bool		has_general = t->ngeneral > 0 || !t->has_table;
	json_object *root = json_object_new_object();
	json_object *props = json_object_new_object();
	json_object *req = json_object_new_array();
	bool		json = dialect == SCHEMA_JSON;

	json_object_object_add(root, "type", json_object_new_string(json ? "object" : "OBJECT"));
	/* A part that asks only for the line items has no "general". */
	if (has_general)
	{
		json_object_object_add(props, "general", object_schema(t->general, t->ngeneral, dialect));
		json_object_array_add(req, json_object_new_string("general"));
	}
	if (t->has_table)
	{
		json_object *table = json_object_new_object();

		json_object_object_add(table, "type", json_object_new_string(json ? "array" : "ARRAY"));
		json_object_object_add(table, "items", object_schema(t->table, t->ntable, dialect));
		json_object_object_add(props, "table", table);
		json_object_array_add(req, json_object_new_string("table"));
	}
	if (attributions && has_general)
	{
		json_object_object_add(props, "attributions",
							   attributions_schema(t->general, t->ngeneral, dialect));
		json_object_array_add(req, json_object_new_string("attributions"));
	}
	if (attributions && t->has_table)
	{
		json_object_object_add(props, "table_attributions", table_attributions_schema(t, dialect));
		json_object_array_add(req, json_object_new_string("table_attributions"));
	}
	json_object_object_add(root, "properties", props);
	json_object_object_add(root, "required", req);
	if (json)
		json_object_object_add(root, "additionalProperties", json_object_new_boolean(0));
	else
	{
		json_object *order = json_object_new_array();

		for (int i = 0; i < 4; i++)
			if ((i == 0 && has_general) || (i == 1 && t->has_table) ||
				(i == 2 && attributions && has_general) || (i == 3 && attributions && t->has_table))
				json_object_array_add(order, json_object_new_string(top[i]));
		json_object_object_add(root, "propertyOrdering", order);
	}
	return root;
}

json_object *
template_json_schema(const Template *t, bool attributions)
{
	return template_schema(t, SCHEMA_JSON, attributions);
}

static void
append_fields(StringInfo s, const TemplateField *fields, int n)
{
	for (int i = 0; i < n; i++)
	{
		const TemplateField *f = &fields[i];

		appendStringInfo(s, "- %s (\"%s\"): %s", f->key, f->name, format_hint(f));
		if (f->format == FORMAT_MULTIPLE_CHOICE)
		{
			appendStringInfoString(s, " [");
			for (int j = 0; j < f->noptions; j++)
				appendStringInfo(s, "%s\"%s\"", j ? ", " : "", f->options[j]);
			appendStringInfoChar(s, ']');
		}
		if (f->prompt && f->prompt[0])
			appendStringInfo(s, ". %s", f->prompt);
		appendStringInfoChar(s, '\n');
	}
}

/* The system prompt: the template's instructions, then every field. */
char *
template_system_prompt(const Template *t, const char *additional, bool attributions)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoString(&s, "You extract structured data from a document. Answer with JSON "
						   "that follows the given schema. Use null for any value that is not "
						   "in the document; never invent values.\n");
	if (t->global_instructions)
		appendStringInfo(&s, "\n%s\n", t->global_instructions);
	if (t->ngeneral > 0)
	{
		appendStringInfo(&s, "\n%s\nFields of \"general\":\n",
						 t->general_prompt ? t->general_prompt
						 : "Extract these fields from the document as a whole.");
		append_fields(&s, t->general, t->ngeneral);
	}
	if (t->has_table)
	{
		appendStringInfo(&s, "\n%s\nColumns of each row of \"table\":\n",
						 t->table_prompt ? t->table_prompt
						 : "Extract every line item of the document's table, one row each, in order.");
		append_fields(&s, t->table, t->ntable);
	}
	if (attributions && (t->ngeneral > 0 || !t->has_table))
		appendStringInfoString(&s, "\nFor every field of \"general\", also give in \"attributions\" "
							   "your confidence in the value (0 to 1) and its evidence: the text of "
							   "the document it comes from, quoted exactly, and its page.\n");
	if (attributions && t->has_table)
		appendStringInfoString(&s, "\nFor every row of \"table\", give in \"table_attributions\" "
							   "(one entry per row, in the same order) the same for each column: "
							   "your confidence and the quoted text with its page.\n");
	if (additional && additional[0])
		appendStringInfo(&s, "\nAdditional instructions: %s\n", additional);
	return s.data;
}
