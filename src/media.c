/*
 * media.c: the document as the provider can take it.
 *
 * A PDF page without a text layer (a scan) has nothing to send as text:
 * in text mode it is rendered (at docextract.render_dpi) and sent as an
 * image beside the other pages' text.  HEIC/HEIF images go as PNG to the
 * providers that do not accept them (OpenAI-compatible servers, Anthropic);
 * Gemini takes them as they are.  Both run in the sandboxed parser helper,
 * which does the decoding of untrusted bytes.
 */
#include "postgres.h"

#include "document.h"
#include "parser.h"
#include "util.h"

#include "parser/parser_protocol.h"


/* Pages (from 1) of a text whose pages end at form feeds that hold no text. */
static int32 *
blank_pages(const char *text, int page_count, int *n)
{
	int32	   *pages = palloc(sizeof(int32) * Max(page_count, 1));
	const char *page = text;

	*n = 0;
	for (int number = 1; number <= page_count; number++)
	{
		const char *end = page ? strchr(page, '\f') : NULL;
		const char *stop = end ? end : (page ? page + strlen(page) : NULL);
		bool		blank = true;

		for (const char *c = page; c && c < stop && blank; c++)
			blank = isspace((unsigned char) *c);
		if (blank)
			pages[(*n)++] = number;
		page = end ? end + 1 : NULL;
	}
	return pages;
}

/* The 'R' answer into doc->scans; the child parsed hostile bytes: check it all. */
static void
read_renders(DocumentInput *doc, const char *out, size_t len, const int32 *asked, int nasked)
{
	size_t		at = 1;

	doc->scans = palloc(sizeof(PageImage) * nasked);
	while (doc->nscans < nasked && at + 8 <= len)
	{
		int32		page;
		uint32		png_len;

		memcpy(&page, out + at, 4);
		memcpy(&png_len, out + at + 4, 4);
		if (page != asked[doc->nscans] || png_len > len - at - 8 || png_len < 8 ||
			!BYTES_START_WITH(out + at + 8, "\x89PNG"))
			break;
		doc->scans[doc->nscans].page = page;
		doc->scans[doc->nscans].png = out + at + 8;
		doc->scans[doc->nscans].len = png_len;
		doc->nscans++;
		at += 8 + png_len;
	}
	if (doc->nscans != nasked)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not render the pages without text of document \"%s\": the parser answered out of protocol",
						doc->filename)));
}

static void
render_scans(DocumentInput *doc)
{
	const char *text = doc->text ? doc->text : pdf_text(doc->data, doc->len);
	int			n;
	int32	   *pages = blank_pages(text, doc->page_count, &n);
	size_t		len;
	char	   *out;

	doc->text = text;
	if (n == 0)
		return;
	out = parser_pages_request(PARSER_RENDER_PAGES, doc->data, doc->len, pages, n,
							   docextract_render_dpi, doc->filename, &len);
	read_renders(doc, out, len, pages, n);
}

static void
heif_as_png(DocumentInput *doc)
{
	size_t		len;
	char	   *out = parser_heif_to_png(doc->data, doc->len, doc->filename, &len);

	if (len < 9 || out[0] != 'I' || !BYTES_START_WITH(out + 1, "\x89PNG"))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not convert image \"%s\" to PNG: %s", doc->filename,
						parser_reason(out, len))));
	doc->data = out + 1;
	doc->len = len - 1;
	doc->content_type = CONTENT_TYPE_PNG;
}

/*
 * Make the document fit the provider: scans rendered for text mode (only
 * the openai provider reads PDFs as text), HEIC/HEIF converted for the
 * providers that take neither.  Allocates in the current memory context.
 */
void
document_prepare_media(DocumentInput *doc, const char *provider, bool send_file)
{
	bool		is_pdf = strcmp(doc->content_type, CONTENT_TYPE_PDF) == 0;
	bool		is_heif = strcmp(doc->content_type, CONTENT_TYPE_HEIC) == 0 ||
		strcmp(doc->content_type, CONTENT_TYPE_HEIF) == 0;

	doc->nscans = 0;
	doc->scans = NULL;
	if (is_pdf && !send_file && strcmp(provider, "openai") == 0)
		render_scans(doc);
	else if (is_heif && strcmp(provider, "gemini") != 0)
		heif_as_png(doc);
}
