/*
 * classify_candidates.c: the templates a role may classify a document among.
 *
 * A role may use its own templates, those of the roles it is a member of,
 * and system templates (owner NULL): the rule of the templates_visible
 * policy and of check_visible(), written out here so that it holds
 * whoever runs it (the worker is a superuser, whom row-level security
 * does not filter).  Only active versions are offered.
 *
 * The list is bounded (CLASSIFY_MAX_CANDIDATES templates, each name,
 * description and field list cut) so that a role with many templates, or
 * long descriptions, cannot make the request unbounded.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "classify.h"
#include "privileged.h"
#include "queue.h"
#include "settings.h"
#include "spi_checked.h"
#include "template.h"
#include "util.h"
#include "workerset.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

/* How much of each candidate the model is shown. */
#define NAME_MAX_CHARS 100
#define DESCRIPTION_MAX_CHARS 300
#define FIELDS_MAX 40

static const char *const candidates_sql =
"SELECT t.id::text, t.name, t.description, t.owner IS NULL, " TEMPLATE_ROW_COLUMNS
"  FROM docextract.templates t"
" WHERE t.is_active"
"   AND " TEMPLATE_USABLE_BY("$1")
" ORDER BY t.owner IS NULL, t.name, t.created_at, t.id"
" LIMIT " CppAsString2(CLASSIFY_MAX_CANDIDATES);

/* s cut to at most max bytes, at a character boundary. */
static char *
clipped(const char *s, int max)
{
	int			len;

	if (s == NULL)
		return NULL;
	len = strlen(s);
	if (len <= max)
		return pstrdup(s);
	len = pg_mbcliplen(s, len, max);
	return psprintf("%.*s...", len, s);
}

/* One part's fields as JSON objects, appended to arr and to the prompt line. */
static void
add_fields(json_object *arr, StringInfo line, const TemplateField *f, int n, const char *part)
{
	for (int i = 0; i < n && json_object_array_length(arr) < FIELDS_MAX; i++)
	{
		json_object *o = json_object_new_object();
		char	   *name = clipped(f[i].name, NAME_MAX_CHARS);

		json_object_object_add(o, "key", json_object_new_string(f[i].key));
		json_object_object_add(o, "name", json_object_new_string(name));
		json_object_object_add(o, "part", json_object_new_string(part));
		json_object_object_add(o, "format_type",
							   json_object_new_string(format_type_name(f[i].format)));
		json_object_array_add(arr, o);
		appendStringInfo(line, "%s%s%s", json_object_array_length(arr) > 1 ? ", " : "", name,
						 strcmp(part, "table") == 0 ? " (line items)" : "");
	}
}

/*
 * One candidate: its JSON object, and its lines of the prompt.  Its parsed
 * template is held by holder (template_cache.c).
 */
static json_object *
candidate(int index, HeapTuple tup, TupleDesc desc, StringInfo prompt, MemoryContext holder)
{
	json_object *o = json_object_new_object();
	json_object *fields = json_object_new_array();
	char	   *name = clipped(SPI_getvalue(tup, desc, 2), NAME_MAX_CHARS);
	char	   *description = clipped(SPI_getvalue(tup, desc, 3), DESCRIPTION_MAX_CHARS);
	bool		isnull;
	bool		system = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	char	   *label = psprintf("%d. %s", index, name);
	StringInfoData line;
	TemplateRow row;
	const ParsedTemplate *p;

	initStringInfo(&line);
	/* Stored templates were validated; one that no longer parses lists no fields. */
	template_row_read(tup, desc, 5, false, &row);
	p = template_cache_get(&row, holder);
	if (p->err == NULL)
	{
		add_fields(fields, &line, p->tmpl.general, p->tmpl.ngeneral, "general");
		add_fields(fields, &line, p->tmpl.table, p->tmpl.has_table ? p->tmpl.ntable : 0, "table");
	}
	json_object_object_add(o, "index", json_object_new_int(index));
	json_object_object_add(o, "label", json_object_new_string(label));
	json_object_object_add(o, "id", json_object_new_string(SPI_getvalue(tup, desc, 1)));
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "description",
						   description ? json_object_new_string(description) : NULL);
	json_object_object_add(o, "system", json_object_new_boolean(system));
	json_object_object_add(o, "fields", fields);
	appendStringInfo(prompt, "\n%s\n", label);
	if (description)
		appendStringInfo(prompt, "   Description: %s\n", description);
	appendStringInfo(prompt, "   Fields: %s\n", line.len > 0 ? line.data : "(none)");
	return o;
}

/*
 * The active templates role may use, as a JSON array text of
 * {"index", "label", "id", "name", "description", "system", "fields":
 * [{"key", "name", "part", "format_type"}]}, its own (and its groups')
 * first, then system ones, by name; index counts from 1 and label is
 * "<index>. <name>", what the model answers with.  *n: how many.  If
 * prompt is not NULL, *prompt is the text presenting them to the model.
 * Allocated in the caller's memory context.
 */
char *
classify_candidates(Oid role, int *n, char **prompt)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext holder;
	json_object *arr;
	StringInfoData text;
	char	   *result;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(candidates_sql, 1, (Oid[]) {OIDOID},
							  (Datum[]) {ObjectIdGetDatum(role)}, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the templates of role %u", role);
	MemoryContextSwitchTo(outer);
	holder = AllocSetContextCreate(outer, "docextract candidates", ALLOCSET_SMALL_SIZES);
	arr = json_object_new_array();
	initStringInfo(&text);
	appendStringInfoString(&text, "Candidate templates:\n");
	for (uint64 i = 0; i < SPI_processed; i++)
		json_object_array_add(arr, candidate((int) i + 1, SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, &text, holder));
	MemoryContextDelete(holder);
	*n = (int) SPI_processed;
	result = pstrdup(json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN));
	json_object_put(arr);
	spi_finish();
	if (prompt)
		*prompt = text.data;
	return result;
}
