/*
 * citations.c: where on the page each value was found.
 *
 * With options.citations the model quotes its evidence for every value
 * (the "attributions" of the answer).  Each quote is looked for in the
 * cited page's own text layer: poppler's words with their boxes, read by
 * the sandboxed parser helper.  Found exactly once: the union of the boxes
 * of the words it covers, in points, origin at the top left of the page as
 * displayed.  Not found, or found more than once: verified false and no
 * box, never a guess.  Text is compared as the text layer gives it:
 * ligatures spelt out, words hyphenated at a line end joined, runs of white
 * space as one space.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "job.h"
#include "parser.h"
#include "privileged.h"
#include "spi_checked.h"
#include "template.h"
#include "util.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "access/xact.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "parser/parser_protocol.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include <math.h>

/*
 * The child parsed a hostile document: what it says is bounded before it
 * costs memory or time here.  Words past these are ignored (their quotes
 * are then not found), quotes past this are not looked for.
 */
#define MAX_WORDS_PER_PAGE	50000
#define MAX_WORDS			500000
#define MAX_QUOTES			20000


typedef struct Word
{
	char	   *text;			/* normalised */
	double		box[4];			/* x0, y0, x1, y1 */
	bool		eol;			/* a line break follows */
} Word;

/* The words as one normalised string, and which word each byte is of. */
typedef struct FlatText
{
	StringInfoData text;
	int		   *owner;			/* per byte: its word, -1 for a space */
} FlatText;

typedef struct PageText
{
	int			page;			/* the document's page number */
	int			nwords;
	Word	   *words;
	FlatText	joined;			/* a hyphen at a line end dropped: "inter-national" */
	FlatText	kept;			/* ... or kept: "well-known" */
} PageText;

typedef struct CitedDocument
{
	int			npages;
	PageText   *pages;
	int32	   *page_numbers;	/* options.pages, or NULL: model page = page */
	int			nnumbers;
	int			located;		/* quotes looked for so far */
} CitedDocument;

/* What load_words needs, for in_subtransaction. */
typedef struct WordsStep
{
	CitedDocument *doc;
	json_object *answer;
	const Template *t;
	int			nrows;
	const pg_uuid_t *extraction;
	Oid			owner;
} WordsStep;

/* Ligatures spelt out, odd spaces as spaces, soft hyphens dropped. */
static void
append_normalised_char(StringInfo out, const char *c, int len)
{
	static const char *const ligatures[] = {"ff", "fi", "fl", "ffi", "ffl", "st", "st"};
	pg_wchar	u = len > 1 ? utf8_to_unicode((const unsigned char *) c) : (unsigned char) *c;

	if (u >= 0xFB00 && u <= 0xFB06)
		appendStringInfoString(out, ligatures[u - 0xFB00]);
	else if (u == 0xA0 || u == 0x2007 || u == 0x202F || u == '\t' || u == '\n' || u == '\r')
		appendStringInfoChar(out, ' ');
	else if (u != 0xAD)
		appendBinaryStringInfo(out, c, len);
}

/* Never longer than s: a ligature's letters take no more bytes than it. */
static char *
normalise_word(const char *s)
{
	StringInfoData out;

	out.maxlen = strlen(s) + 1;
	out.data = palloc(out.maxlen);
	resetStringInfo(&out);
	for (; *s; s += pg_utf_mblen((const unsigned char *) s))
		append_normalised_char(&out, s, pg_utf_mblen((const unsigned char *) s));
	return out.data;
}

/* A letter or digit, or part of a multibyte character. */
static bool
is_word_char(char c)
{
	return isalnum((unsigned char) c) || (unsigned char) c >= 0x80;
}

/*
 * A quote as the page string spells it: one space between words, and a
 * word broken at a hyphen and a space ("inter- national") joined.
 */
static char *
normalise_quote(const char *quote)
{
	char	   *s = normalise_word(quote);
	StringInfoData out;

	initStringInfo(&out);
	for (const char *p = s; *p; p++)
	{
		if (*p == ' ' && (out.len == 0 || out.data[out.len - 1] == ' '))
			continue;
		/* "inter- national": the line break the model copied; the page's
		 * two readings (hyphen dropped, hyphen kept) are both tried. */
		if (*p == ' ' && out.len >= 2 && out.data[out.len - 1] == '-' &&
			is_word_char(out.data[out.len - 2]))
			continue;
		appendStringInfoChar(&out, *p);
	}
	while (out.len > 0 && out.data[out.len - 1] == ' ')
		out.data[--out.len] = '\0';
	return out.data;
}

/* Append text to the flat string, each byte owned by word w. */
static void
append_owned(FlatText *f, const char *text, int w)
{
	int			len = strlen(text);

	f->owner = repalloc(f->owner, sizeof(int) * (f->text.len + len + 1));
	for (int i = 0; i < len; i++)
		f->owner[f->text.len + i] = w;
	appendBinaryStringInfo(&f->text, text, len);
}

/*
 * The page's words as one string: a space between words, but none after a
 * hyphen at a line end, where the hyphen itself goes too when drop_hyphen
 * ("inter-" "national": "international"; kept: "well-" "known":
 * "well-known").
 */
static void
flatten_page(const PageText *pt, FlatText *f, bool drop_hyphen)
{
	initStringInfo(&f->text);
	f->owner = palloc(sizeof(int));
	for (int i = 0; i < pt->nwords; i++)
	{
		const Word *prev = i > 0 ? &pt->words[i - 1] : NULL;
		bool		hyphen_break = prev && prev->eol && f->text.len > 0 &&
			f->text.data[f->text.len - 1] == '-';

		if (hyphen_break && drop_hyphen)
			f->text.data[--f->text.len] = '\0';
		else if (prev && !hyphen_break)
			append_owned(f, " ", -1);
		append_owned(f, pt->words[i].text, i);
	}
}

/*
 * Where the quote is in a flat text: how many times (whole words), and in
 * *at the start of the last.
 */
static int
occurrences(const FlatText *f, const char *quote, int qlen, int *at)
{
	const char *flat = f->text.data;
	int			found = 0;

	for (const char *p = strstr(flat, quote); p; p = strstr(p + 1, quote))
	{
		int			start = p - flat;

		/* Whole words or numbers, not a piece of one: "12" is not in "2026". */
		if ((start > 0 && is_word_char(flat[start - 1]) && is_word_char(quote[0])) ||
			(is_word_char(flat[start + qlen]) && is_word_char(quote[qlen - 1])))
			continue;
		found++;
		*at = start;
		CHECK_FOR_INTERRUPTS();
	}
	return found;
}

/*
 * Where the quote is on the page: true, with the union of the covered
 * words' boxes, when it is there exactly once (read with a hyphen at a
 * line end dropped, or else kept).
 */
static bool
locate(const PageText *pt, const char *quote, double *box)
{
	const FlatText *f = &pt->joined;
	int			qlen = strlen(quote);
	int			at = -1;
	int			found;

	if (qlen == 0)
		return false;
	found = occurrences(f, quote, qlen, &at);
	if (found == 0)
		found = occurrences(f = &pt->kept, quote, qlen, &at);
	if (found != 1)
		return false;
	box[0] = box[1] = INFINITY;
	box[2] = box[3] = -INFINITY;
	for (int i = at; i < at + qlen; i++)
	{
		const Word *w = f->owner[i] >= 0 ? &pt->words[f->owner[i]] : NULL;

		if (w == NULL)
			continue;
		box[0] = Min(box[0], w->box[0]);
		box[1] = Min(box[1], w->box[1]);
		box[2] = Max(box[2], w->box[2]);
		box[3] = Max(box[3], w->box[3]);
	}
	return true;
}

/* One "W x0 y0 x1 y1 eol word" line into w; false if it is not one. */
static bool
read_word_line(const char *line, int len, Word *w)
{
	static const char tag[] = "W ";
	char	   *copy = pnstrdup(line, len);
	char	   *end = copy + strlen(tag);
	char	   *word;
	int			eol;

	bool		ok = after_prefix(copy, tag) != NULL;

	for (int i = 0; ok && i < 4; i++)
	{
		w->box[i] = strtod(end, &end);
		ok = isfinite(w->box[i]) && fabs(w->box[i]) <= 1e6;
	}
	if (ok)
	{
		eol = (int) strtol(end, &word, 10);
		ok = word != end && *word == ' ' && word[1] != '\0' &&
			pg_verify_mbstr(PG_UTF8, word + 1, strlen(word + 1), true);
	}
	if (ok)
	{
		w->eol = eol == 1;
		w->text = normalise_word(word + 1);
		ok = w->text[0] != '\0';
	}
	pfree(copy);
	return ok;
}

/*
 * The helper's 'W' answer into pages of words.  It parsed a hostile
 * document: a line that is not as the protocol says is dropped, and
 * a page number it was not asked for is ignored.
 */
static void
read_words(const char *out, size_t len, CitedDocument *doc, const int32 *asked, int nasked)
{
	PageText   *pt = NULL;
	const char *p = out + 1;
	const char *end = out + len;
	int			total = 0;

	doc->pages = palloc0(sizeof(PageText) * nasked);
	doc->npages = 0;
	while (p < end)
	{
		const char *nl = memchr(p, '\n', end - p);
		int			l = nl ? nl - p : end - p;
		long		page;

		if (l > 2 && p[0] == 'P' && p[1] == ' ' &&
			(page = strtol(p + 2, NULL, 10)) > 0 && doc->npages < nasked &&
			page == asked[doc->npages])
		{
			pt = &doc->pages[doc->npages++];
			pt->page = (int) page;
			pt->words = palloc(sizeof(Word) * 64);
		}
		else if (pt && l > 0 && pt->nwords < MAX_WORDS_PER_PAGE && total < MAX_WORDS &&
				 memchr(p, '\0', l) == NULL && read_word_line(p, l, &pt->words[pt->nwords]))
		{
			total++;
			if (++pt->nwords % 64 == 0)
				pt->words = repalloc(pt->words, sizeof(Word) * (pt->nwords + 64));
		}
		CHECK_FOR_INTERRUPTS();
		p += l + 1;
	}
	for (int i = 0; i < doc->npages; i++)
	{
		flatten_page(&doc->pages[i], &doc->pages[i].joined, true);
		flatten_page(&doc->pages[i], &doc->pages[i].kept, false);
	}
}

static const PageText *
page_text(const CitedDocument *doc, int page)
{
	for (int i = 0; i < doc->npages; i++)
		if (doc->pages[i].page == page)
			return &doc->pages[i];
	return NULL;
}

/* The model's page (of what it was sent) as the document's page, or 0. */
static int
document_page(const CitedDocument *doc, int64 model_page)
{
	if (model_page < 1)
		return 0;
	if (doc->page_numbers == NULL)
		return model_page <= PARSER_MAX_PAGES ? (int) model_page : 0;
	return model_page <= doc->nnumbers ? doc->page_numbers[model_page - 1] : 0;
}

/* An attribution's evidence: *quote (or NULL) and its page (0: none). */
static int64
evidence_of(json_object *attribution, const char **quote)
{
	json_object *ev;
	json_object *v;

	*quote = NULL;
	if (attribution == NULL || !json_object_is_type(attribution, json_type_object) ||
		!json_object_object_get_ex(attribution, "evidence", &ev) ||
		!json_object_is_type(ev, json_type_object))
		return 0;
	if (json_object_object_get_ex(ev, "quote", &v) && json_object_is_type(v, json_type_string))
		*quote = json_object_get_string(v);
	if (json_object_object_get_ex(ev, "page", &v) && json_object_is_type(v, json_type_int))
		return json_object_get_int64(v);
	return 0;
}

static json_object *
rounded(double d)
{
	return json_number_from_double(round(d * 1000.0) / 1000.0);
}

/* {"page", "bbox", "quote", "verified"} for one value's evidence. */
static json_object *
citation(CitedDocument *doc, json_object *attribution)
{
	const char *quote;
	int			page = document_page(doc, evidence_of(attribution, &quote));
	json_object *c = json_object_new_object();
	json_object *raw = quote ? json_object_new_string(quote) : NULL;
	json_object *q = raw ? coerce_value(raw, FORMAT_TEXT, 0, NULL) : NULL;
	const PageText *pt = page ? page_text(doc, page) : NULL;
	double		box[4];
	bool		verified = pt && q && doc->located++ < MAX_QUOTES &&
		locate(pt, normalise_quote(json_object_get_string(q)), box);

	json_object_put(raw);
	json_object_object_add(c, "page", page ? json_object_new_int(page) : NULL);
	if (verified)
	{
		json_object *b = json_object_new_array();

		for (int i = 0; i < 4; i++)
			json_object_array_add(b, rounded(box[i]));
		json_object_object_add(c, "bbox", b);
	}
	else
		json_object_object_add(c, "bbox", NULL);
	json_object_object_add(c, "quote", q);
	json_object_object_add(c, "verified", json_object_new_boolean(verified));
	return c;
}

/* The answer's evidence for the general fields, and per line item. */
static json_object *
general_evidence(json_object *answer)
{
	json_object *a = NULL;

	if (answer && json_object_is_type(answer, json_type_object) &&
		json_object_object_get_ex(answer, "attributions", &a) &&
		json_object_is_type(a, json_type_object))
		return a;
	return NULL;
}

static json_object *
table_evidence(json_object *answer, size_t row)
{
	json_object *rows = NULL;
	json_object *r;

	if (answer && json_object_is_type(answer, json_type_object) &&
		json_object_object_get_ex(answer, "table_attributions", &rows) &&
		json_object_is_type(rows, json_type_array) && row < json_object_array_length(rows) &&
		json_object_is_type(r = json_object_array_get_idx(rows, row), json_type_object))
		return r;
	return NULL;
}

static json_object *
member(json_object *obj, const char *key)
{
	json_object *v = NULL;

	if (obj)
		json_object_object_get_ex(obj, key, &v);
	return v;
}

/* Add each cited page of these fields' evidence to wanted (indexed by page). */
static void
want_pages(const CitedDocument *doc, json_object *evidence, const TemplateField *f, int n,
		   bool *wanted, int max_page)
{
	for (int i = 0; evidence && i < n; i++)
	{
		const char *quote;
		int			page = document_page(doc, evidence_of(member(evidence, f[i].key), &quote));

		if (page > 0 && page <= max_page && quote)
			wanted[page] = true;
	}
}

/*
 * The cited pages' words, from the document read as the role that
 * submitted the extraction (what it may no longer see, is not read).
 */
static void
load_words(CitedDocument *doc, json_object *answer, const Template *t, int nrows,
		   const pg_uuid_t *extraction, Oid owner)
{
	Privileged	as_owner;
	bool		isnull;
	bool	   *wanted;
	int32	   *asked;
	int			nasked = 0;
	int			page_count;
	Datum		d;
	size_t		len;
	char	   *out;

	act_as_begin(&as_owner, owner);
	spi_execute_with_args("SELECT d.content, d.page_count, e.page_numbers, d.filename"
						  "  FROM docextract.extractions e"
						  "  JOIN docextract.documents d ON d.id = e.document_id"
						  " WHERE e.id = $1 AND d.content_type = 'application/pdf'",
						  1, (Oid[]) {UUIDOID}, (Datum[]) {UUIDPGetDatum(extraction)},
						  NULL, true, 1);
	act_as_end(&as_owner);
	if (SPI_processed != 1)
		return;					/* not a PDF, or no longer visible: nothing verified */
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	if (!isnull)
	{
		Datum	   *elems;

		deconstruct_array(DatumGetArrayTypeP(d), INT4OID, sizeof(int32), true, TYPALIGN_INT,
						  &elems, NULL, &doc->nnumbers);
		doc->page_numbers = palloc(sizeof(int32) * Max(doc->nnumbers, 1));
		for (int i = 0; i < doc->nnumbers; i++)
			doc->page_numbers[i] = DatumGetInt32(elems[i]);
	}
	page_count = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	wanted = palloc0(sizeof(bool) * (page_count + 1));
	want_pages(doc, general_evidence(answer), t->general, t->ngeneral, wanted, page_count);
	for (int r = 0; r < nrows; r++)
		want_pages(doc, table_evidence(answer, r), t->table, t->ntable, wanted, page_count);
	asked = palloc(sizeof(int32) * (page_count + 1));
	for (int p = 1; p <= page_count; p++)
		if (wanted[p])
			asked[nasked++] = p;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (nasked == 0 || isnull)
		return;
	out = parser_pages_request(PARSER_WANT_WORDS, VARDATA_ANY(DatumGetByteaPP(d)),
							   VARSIZE_ANY_EXHDR(DatumGetByteaPP(d)), asked, nasked, 0,
							   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4), &len);
	if (len >= 1 && out[0] == 'W')
		read_words(out, len, doc, asked, nasked);
}

static void
words_step(void *arg)
{
	WordsStep  *s = arg;

	load_words(s->doc, s->answer, s->t, s->nrows, s->extraction, s->owner);
}

static json_object *
cite_fields(CitedDocument *doc, json_object *evidence, const TemplateField *f, int n)
{
	json_object *out = json_object_new_object();

	for (int i = 0; i < n; i++)
		json_object_object_add(out, f[i].key, citation(doc, member(evidence, f[i].key)));
	return out;
}

/*
 * {"general": {field: citation}, "table": [{column: citation}]} for the
 * typed data's fields and rows, from the answer's evidence.
 */
json_object *
citations_build(json_object *answer, json_object *data, const Template *t,
				const pg_uuid_t *extraction, Oid owner)
{
	CitedDocument doc;
	json_object *rows = member(data, "table");
	int			nrows = rows && json_object_is_type(rows, json_type_array)
		? (int) json_object_array_length(rows) : 0;
	json_object *out = json_object_new_object();
	json_object *table = json_object_new_array();

	WordsStep	step = {&doc, answer, t, nrows, extraction, owner};
	char	   *err;

	memset(&doc, 0, sizeof(doc));
	spi_connect();
	/* No words (the role is gone, the parser gave up): nothing is verified,
	 * but the answer the model gave is kept. */
	if ((err = in_subtransaction(words_step, &step)) != NULL)
	{
		elog(LOG, "docextract: citations of extraction %s are not verified: %s",
			 uuid_text(UUIDPGetDatum(extraction)), err);
		memset(&doc, 0, sizeof(doc));
	}
	json_object_object_add(out, "general",
						   cite_fields(&doc, general_evidence(answer), t->general, t->ngeneral));
	for (int r = 0; r < nrows && t->has_table; r++)
		json_object_array_add(table, cite_fields(&doc, table_evidence(answer, r), t->table, t->ntable));
	json_object_object_add(out, "table", table);
	spi_finish();
	return out;
}
