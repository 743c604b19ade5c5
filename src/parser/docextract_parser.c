/*
 * docextract_parser: parses untrusted documents outside the server.
 *
 * A backend starts this program once (posix_spawn, empty environment, only
 * its two pipes) and sends it documents one at a time on stdin; see
 * parser_protocol.h.  Each document is parsed by a child of its own, so a
 * crash, a CPU or memory limit kills that child only, and the helper
 * reports how it ended.  The child is forked before its document arrives
 * and reads the request itself: the fork happens while the backend is busy
 * elsewhere, and the helper never holds a document.  The helper dies with its backend (PR_SET_PDEATHSIG,
 * and EOF on stdin).
 *
 * Usage: docextract_parser <backend pid> <address space limit in bytes>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cairo.h>
#include <libheif/heif.h>
#include <poppler.h>
#include <qpdf/qpdf-c.h>

#include "parser_protocol.h"

/* Read exactly len bytes; false on EOF or error. */
static bool
read_all(int fd, void *buf, size_t len)
{
	char	   *p = buf;

	while (len > 0)
	{
		ssize_t		n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= n;
	}
	return true;
}

static bool
write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0)
	{
		ssize_t		n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= n;
	}
	return true;
}

static void
set_limit(int resource, rlim_t soft, rlim_t hard)
{
	struct rlimit rl = {soft, hard};

	if (setrlimit(resource, &rl) != 0)
		_exit(4);
}

/* poppler's document, or NULL once 'F' and poppler's reason are written. */
static PopplerDocument *
open_document(const char *data, size_t len, int out)
{
	GBytes	   *bytes = g_bytes_new_static(data, len);
	GError	   *error = NULL;
	PopplerDocument *doc = poppler_document_new_from_bytes(bytes, NULL, &error);

	if (doc == NULL)
	{
		const char *reason = error && error->message ? error->message : "unknown error";

		if (!write_all(out, "F", 1) || !write_all(out, reason, strlen(reason)))
			_exit(3);
	}
	return doc;
}

/* A listed page (from 1), or NULL if the document has no such page. */
static PopplerPage *
listed_page(PopplerDocument *doc, int32_t number)
{
	return number >= 1 && number <= poppler_document_get_n_pages(doc)
		? poppler_document_get_page(doc, number - 1) : NULL;
}

/* The child's answer for one PDF: 'O', pages, text; 'F', reason; or 'N'. */
static void
parse_pdf(const char *data, size_t len, bool want_text, int out)
{
	PopplerDocument *doc = open_document(data, len, out);
	int32_t		pages;

	if (doc == NULL)
		return;
	pages = poppler_document_get_n_pages(doc);
	if (pages < 1)
	{
		if (!write_all(out, "N", 1))
			_exit(3);
		return;
	}
	if (!write_all(out, "O", 1) || !write_all(out, &pages, sizeof(pages)))
		_exit(3);
	for (int i = 0; want_text && i < pages; i++)
	{
		PopplerPage *page = poppler_document_get_page(doc, i);
		char	   *text = page ? poppler_page_get_text(page) : NULL;

		if ((i > 0 && !write_all(out, "\f", 1)) ||
			(text && !write_all(out, text, strlen(text))))
			_exit(3);
		g_free(text);
		if (page)
			g_object_unref(page);
	}
}

/* One word: its box, the union of its characters' boxes. */
static bool
write_word(int out, const GString *word, const PopplerRectangle *box, bool eol)
{
	char		line[160];
	int			n = snprintf(line, sizeof(line), "W %.3f %.3f %.3f %.3f %d ",
							 box->x1, box->y1, box->x2, box->y2, eol ? 1 : 0);

	return write_all(out, line, n) && write_all(out, word->str, word->len) &&
		write_all(out, "\n", 1);
}

/*
 * A page's words: poppler gives one box per character of the page's text
 * (in the page's displayed orientation, origin top left); a word is a run
 * of characters between white space.
 */
static void
write_page_words(PopplerPage *page, int number, int out)
{
	char	   *text = poppler_page_get_text(page);
	PopplerRectangle *rects = NULL;
	guint		nrects = 0;
	GString    *word = g_string_new(NULL);
	PopplerRectangle box = {0, 0, 0, 0};
	char		head[32];
	guint		i = 0;

	if (text == NULL || !poppler_page_get_text_layout(page, &rects, &nrects))
		nrects = 0;
	snprintf(head, sizeof(head), "P %d\n", number);
	if (!write_all(out, head, strlen(head)))
		_exit(3);
	for (const char *c = text; c && *c && i < nrects; c = g_utf8_next_char(c), i++)
	{
		gunichar	u = g_utf8_get_char(c);

		if (g_unichar_isspace(u))
		{
			if (word->len > 0 && !write_word(out, word, &box, u == '\n'))
				_exit(3);
			g_string_truncate(word, 0);
			continue;
		}
		if (word->len == 0)
			box = rects[i];
		box.x1 = MIN(box.x1, rects[i].x1);
		box.y1 = MIN(box.y1, rects[i].y1);
		box.x2 = MAX(box.x2, rects[i].x2);
		box.y2 = MAX(box.y2, rects[i].y2);
		g_string_append_len(word, c, g_utf8_next_char(c) - c);
	}
	if (word->len > 0 && !write_word(out, word, &box, true))
		_exit(3);
	g_string_free(word, TRUE);
	g_free(rects);
	g_free(text);
}

/* 'W' and the words of each listed page that the document has. */
static void
page_words(const char *data, size_t len, const int32_t *pages, uint32_t npages, int out)
{
	PopplerDocument *doc = open_document(data, len, out);

	if (doc == NULL)
		return;
	if (!write_all(out, "W", 1))
		_exit(3);
	for (uint32_t k = 0; k < npages; k++)
	{
		PopplerPage *page = listed_page(doc, pages[k]);

		if (page)
		{
			write_page_words(page, pages[k], out);
			g_object_unref(page);
		}
	}
}

/* cairo's PNG writer, straight to the output pipe. */
static cairo_status_t
write_png_chunk(void *closure, const unsigned char *data, unsigned int len)
{
	return write_all(*(int *) closure, data, len) ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

/* A surface's PNG into a malloc'd buffer (so its length can go first). */
typedef struct PngBuffer
{
	unsigned char *data;
	size_t		len;
	size_t		cap;
} PngBuffer;

static cairo_status_t
buffer_png_chunk(void *closure, const unsigned char *data, unsigned int len)
{
	PngBuffer  *b = closure;

	if (b->len + len > b->cap)
	{
		size_t		cap = (b->len + len) * 2;
		unsigned char *bigger = realloc(b->data, cap);

		if (bigger == NULL)
			return CAIRO_STATUS_NO_MEMORY;
		b->data = bigger;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	return CAIRO_STATUS_SUCCESS;
}

/* One page as PNG: white paper, the page drawn at dpi, as displayed. */
static void
render_page(PopplerPage *page, int number, uint32_t dpi, int out)
{
	double		w_pt,
				h_pt;
	double		scale = dpi / 72.0;
	cairo_surface_t *surface;
	cairo_t    *cr;
	PngBuffer	png = {NULL, 0, 0};
	int32_t		n = number;
	uint32_t	len;

	poppler_page_get_size(page, &w_pt, &h_pt);
	if (w_pt * scale < 1 || h_pt * scale < 1 ||
		w_pt * scale > PARSER_MAX_PIXELS || h_pt * scale > PARSER_MAX_PIXELS)
		_exit(7);
	surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, (int) (w_pt * scale), (int) (h_pt * scale));
	if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS)
		_exit(7);
	cr = cairo_create(surface);
	cairo_set_source_rgb(cr, 1, 1, 1);
	cairo_paint(cr);
	cairo_scale(cr, scale, scale);
	poppler_page_render(page, cr);
	cairo_destroy(cr);
	if (cairo_surface_write_to_png_stream(surface, buffer_png_chunk, &png) != CAIRO_STATUS_SUCCESS)
		_exit(7);
	cairo_surface_destroy(surface);
	len = (uint32_t) png.len;
	if (!write_all(out, &n, sizeof(n)) || !write_all(out, &len, sizeof(len)) ||
		!write_all(out, png.data, png.len))
		_exit(3);
	free(png.data);
}

/* 'R' and each listed page that the document has, rendered. */
static void
render_pages(const char *data, size_t len, const int32_t *pages, uint32_t npages, uint32_t dpi,
			 int out)
{
	PopplerDocument *doc = open_document(data, len, out);

	if (doc == NULL)
		return;
	if (!write_all(out, "R", 1))
		_exit(3);
	for (uint32_t k = 0; k < npages; k++)
	{
		PopplerPage *page = listed_page(doc, pages[k]);

		if (page)
		{
			render_page(page, pages[k], dpi, out);
			g_object_unref(page);
		}
	}
}

static void
heif_failed(struct heif_error err, int out)
{
	const char *reason = err.message ? err.message : "unknown error";

	if (!write_all(out, "F", 1) || !write_all(out, reason, strlen(reason)))
		_exit(3);
	_exit(0);
}

/* 'I' and a HEIC/HEIF image's primary image as PNG. */
static void
heif_to_png(const char *data, size_t len, int out)
{
	struct heif_context *ctx = heif_context_alloc();
	struct heif_image_handle *handle;
	struct heif_image *img;
	struct heif_error err;
	const uint8_t *rgba;
	int			stride;
	int			w,
				h;
	cairo_surface_t *surface;

	heif_context_set_maximum_image_size_limit(ctx, PARSER_MAX_PIXELS);
	if ((err = heif_context_read_from_memory_without_copy(ctx, data, len, NULL)).code != heif_error_Ok ||
		(err = heif_context_get_primary_image_handle(ctx, &handle)).code != heif_error_Ok ||
		(err = heif_decode_image(handle, &img, heif_colorspace_RGB, heif_chroma_interleaved_RGBA,
								 NULL)).code != heif_error_Ok)
		heif_failed(err, out);
	w = heif_image_get_width(img, heif_channel_interleaved);
	h = heif_image_get_height(img, heif_channel_interleaved);
	rgba = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
	if (rgba == NULL || w < 1 || h < 1 || w > PARSER_MAX_PIXELS || h > PARSER_MAX_PIXELS)
		_exit(7);
	surface = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, w, h);
	if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS)
		_exit(7);
	cairo_surface_flush(surface);
	for (int y = 0; y < h; y++)
	{
		uint32_t   *row = (uint32_t *) (cairo_image_surface_get_data(surface) +
										 y * cairo_image_surface_get_stride(surface));

		/* cairo's pixels are premultiplied, native-endian ARGB words. */
		for (int x = 0; x < w; x++)
		{
			const uint8_t *p = rgba + y * stride + 4 * x;
			uint32_t	a = p[3];

			row[x] = a << 24 | (p[0] * a / 255) << 16 | (p[1] * a / 255) << 8 | (p[2] * a / 255);
		}
	}
	cairo_surface_mark_dirty(surface);
	if (!write_all(out, "I", 1) ||
		cairo_surface_write_to_png_stream(surface, write_png_chunk, &out) != CAIRO_STATUS_SUCCESS)
		_exit(3);
}

/*
 * A one-page PDF of our own, parsed once before the first fork: poppler's
 * and fontconfig's start-up then happens once, not in every child.
 */
static const char warm_up_pdf[] =
	"%PDF-1.4\n"
	"1 0 obj\n"
	"<</Type/Catalog/Pages 2 0 R>>\n"
	"endobj\n"
	"2 0 obj\n"
	"<</Type/Pages/Kids[3 0 R]/Count 1>>\n"
	"endobj\n"
	"3 0 obj\n"
	"<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 50]/Contents 4 0 R/Resources<</Font<</F1 5 0 R>>>>>>\n"
	"endobj\n"
	"4 0 obj\n"
	"<</Length 34>>stream\n"
	"BT /F1 12 Tf 10 20 Td (warm) Tj ET\n"
	"endstream\n"
	"endobj\n"
	"5 0 obj\n"
	"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>\n"
	"endobj\n"
	"xref\n"
	"0 6\n"
	"0000000000 65535 f \n"
	"0000000009 00000 n \n"
	"0000000054 00000 n \n"
	"0000000105 00000 n \n"
	"0000000216 00000 n \n"
	"0000000297 00000 n \n"
	"trailer\n"
	"<</Size 6/Root 1 0 R>>\n"
	"startxref\n"
	"360\n"
	"%%EOF\n";

static void
warm_up(void)
{
	int			devnull = open("/dev/null", O_WRONLY);

	if (devnull >= 0)
		parse_pdf(warm_up_pdf, sizeof(warm_up_pdf) - 1, true, devnull);
	if (devnull >= 0)
		close(devnull);
}

/* How a child ends before it parses; see child_main. */
#define CHILD_NO_MORE		100 /* EOF on stdin: the backend is done */
#define CHILD_NO_MEMORY		102 /* the document does not fit in memory */

/* A document too big for the memory limit: drain it. */
static void
drain(uint64_t len)
{
	char		sink[65536];

	while (len > 0)
	{
		size_t		n = len < sizeof(sink) ? len : sizeof(sink);

		if (!read_all(0, sink, n))
			_exit(3);
		len -= n;
	}
}

/* The page numbers after the document: ascending, 1-based. */
static bool
read_page_list(const ParserRequest *req, int32_t **pages)
{
	if (req->npages < 1 || req->npages > PARSER_MAX_PAGES)
		return false;
	*pages = malloc(sizeof(int32_t) * req->npages);
	if (*pages == NULL || !read_all(0, *pages, sizeof(int32_t) * req->npages))
		return false;
	for (uint32_t i = 0; i < req->npages; i++)
		if ((*pages)[i] < 1 || (i > 0 && (*pages)[i] <= (*pages)[i - 1]))
			return false;
	return true;
}

/* 'F' and qpdf's reason for the last error. */
static void
qpdf_failed(qpdf_data q, int out)
{
	const char *reason = qpdf_has_error(q)
		? qpdf_get_error_full_text(q, qpdf_get_error(q)) : "unknown error";

	if (!write_all(out, "F", 1) || !write_all(out, reason, strlen(reason)))
		_exit(3);
	_exit(0);
}

/*
 * A PDF of only the listed pages: a new, empty document into which those
 * pages are copied.  Nothing else of the original comes along (outlines,
 * names, the structure tree, forms: they could reach the other pages), and
 * qpdf does not follow a reference from a copied page into another page.
 */
static void
select_pages(const char *data, size_t len, const int32_t *pages, uint32_t npages, int out)
{
	qpdf_data	in = qpdf_init();
	qpdf_data	q = qpdf_init();

	qpdf_silence_errors(in);
	qpdf_set_suppress_warnings(in, QPDF_TRUE);
	qpdf_silence_errors(q);
	qpdf_set_suppress_warnings(q, QPDF_TRUE);
	if (qpdf_read_memory(in, "document", data, len, NULL) & QPDF_ERRORS)
		qpdf_failed(in, out);
	if (qpdf_get_num_pages(in) < 1 || pages[npages - 1] > qpdf_get_num_pages(in))
		qpdf_failed(in, out);
	/* A page's inherited resources and boxes must travel with it. */
	if ((qpdf_push_inherited_attributes_to_page(in) & QPDF_ERRORS) ||
		(qpdf_empty_pdf(q) & QPDF_ERRORS))
		qpdf_failed(in, out);
	for (uint32_t k = 0; k < npages; k++)
		if (qpdf_add_page(q, in, qpdf_get_page_n(in, pages[k] - 1), QPDF_FALSE) & QPDF_ERRORS)
			qpdf_failed(q, out);
	if (qpdf_init_write_memory(q) & QPDF_ERRORS)
		qpdf_failed(q, out);
	/* Streams go out as they came: not decoded, not recompressed. */
	qpdf_set_decode_level(q, qpdf_dl_none);
	qpdf_set_compress_streams(q, QPDF_FALSE);
	if (qpdf_write(q) & QPDF_ERRORS)
		qpdf_failed(q, out);
	if (!write_all(out, "P", 1) ||
		!write_all(out, qpdf_get_buffer(q), qpdf_get_buffer_length(q)))
		_exit(3);
	qpdf_cleanup(&q);
	qpdf_cleanup(&in);
}

/*
 * Read one request from stdin; 'R' to the helper says it was read whole.
 * Returns the document; *pages gets its page list, if it has one.
 */
static char *
child_read_request(ParserRequest *req, int32_t **pages, int out)
{
	char	   *data;

	if (!read_all(0, req, sizeof(*req)))
		_exit(CHILD_NO_MORE);
	if (req->magic != PARSER_MAGIC || req->len > (uint64_t) 1 << 40)
		_exit(3);
	data = malloc(req->len ? req->len : 1);
	if (data == NULL)
	{
		drain(req->len);
		(void) write_all(out, "R", 1);
		_exit(CHILD_NO_MEMORY);
	}
	if (!read_all(0, data, req->len))
		_exit(3);
	if ((req->flags & (PARSER_SELECT_PAGES | PARSER_WANT_WORDS | PARSER_RENDER_PAGES)) &&
		!read_page_list(req, pages))
		_exit(3);
	if (!write_all(out, "R", 1))
		_exit(3);
	return data;
}

/*
 * A child, forked before its document arrives (so the fork costs no
 * latency): read the request, give up stdin and stdout, set the limits,
 * parse.
 */
static void
child_main(int out, pid_t helper)
{
	ParserRequest req;
	char	   *data;
	int32_t    *pages = NULL;
	int			devnull;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != helper)
		_exit(6);
	data = child_read_request(&req, &pages, out);
	/* The protocol pipes are the helper's alone. */
	devnull = open("/dev/null", O_RDWR);
	if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0)
		_exit(5);
	/* SIGXCPU at the soft limit; the kernel sends SIGKILL at the hard one. */
	set_limit(RLIMIT_CPU, req.cpu_seconds, req.cpu_seconds + 1);
	if (req.flags & PARSER_FAULT_CRASH)
		raise(SIGSEGV);
	if (req.flags & PARSER_FAULT_HANG)
		for (;;)
			pause();
	if (req.flags & PARSER_SELECT_PAGES)
		select_pages(data, req.len, pages, req.npages, out);
	else if (req.flags & PARSER_WANT_WORDS)
		page_words(data, req.len, pages, req.npages, out);
	else if (req.flags & PARSER_RENDER_PAGES)
		render_pages(data, req.len, pages, req.npages, req.dpi, out);
	else if (req.flags & PARSER_HEIF_TO_PNG)
		heif_to_png(data, req.len, out);
	else
		parse_pdf(data, req.len, (req.flags & PARSER_WANT_TEXT) != 0, out);
}

/* Read the child's output; false if it wrote more than PARSER_MAX_OUTPUT. */
static bool
collect(int in, char **buf, size_t *len, int *err)
{
	size_t		cap = 65536;

	*len = 0;
	*buf = malloc(cap);
	while (*buf != NULL)
	{
		ssize_t		n;
		char	   *bigger;

		if (*len == cap && cap > PARSER_MAX_OUTPUT)
			return false;
		if (*len == cap)
		{
			cap = cap * 2 > PARSER_MAX_OUTPUT ? PARSER_MAX_OUTPUT + 2 : cap * 2;
			if ((bigger = realloc(*buf, cap)) == NULL)
				break;
			*buf = bigger;
		}
		n = read(in, *buf + *len, cap - *len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return true;
		*len += n;
	}
	*err = ENOMEM;
	return false;
}

/* How the child ended, for the backend. */
static void
child_outcome(int status, ParserReply *reply)
{
	if (WIFSIGNALED(status))
	{
		reply->outcome = PARSER_SIGNALLED;
		reply->value = WTERMSIG(status);
	}
	else if (WEXITSTATUS(status) == CHILD_NO_MEMORY)
	{
		reply->outcome = PARSER_FAILED;
		reply->value = ENOMEM;
	}
	else
	{
		reply->outcome = PARSER_EXITED;
		reply->value = WEXITSTATUS(status);
	}
}

/*
 * Fork a child, let it take the next document, tell the backend how it
 * went.  Returns false when there is nothing more to do: the backend closed
 * the pipe, or a child died without reading its request whole (the stream
 * is out of step; the backend starts another helper).
 */
static bool
run_one(void)
{
	ParserReply reply = {PARSER_MAGIC, PARSER_EXITED, 0, 0, 0};
	char	   *out = NULL;
	size_t		len = 0;
	int			fds[2];
	int			status;
	int			err = 0;
	bool		whole;
	pid_t		helper = getpid();
	pid_t		child;

	if (pipe2(fds, O_CLOEXEC) != 0 || (child = fork()) < 0)
		return false;
	if (child == 0)
	{
		close(fds[0]);
		child_main(fds[1], helper);
		_exit(0);
	}
	close(fds[1]);
	whole = collect(fds[0], &out, &len, &err);
	if (!whole)
		kill(child, SIGKILL);
	close(fds[0]);
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	if (out == NULL || len < 1 || out[0] != 'R')
		return false;			/* CHILD_NO_MORE, or out of step */
	child_outcome(status, &reply);
	if (!whole)
	{
		reply.outcome = err ? PARSER_FAILED : PARSER_TOO_LARGE;
		reply.value = err;
	}
	reply.len = (reply.outcome == PARSER_EXITED && reply.value == 0) ? len - 1 : 0;
	whole = write_all(1, &reply, sizeof(reply)) && write_all(1, out + 1, reply.len);
	free(out);
	return whole;				/* false: the backend is gone */
}

int
main(int argc, char **argv)
{
	/* Die with the backend that started us, even if it dies right now. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (argc != 3 || getppid() != (pid_t) atol(argv[1]))
		return 2;
	set_limit(RLIMIT_CORE, 0, 0);
	set_limit(RLIMIT_AS, strtoull(argv[2], NULL, 10), strtoull(argv[2], NULL, 10));
	signal(SIGPIPE, SIG_IGN);
	warm_up();

	while (run_one())
		;
	return 0;
}
