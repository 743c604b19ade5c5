/*
 * document.h: a stored document and the form a provider receives it in.
 */
#ifndef DOCEXTRACT_DOCUMENT_H
#define DOCEXTRACT_DOCUMENT_H

#include "postgres.h"
#include "fmgr.h"

/* The document formats docextract takes, as their media types. */
#define CONTENT_TYPE_PDF "application/pdf"
#define CONTENT_TYPE_JPEG "image/jpeg"
#define CONTENT_TYPE_PNG "image/png"
#define CONTENT_TYPE_HEIC "image/heic"
#define CONTENT_TYPE_HEIF "image/heif"

/* documents.c ---------------------------------------------------------------- */

extern const char *detect_content_type(const unsigned char *data, size_t len);
extern void check_document_size(const char *filename, size_t len);

extern char *document_problem(const char *filename, const char *data, size_t len,
							  const char **type, int *pages, char **text);
extern Datum document_add(const char *filename, bytea *content);
extern Datum document_store(const char *filename, const char *type, bytea *content,
							int pages, const char *text);
extern Datum document_store_rejected(const char *filename, const char *type, bytea *content,
									 const char *rejection);


/* provider_*.c: the document as sent */
typedef struct DocumentInput
{
	char	   *filename;
	const char *content_type;
	const char *data;
	size_t		len;
	int			page_count;
	const char *text;			/* a PDF's stored text, or NULL */
	int			nscans;			/* pages without text, sent as images (media.c) */
	struct PageImage *scans;
} DocumentInput;

typedef struct PageImage
{
	int			page;			/* of the pages sent, from 1 */
	const char *png;
	size_t		len;
} PageImage;

/* pages.c: options.pages --------------------------------------------------- */

extern int32 *pages_parse(const char *spec, int page_count, int *n);
extern void document_select_pages(DocumentInput *doc, const int32 *pages, int n);

/* media.c: the document as the provider can take it ------------------------ */

extern void document_prepare_media(DocumentInput *doc, const char *provider, bool send_file);

#endif							/* DOCEXTRACT_DOCUMENT_H */
