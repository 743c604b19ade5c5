/*
 * parser.h: untrusted bytes parsed in the helper process (parser.c, pdf.c).
 */
#ifndef DOCEXTRACT_PARSER_H
#define DOCEXTRACT_PARSER_H

#include "postgres.h"

/* pdf.c: a PDF's pages and text, read by the parser helper ------------------ */

extern int	pdf_inspect(const char *data, size_t len, const char *filename, char **text);
extern char *pdf_text(const char *data, size_t len);

extern char *pdf_problem(const char *data, size_t len, const char *filename, char **text,
						 int *pages);

/* parser.c: untrusted bytes parsed in a helper process ---------------------- */

typedef enum ParserInject
{
	PARSER_INJECT_NONE,
	PARSER_INJECT_CRASH,		/* the parser's child raises SIGSEGV */
	PARSER_INJECT_HANG			/* the parser's child never answers */
} ParserInject;

extern int	docextract_parser_timeout_ms;
extern int	docextract_parser_memory_mb;
extern int	docextract_parser_fault;

extern void parser_define_settings(void);
extern char *parser_run(const char *data, size_t len, bool want_text, const char *filename,
						size_t *out_len);
extern char *parser_pages_request(uint32 what, const char *data, size_t len, const int32 *pages,
								  int npages, int dpi, const char *filename, size_t *out_len);
extern char *parser_reason(const char *out, size_t len);
extern char *parser_heif_to_png(const char *data, size_t len, const char *filename, size_t *out_len);
extern int	docextract_render_dpi;

/* A parse whose failure is the document's problem, not an error. */
extern char *parser_run_or_problem(const char *data, size_t len, bool want_text,
								   const char *filename, size_t *out_len, char **problem);

#endif							/* DOCEXTRACT_PARSER_H */
