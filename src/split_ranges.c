/*
 * split_ranges.c: the model's page ranges for options.split, never trusted.
 *
 * The model answers {"table": [{"page_start", "page_end", "template"}, ...]}.
 * Its ranges are repaired into a partition of the document's pages, one
 * range per contained document, by this rule:
 *   - an entry that is not an object, or whose page_start or page_end is not
 *     a whole number (null, a string, 2.5, ...) is dropped;
 *   - a reversed range (start > end) is turned round;
 *   - a range is clamped to the document (0 or below: page 1; past the end:
 *     the last page); one wholly past the end is dropped;
 *   - ranges are taken in order of their first page; a range overlapping
 *     the one before keeps only its pages after that one's end (nothing
 *     left: dropped);
 *   - pages no range covers go to the range before them (those before the
 *     first range, to the first).
 * An answer that is not such a list, that has more than SPLIT_MAX_ENTRIES
 * entries, no usable range, or more than SPLIT_MAX_DOCUMENTS ranges after
 * repair is rejected (22023) with a message saying why.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "classify.h"
#include "document.h"
#include "options.h"
#include "privileged.h"
#include "queue.h"
#include "spi_checked.h"
#include "template.h"
#include "util.h"
#include "worker.h"
#include "workerset.h"

#include <math.h>


static void
reject(const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("the model's split of the document was rejected: %s", why)));
}

/* A whole number from the answer, or false (null, strings, fractions, huge). */
static bool
whole_number(json_object *entry, const char *key, int64 *out)
{
	json_object *v;
	double		d;

	if (!json_object_object_get_ex(entry, key, &v))
		return false;
	switch (json_object_get_type(v))
	{
		case json_type_int:
			*out = json_object_get_int64(v);
			return true;
		case json_type_double:
			d = json_object_get_double(v);
			if (!isfinite(d) || d != floor(d) || fabs(d) > 1e9)
				return false;
			*out = (int64) d;
			return true;
		default:
			return false;
	}
}

static int
by_start(const void *a, const void *b)
{
	const SplitRange *x = a;
	const SplitRange *y = b;

	if (x->page_start != y->page_start)
		return x->page_start < y->page_start ? -1 : 1;
	return (x->page_end > y->page_end) - (x->page_end < y->page_end);
}

/* Each entry as a clamped range, or dropped; *n kept. */
static SplitRange *
read_entries(json_object *table, int page_count, int *n, int *dropped)
{
	int			len = (int) json_object_array_length(table);
	SplitRange *r = palloc0(sizeof(SplitRange) * Max(len, 1));

	*n = 0;
	*dropped = 0;
	for (int i = 0; i < len; i++)
	{
		json_object *entry = json_object_array_get_idx(table, i);
		int64		a,
					b;
		const char *name;

		if (!json_object_is_type(entry, json_type_object) ||
			!whole_number(entry, "page_start", &a) || !whole_number(entry, "page_end", &b))
		{
			(*dropped)++;
			continue;
		}
		if (a > b)
		{
			int64		t = a;

			a = b;
			b = t;
		}
		if (a > page_count)
		{
			(*dropped)++;
			continue;
		}
		r[*n].page_start = (int) Max(a, 1);
		r[*n].page_end = (int) Min(Max(b, 1), page_count);
		name = json_member_string(entry, "template");
		r[*n].template_name = name ? pnstrdup(name, NAMEDATALEN * 4) : NULL;
		(*n)++;
	}
	return r;
}

/* Sorted ranges into a partition of 1..page_count (see the rule above). */
static int
partition(SplitRange *r, int n, int page_count)
{
	int			kept = 0;

	qsort(r, n, sizeof(SplitRange), by_start);
	for (int i = 0; i < n; i++)
	{
		SplitRange	cur = r[i];

		if (kept > 0 && cur.page_start <= r[kept - 1].page_end)
			cur.page_start = r[kept - 1].page_end + 1;	/* overlap: trimmed */
		if (cur.page_start > cur.page_end)
			continue;
		if (kept > 0 && cur.page_start > r[kept - 1].page_end + 1)
			r[kept - 1].page_end = cur.page_start - 1;	/* a gap: to the one before */
		r[kept++] = cur;
	}
	if (kept > 0)
	{
		r[0].page_start = 1;
		r[kept - 1].page_end = page_count;
	}
	return kept;
}

/*
 * The documents of a page_count-page file, from the model's split answer:
 * *n ranges in page order covering every page once.
 */
SplitRange *
split_ranges_repair(json_object *answer, int page_count, int *n)
{
	json_object *table = json_member(answer, "table", json_type_array);
	SplitRange *r;
	int			read;
	int			dropped;

	if (table == NULL)
		reject("it has no list of documents (\"table\")");
	if (json_object_array_length(table) > SPLIT_MAX_ENTRIES)
		reject(psprintf("it lists %d documents; at most %d are read",
						(int) json_object_array_length(table), SPLIT_MAX_ENTRIES));
	r = read_entries(table, page_count, &read, &dropped);
	*n = partition(r, read, page_count);
	if (*n == 0)
		reject(psprintf("none of its %d entries is a page range within the document's %d page(s)",
						(int) json_object_array_length(table), page_count));
	if (*n > SPLIT_MAX_DOCUMENTS)
		reject(psprintf("it names %d documents; at most %d sub-documents are made",
						*n, SPLIT_MAX_DOCUMENTS));
	if (dropped > 0 || *n != read)
		elog(LOG, "docextract worker: split answer repaired: %d of %d entries unusable, %d ranges kept",
			 dropped, (int) json_object_array_length(table), *n);
	return r;
}
