/*
 * pdf.c: what we need from a PDF: can it be opened, how many pages does it
 * have, and what text is on them.  poppler reads it in the parser helper
 * (parser.c), never in this process; here we only read its answer.
 */
#include "postgres.h"

#include "document.h"
#include "parser.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"


PG_FUNCTION_INFO_V1(docextract_pdf_text);

/*
 * Open a PDF once: NULL and its page count (*pages) and its text (palloc'd,
 * in the database encoding, when text is not NULL); or why it is no PDF we
 * can use: one the parser cannot open, or one without pages.  A parser
 * that crashes or takes too long raises 22023 (parser.c) -- unless
 * soft: then that is the problem too.
 */
static char *
pdf_check(const char *data, size_t len, const char *filename, char **text, int *pages,
		  bool soft)
{
	size_t		out_len = 0;
	char	   *problem = NULL;
	char	   *out = soft
		? parser_run_or_problem(data, len, text != NULL, filename, &out_len, &problem)
		: parser_run(data, len, text != NULL, filename, &out_len);
	int32		n = 0;

	if (problem)
		return problem;
	if (out_len >= 1 && out[0] == 'F')
		return psprintf("document \"%s\" is not a readable PDF: %s", filename,
						parser_reason(out, out_len));
	if (out_len >= 1 && out[0] == 'N')
		return psprintf("document \"%s\" is a PDF with no pages", filename);
	if (out_len >= 1 + sizeof(n) && out[0] == 'O')
		memcpy(&n, out + 1, sizeof(n));
	/* The child parsed hostile bytes: believe nothing it says blindly. */
	if (out_len < 1 + sizeof(n) || out[0] != 'O' || n < 1)
		return psprintf("could not parse document \"%s\": the parser answered out of protocol",
						filename);
	if (text)
		*text = pg_any_to_server(out + 1 + sizeof(n), out_len - 1 - sizeof(n), PG_UTF8);
	*pages = n;
	return NULL;
}

/* pdf_check() that never raises for the document's sake (the trigger form). */
char *
pdf_problem(const char *data, size_t len, const char *filename, char **text, int *pages)
{
	return pdf_check(data, len, filename, text, pages, true);
}

/* pdf_check(), raising 22023 for a PDF we cannot use. */
int
pdf_inspect(const char *data, size_t len, const char *filename, char **text)
{
	int			pages = 0;
	char	   *problem = pdf_check(data, len, filename, text, &pages, false);

	if (problem)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", problem)));
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

/* SQL: docextract.pdf_text(bytea), within docextract.max_document_size. */
Datum
docextract_pdf_text(PG_FUNCTION_ARGS)
{
	bytea	   *content = PG_GETARG_BYTEA_PP(0);

	check_document_size("(bytes)", VARSIZE_ANY_EXHDR(content));
	PG_RETURN_TEXT_P(cstring_to_text(pdf_text(VARDATA_ANY(content), VARSIZE_ANY_EXHDR(content))));
}
