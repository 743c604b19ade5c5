/*
 * charlimit.c: a field's char_limit applied to typed data.
 *
 * A text value longer than its field's char_limit is cut at the last word
 * boundary within the limit (mid-word only when the first word alone is
 * longer), and the cut is flagged in the validation array, so a reviewer
 * sees what was shortened.  Limits count characters, not bytes.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "template.h"

#include "mb/pg_wchar.h"


/* Bytes of s to keep for at most limit characters; *chars: s's length. */
static size_t
cut_point(const char *s, int limit, int *chars)
{
	size_t		keep = 0;
	size_t		pos = 0;
	size_t		last_space = 0;
	size_t		hard;
	int			n = 0;

	for (; s[pos] != '\0'; n++)
	{
		if (n == limit)
			keep = pos;
		if (n < limit && isspace((unsigned char) s[pos]))
			last_space = pos;
		pos += pg_utf_mblen((const unsigned char *) s + pos);
	}
	*chars = n;
	if (n <= limit)
		return pos;
	hard = keep;
	/* Inside a word: back to the space before it, unless there is none. */
	if (!isspace((unsigned char) s[keep]) && last_space > 0)
		keep = last_space;
	while (keep > 0 && isspace((unsigned char) s[keep - 1]))
		keep--;
	return keep > 0 ? keep : hard;	/* only spaces before: cut mid-word */
}

static json_object *
flag(const char *path, int row, int limit, int length)
{
	json_object *entry = json_object_new_object();
	json_object *details = json_object_new_object();

	json_object_object_add(details, "field", json_object_new_string(path));
	if (row >= 0)
		json_object_object_add(details, "row_index", json_object_new_int(row));
	json_object_object_add(details, "char_limit", json_object_new_int(limit));
	json_object_object_add(details, "length", json_object_new_int(length));
	json_object_object_add(entry, "rule_name", json_object_new_string(psprintf("char_limit %s", path)));
	json_object_object_add(entry, "rule_type", json_object_new_string("char_limit"));
	json_object_object_add(entry, "passed", json_object_new_boolean(false));
	json_object_object_add(entry, "details", details);
	return entry;
}

/* Cut the values of obj over their field's limit; flags go to validation. */
static int
apply_to_object(json_object *obj, const TemplateField *fields, int n, const char *part,
				int row, json_object *validation)
{
	int			cuts = 0;

	for (int i = 0; i < n; i++)
	{
		json_object *v;
		const char *s;
		size_t		keep;
		int			length;

		if (fields[i].char_limit <= 0 || fields[i].format != FORMAT_TEXT ||
			!json_object_object_get_ex(obj, fields[i].key, &v) ||
			!json_object_is_type(v, json_type_string))
			continue;
		s = json_object_get_string(v);
		keep = cut_point(s, fields[i].char_limit, &length);
		if (length <= fields[i].char_limit)
			continue;
		json_object_object_add(obj, fields[i].key, json_object_new_string_len(s, (int) keep));
		json_object_array_add(validation,
							  flag(psprintf("%s.%s", part, fields[i].key), row,
								   fields[i].char_limit, length));
		cuts++;
	}
	return cuts;
}

/*
 * Apply the template's char_limits to data ({"general", "table"} as typed),
 * appending a failed "char_limit" entry to validation per value cut.
 * Returns how many values were cut.
 */
int
charlimit_apply(json_object *data, const Template *t, json_object *validation)
{
	json_object *general;
	json_object *table;
	int			cuts = 0;

	if (json_object_object_get_ex(data, "general", &general) &&
		json_object_is_type(general, json_type_object))
		cuts += apply_to_object(general, t->general, t->ngeneral, "general_part", -1, validation);
	if (t->has_table && json_object_object_get_ex(data, "table", &table) &&
		json_object_is_type(table, json_type_array))
		for (size_t r = 0; r < json_object_array_length(table); r++)
		{
			json_object *row = json_object_array_get_idx(table, r);

			if (json_object_is_type(row, json_type_object))
				cuts += apply_to_object(row, t->table, t->ntable, "table_part", (int) r, validation);
		}
	return cuts;
}
