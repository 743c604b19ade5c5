/*
 * pages.c: options.pages, the pages of a document an extraction reads.
 *
 * "1-3,7" is checked against the document at submit (a page 0, a reversed
 * range, a page past the end: 22023 naming the range) and stored as a
 * sorted list, which the credits reservation counts.  The worker then sends
 * only those pages: their text, or a PDF of only them, which the sandboxed
 * parser helper writes with libqpdf.
 */
#include "postgres.h"

#include "document.h"
#include "parser.h"

#include "lib/stringinfo.h"
#include "parser/parser_protocol.h"
#include "utils/builtins.h"


static void
bad_range(const char *range, int page_count, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"pages\": range \"%s\" %s", range, why),
			 errhint("The document has %d page%s; write pages as in \"1-3,7\".",
					 page_count, page_count == 1 ? "" : "s")));
}

/* One "a" or "a-b" into [*first, *last]; digits only, no signs or spaces inside. */
static void
parse_range(const char *range, int page_count, int *first, int *last)
{
	char	   *end;
	long		a;
	long		b;

	if (!isdigit((unsigned char) range[0]))
		bad_range(range, page_count, "is not a page number or a range");
	a = strtol(range, &end, 10);
	b = a;
	if (*end == '-' && isdigit((unsigned char) end[1]))
		b = strtol(end + 1, &end, 10);
	if (*end != '\0')
		bad_range(range, page_count, "is not a page number or a range");
	if (a < 1)
		bad_range(range, page_count, "names page 0; pages start at 1");
	if (b < a)
		bad_range(range, page_count, "is reversed");
	if (b > page_count)
		bad_range(range, page_count, "is past the end of the document");
	*first = (int) a;
	*last = (int) b;
}

/*
 * The pages a spec such as "1-3,7" names, ascending and each once (ranges
 * may overlap), in *n.  The result is palloc'd.
 */
int32 *
pages_parse(const char *spec, int page_count, int *n)
{
	bool	   *wanted = palloc0(sizeof(bool) * (page_count + 1));
	char	   *copy = pstrdup(spec);
	char	   *save = NULL;
	int32	   *pages;
	int			count = 0;

	if (strspn(spec, " ") == strlen(spec))
		bad_range(spec, page_count, "names no page");
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		int			first;
		int			last;

		while (*tok == ' ')
			tok++;
		for (char *e = tok + strlen(tok); e > tok && e[-1] == ' '; e--)
			e[-1] = '\0';
		parse_range(tok, page_count, &first, &last);
		for (int p = first; p <= last; p++)
			wanted[p] = true;
	}
	/* "1,,2" or a trailing comma: strtok_r skips empty fields; refuse them. */
	if (strstr(spec, ",,") || spec[0] == ',' || spec[strlen(spec) - 1] == ',')
		bad_range(spec, page_count, "has an empty range");
	pages = palloc(sizeof(int32) * page_count);
	for (int p = 1; p <= page_count; p++)
		if (wanted[p])
			pages[count++] = p;
	if (count > PARSER_MAX_PAGES)
		bad_range(spec, page_count, psprintf("names %d pages; at most %d can be sent", count, PARSER_MAX_PAGES));
	*n = count;
	return pages;
}

/* The text of the listed pages of a text whose pages end at form feeds. */
static char *
select_text(const char *text, const int32 *pages, int n)
{
	StringInfoData out;
	const char *page = text;
	int			k = 0;

	initStringInfo(&out);
	for (int number = 1; page != NULL && k < n; number++)
	{
		const char *end = strchr(page, '\f');
		size_t		len = end ? (size_t) (end - page) : strlen(page);

		if (number == pages[k])
		{
			if (k++ > 0)
				appendStringInfoChar(&out, '\f');
			appendBinaryStringInfo(&out, page, len);
		}
		page = end ? end + 1 : NULL;
	}
	return out.data;
}

/*
 * Cut the document down to the listed pages (from the extraction's stored
 * list, already checked against it at submit): its text and, for a PDF,
 * its bytes.  Allocates in the current memory context.
 */
void
document_select_pages(DocumentInput *doc, const int32 *pages, int n)
{
	size_t		len;
	char	   *out;

	if (n == doc->page_count)
		return;
	if (strcmp(doc->content_type, CONTENT_TYPE_PDF) != 0 || n < 1 ||
		pages[n - 1] > doc->page_count)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"%s\" has %d page(s); the extraction asks for page %d",
						doc->filename, doc->page_count, n > 0 ? pages[n - 1] : 0)));
	out = parser_pages_request(PARSER_SELECT_PAGES, doc->data, doc->len, pages, n, 0,
							   doc->filename, &len);
	if (len < 1 || out[0] != 'P')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not take pages out of document \"%s\": %s", doc->filename,
						parser_reason(out, len))));
	doc->data = out + 1;
	doc->len = len - 1;
	if (doc->text)
		doc->text = select_text(doc->text, pages, n);
	doc->page_count = n;
}
