/*
 * parser_protocol.h: the pipes between a backend and docextract_parser.
 *
 * Both ends run on the same machine, so integers go in native byte order.
 *
 *   backend -> helper: ParserRequest, then request.len bytes of document.
 *   helper -> backend: ParserReply, then reply.len bytes of payload.
 *
 * The payload is what the per-document child wrote, relayed only once the
 * child has ended (so a child that dies half-way never leaves a torn
 * message): on success 'O', an int32 page count, then the text (pages
 * separated by form feeds); or 'F' and poppler's reason; or 'N' (no pages).
 *
 * With PARSER_SELECT_PAGES the document is followed by npages int32 page
 * numbers (1-based, ascending, each within the document), and the answer
 * is 'P' then a new PDF holding only those pages (written by libqpdf), or
 * 'F' and qpdf's reason.
 *
 * With PARSER_WANT_WORDS (and the same page list) the answer is 'W' then,
 * per listed page that exists, a line "P <page>", then a line
 * "W <x0> <y0> <x1> <y1> <eol> <word>" per word: its box in points, origin
 * at the top left of the page as displayed (crop box, after /Rotate), and
 * eol 1 when a line break follows it.
 *
 * With PARSER_RENDER_PAGES (and the same page list) the answer is 'R' then,
 * per listed page that exists, an int32 page number, a uint32 length and
 * that many bytes of PNG: the page rendered at request.dpi.
 *
 * With PARSER_HEIF_TO_PNG the document is a HEIC/HEIF image, and the
 * answer is 'I' then its primary image as PNG, or 'F' and libheif's reason.
 * Closing the request pipe tells the helper to exit.
 */
#ifndef PARSER_PROTOCOL_H
#define PARSER_PROTOCOL_H

#include <stdint.h>

#define PARSER_MAGIC 0x44585031	/* "DXP1" */

/* Request flags. */
#define PARSER_WANT_TEXT	0x01
#define PARSER_FAULT_CRASH	0x02	/* fault injection: the child raises SIGSEGV */
#define PARSER_FAULT_HANG	0x04	/* fault injection: the child never answers */
#define PARSER_SELECT_PAGES	0x08	/* a PDF of only the listed pages */
#define PARSER_WANT_WORDS	0x10	/* the words of the listed pages, with boxes */
#define PARSER_RENDER_PAGES	0x20	/* the listed pages as PNG images */
#define PARSER_HEIF_TO_PNG	0x40	/* a HEIC/HEIF image as PNG */

/* The largest image side the helper decodes or renders, in pixels. */
#define PARSER_MAX_PIXELS	16384

/* The most page numbers one request may list. */
#define PARSER_MAX_PAGES	100000

/* The most text one document may yield (the helper stops the child beyond). */
#define PARSER_MAX_OUTPUT	(256 * 1024 * 1024)

typedef struct ParserRequest
{
	uint32_t	magic;
	uint32_t	flags;
	uint32_t	cpu_seconds;	/* RLIMIT_CPU of the child */
	uint32_t	npages;			/* page numbers after the document (SELECT_PAGES) */
	uint64_t	len;			/* document bytes that follow */
	uint32_t	dpi;			/* RENDER_PAGES: resolution */
	uint32_t	reserved;
} ParserRequest;

/* How the child ended. */
typedef enum ParserOutcome
{
	PARSER_EXITED = 0,			/* value: exit code */
	PARSER_SIGNALLED = 1,		/* value: signal number */
	PARSER_TOO_LARGE = 2,		/* the child wrote more than PARSER_MAX_OUTPUT */
	PARSER_FAILED = 3			/* the helper could not run a child; value: errno */
} ParserOutcome;

typedef struct ParserReply
{
	uint32_t	magic;
	uint32_t	outcome;		/* ParserOutcome */
	int32_t		value;
	uint32_t	reserved;
	uint64_t	len;			/* payload bytes that follow */
} ParserReply;

#endif							/* PARSER_PROTOCOL_H */
