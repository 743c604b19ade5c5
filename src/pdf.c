/*
 * pdf.c: what we need from poppler: can the PDF be opened, how many pages
 * does it have, and what text is on them.
 *
 * glib allocations are freed before any ereport, so an error never leaks
 * them into a long-lived worker.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "fmgr.h"
#include "utils/builtins.h"

#include <poppler.h>


PG_FUNCTION_INFO_V1(docextract_pdf_text);

/* Open a PDF; on failure return NULL and a palloc'd reason. */
static PopplerDocument *
pdf_open(const char *data, size_t len, char **reason)
{
	GBytes	   *bytes = g_bytes_new_static(data, len);
	GError	   *error = NULL;
	PopplerDocument *doc = poppler_document_new_from_bytes(bytes, NULL, &error);

	g_bytes_unref(bytes);		/* the document keeps its own reference */
	if (doc == NULL)
	{
		*reason = pstrdup(error && error->message ? error->message : "unknown error");
		if (error)
			g_error_free(error);
	}
	return doc;
}

/* The text of the first pages pages, one form feed between pages. */
static char *
document_text(PopplerDocument *doc, int pages)
{
	StringInfoData out;

	initStringInfo(&out);
	for (int i = 0; i < pages; i++)
	{
		PopplerPage *page = poppler_document_get_page(doc, i);
		char	   *text = page ? poppler_page_get_text(page) : NULL;

		if (i > 0)
			appendStringInfoChar(&out, '\f');
		if (text)
			appendStringInfoString(&out, text);
		g_free(text);
		if (page)
			g_object_unref(page);
	}
	return out.data;
}

/*
 * Open a PDF once: its page count, and its text (palloc'd) when text is not
 * NULL.  A PDF poppler cannot open, or one without pages, raises 22023.
 */
int
pdf_inspect(const char *data, size_t len, const char *filename, char **text)
{
	char	   *reason = NULL;
	PopplerDocument *doc = pdf_open(data, len, &reason);
	int			pages;

	if (doc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"%s\" is not a readable PDF: %s", filename, reason)));
	pages = poppler_document_get_n_pages(doc);
	if (text && pages > 0)
		*text = document_text(doc, pages);
	g_object_unref(doc);
	if (pages < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"%s\" is a PDF with no pages", filename)));
	return pages;
}

/* The text of a PDF, all pages, palloc'd. */
char *
pdf_text(const char *data, size_t len)
{
	char	   *text = NULL;

	pdf_inspect(data, len, "(bytes)", &text);
	return text;
}

Datum
docextract_pdf_text(PG_FUNCTION_ARGS)
{
	bytea	   *content = PG_GETARG_BYTEA_PP(0);

	PG_RETURN_TEXT_P(cstring_to_text(pdf_text(VARDATA_ANY(content), VARSIZE_ANY_EXHDR(content))));
}
