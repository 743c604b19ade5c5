/*
 * split.c: options.split, a PDF holding several documents.
 *
 * The parent extraction's one request asks the model for the documents in
 * the file: a page range each (split_request_template).  Its answer, once
 * repaired (split_ranges.c), becomes one sub-document per range: a
 * documents row with parent_id, page_start, page_end and a PDF of only those
 * pages, written by libqpdf in the sandboxed parser helper (pages.c), and
 * an extraction of it with the parent's template, model, owner and options
 * (less split).  Submitted without a template, the same request has the
 * model name each range's template among the classification candidates
 * (classify.c); a range it names none for is classified on its own.  All of it is written in the transaction that stores the
 * parent's answer, which marks the parent split (split_count): a worker
 * that dies before that commit leaves nothing, and the parent is split
 * again; after it, never again.  Unique indexes on (parent, range) make a
 * second set impossible all the same.
 *
 * The parent holds the credits of all its pages (reserved at submit); its
 * sub-documents reserve and charge nothing.  Trigger split_follow moves
 * the parent on as they end and charges it, once, for the pages that were
 * read.
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

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

/* completion_percentage once split: the rest follows the sub-documents. */
#define SPLIT_DONE_PERCENT 10

/* The parent extraction and its document, as read to split it. */
typedef struct SplitParent
{
	Datum		id;
	Datum		document;
	Datum		template_id;
	bool		template_null;
	Datum		options;		/* jsonb */
	Datum		model;			/* text */
	Datum		owner;			/* oid: the submitter */
	Datum		doc_owner;		/* oid */
	DocumentInput doc;
} SplitParent;

/* Is options.split true in an extraction's options (text)? */
bool
split_requested(const char *options)
{
	json_object *j = json_tokener_parse(options ? options : "{}");
	json_object *v;
	bool		split = json_object_object_get_ex(j, EXTRACT_OPT_SPLIT, &v) &&
		json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);

	json_object_put(j);
	return split;
}

/*
 * At submit: split takes a PDF (an image is one document: 22023), and
 * not with options.pages (which pages would the children be?).
 */
void
split_check_submit(Datum document, bool with_pages)
{
	char	   *type;

	if (with_pages)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options \"split\" and \"pages\" cannot be used together"),
				 errhint("Split the whole document; each sub-document is extracted whole.")));
	if (SPI_execute_with_args("SELECT content_type FROM docextract.documents WHERE id = $1",
							  1, (Oid[]) {UUIDOID}, &document, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		return;					/* check_visible() said what was wrong */
	type = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (type == NULL || strcmp(type, "application/pdf") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"split\" needs a PDF; document %s is %s, which is one document",
						uuid_text(document), type ? type : "not a document"),
				 errhint("Extract it without \"split\".")));
}

static TemplateField
range_field(const char *key, const char *name, const char *prompt, FormatType format, int position)
{
	TemplateField f;

	memset(&f, 0, sizeof(f));
	f.key = pstrdup(key);
	f.name = pstrdup(name);
	f.prompt = pstrdup(prompt);
	f.format = format;
	f.position = position;
	return f;
}

/* The name of the template of extraction id (for the split request). */
static char *
split_template_name(pg_uuid_t *id)
{
	char	   *name = NULL;

	spi_connect();
	if (SPI_execute_with_args("SELECT t.name FROM docextract.extractions e"
							  " JOIN docextract.templates t ON t.id = e.template_id WHERE e.id = $1",
							  1, (Oid[]) {UUIDOID}, (Datum[]) {UUIDPGetDatum(id)}, NULL, true, 1)
		!= SPI_OK_SELECT)
		elog(ERROR, "could not read the template of extraction %s", uuid_text(UUIDPGetDatum(id)));
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		name = v ? MemoryContextStrdup(CurTransactionContext, v) : NULL;
	}
	spi_finish();
	return name;
}

/*
 * What the split request of extraction id asks: one row per document in
 * the file, its first and last page and its kind: the template's name, or
 * (template_id NULL) one of the candidates c of role owner (classify.c),
 * presented as classification presents them.
 */
void
split_request_template(Template *out, pg_uuid_t *id, const ClassifyCandidates *c, Oid owner)
{
	TemplateField *f = palloc0(sizeof(TemplateField) * 3);
	const char *intro = "The file may hold several documents one after another (for example "
		"invoices scanned together). Find where each document begins and ends.";

	memset(out, 0, sizeof(*out));
	f[0] = range_field("page_start", "First page",
					   "The first page of this document in the file; pages are numbered from 1.",
					   FORMAT_NUMBER, 0);
	f[1] = range_field("page_end", "Last page",
					   "The last page of this document in the file.", FORMAT_NUMBER, 1);
	f[2] = range_field("template", "Kind of document", c
					   ? "The label of the candidate template that fits this document, exactly as listed; null if none fits."
					   : "What kind of document it is.", FORMAT_MULTIPLE_CHOICE, 2);
	if (c)
	{
		char	   *prompt;
		int			n;

		(void) classify_candidates(owner, &n, &prompt);
		f[2].noptions = c->n;
		f[2].options = c->labels;
		out->global_instructions = psprintf("%s For each, choose the candidate template below "
											"that fits it.\n%s", intro, prompt);
	}
	else
	{
		f[2].noptions = 1;
		f[2].options = palloc(sizeof(char *));
		f[2].options[0] = split_template_name(id);
		if (f[2].options[0] == NULL)
			f[2].options[0] = pstrdup("document");
		out->global_instructions = pstrdup(intro);
	}
	out->has_table = true;
	out->ntable = 3;
	out->table = f;
	out->table_prompt =
		pstrdup("List every document in the file in page order, one row each. Every page "
				"belongs to exactly one document; a document's pages are consecutive.");
}

/*
 * The parent, still in a worker's hand and not split yet, with its
 * document; false if it is not (cancelled meanwhile, or split already).
 */
static bool
load_parent(pg_uuid_t *id, SplitParent *p)
{
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bytea	   *content;

	p->id = UUIDPGetDatum(id);
	if (SPI_execute_with_args("SELECT e.document_id, e.template_id, e.options, e.model_name, e.owner::oid,"
							  "       d.owner::oid, d.filename, d.content_type, d.content, d.page_count, d.text"
							  "  FROM docextract.extractions e JOIN docextract.documents d ON d.id = e.document_id"
							  " WHERE e.id = $1 AND e.status IN " IN_HAND_STATUSES " AND e.split_count IS NULL",
							  1, (Oid[]) {UUIDOID}, &p->id, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read extraction %s", uuid_text(p->id));
	if (SPI_processed != 1)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	p->document = SPI_getbinval(tup, desc, 1, &isnull);
	p->template_id = SPI_getbinval(tup, desc, 2, &p->template_null);
	p->options = SPI_getbinval(tup, desc, 3, &isnull);
	p->model = SPI_getbinval(tup, desc, 4, &isnull);
	p->owner = SPI_getbinval(tup, desc, 5, &isnull);
	p->doc_owner = SPI_getbinval(tup, desc, 6, &isnull);
	memset(&p->doc, 0, sizeof(p->doc));
	p->doc.filename = SPI_getvalue(tup, desc, 7);
	p->doc.content_type = SPI_getvalue(tup, desc, 8);
	content = (bytea *) DatumGetPointer(SPI_getbinval(tup, desc, 9, &isnull));
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("document \"%s\" has no content any more", p->doc.filename)));
	content = DatumGetByteaPP(PointerGetDatum(content));
	p->doc.data = VARDATA_ANY(content);
	p->doc.len = VARSIZE_ANY_EXHDR(content);
	p->doc.page_count = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
	p->doc.text = SPI_getvalue(tup, desc, 11);
	return true;
}

/*
 * The parent waits for its n sub-documents from now on, processing (from
 * classifying, when it was submitted without a template), held by no worker.
 */
static void
mark_split(SplitParent *p, int n)
{
	if (SPI_execute_with_args("UPDATE docextract.extractions"
							  " SET split_count = $2, completion_percentage = $3, worker_pid = NULL,"
							  "     status = 'processing'"
							  " WHERE id = $1 AND status IN " IN_HAND_STATUSES " AND split_count IS NULL",
							  3, (Oid[]) {UUIDOID, INT4OID, INT4OID},
							  (Datum[]) {p->id, Int32GetDatum(n), Int32GetDatum(SPLIT_DONE_PERCENT)},
							  NULL, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "could not mark extraction %s split", uuid_text(p->id));
}

/*
 * The sub-document of pages r: its PDF made by the parser helper (libqpdf),
 * its text cut from the parent's.  One made earlier for the same pages (by
 * another split of the same document) is taken as it is.
 */
static Datum
child_document(SplitParent *p, const SplitRange *r)
{
	DocumentInput doc = p->doc;
	int			n = r->page_end - r->page_start + 1;
	int32	   *pages = palloc(sizeof(int32) * n);
	bytea	   *content;
	bool		isnull;
	char	   *name;

	for (int i = 0; i < n; i++)
		pages[i] = r->page_start + i;
	document_select_pages(&doc, pages, n);
	content = palloc(VARHDRSZ + doc.len);
	SET_VARSIZE(content, VARHDRSZ + doc.len);
	memcpy(VARDATA(content), doc.data, doc.len);
	name = n == 1 ? psprintf("%s (page %d)", p->doc.filename, r->page_start)
		: psprintf("%s (pages %d-%d)", p->doc.filename, r->page_start, r->page_end);
	if (SPI_execute_with_args("WITH ins AS (INSERT INTO docextract.documents"
							  "  (filename, content_type, size_bytes, sha256, page_count, content, text,"
							  "   parent_id, page_start, page_end, owner)"
							  "  VALUES ($1, 'application/pdf', length($2), encode(sha256($2), 'hex'), $3, $2, $4,"
							  "          $5, $6, $7, $8::regrole)"
							  "  ON CONFLICT (parent_id, page_start, page_end)"
							  "    WHERE parent_id IS NOT NULL AND deleted_at IS NULL DO NOTHING RETURNING id)"
							  " SELECT id FROM ins UNION ALL"
							  " SELECT id FROM docextract.documents WHERE parent_id = $5 AND page_start = $6"
							  "    AND page_end = $7 AND deleted_at IS NULL LIMIT 1",
							  8, (Oid[]) {TEXTOID, BYTEAOID, INT4OID, TEXTOID, UUIDOID, INT4OID, INT4OID, OIDOID},
							  (Datum[]) {CStringGetTextDatum(name), PointerGetDatum(content), Int32GetDatum(n),
								  doc.text ? CStringGetTextDatum(doc.text) : (Datum) 0, p->document,
								  Int32GetDatum(r->page_start), Int32GetDatum(r->page_end), p->doc_owner},
							  doc.text ? NULL : "   n    ", false, 0) != SPI_OK_SELECT ||
		SPI_processed < 1)
		elog(ERROR, "could not store pages %d-%d of document \"%s\"", r->page_start, r->page_end,
			 p->doc.filename);
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
}

/*
 * The template of range r: the parent's; with candidates c (template_id
 * NULL), the one the model named, or none (NULL): the sub-document is then
 * classified on its own (classify.c).
 */
static Datum
range_template(SplitParent *p, const ClassifyCandidates *c, const SplitRange *r, bool *isnull)
{
	int			i;

	*isnull = p->template_null;
	if (c == NULL)
		return p->template_id;
	i = classify_candidate_index(c, r->template_name);
	*isnull = i < 0;
	return i < 0 ? (Datum) 0 : DirectFunctionCall1(uuid_in, CStringGetDatum(c->ids[i]));
}

/*
 * The sub-document's extraction: the template of its range, the parent's
 * model, owner and options less split.
 */
static void
child_extraction(SplitParent *p, Datum document, Datum template_id, bool template_null)
{
	int			nestlevel = NewGUCNestLevel();

	/* Announced as queued; reserve_credits leaves it alone (its parent holds its pages). */
	(void) set_config_option("docextract.submitting", "on", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_execute_with_args("INSERT INTO docextract.extractions"
							  " (document_id, template_id, options, owner, model_name, parent_extraction_id,"
							  "  classification)"
							  " VALUES ($1, $2, $3 - 'split' - 'force', $4::regrole, $5, $6,"
							  "         CASE WHEN $2 IS NULL THEN '{}'::jsonb END)"
							  " ON CONFLICT (parent_extraction_id, document_id)"
							  "   WHERE parent_extraction_id IS NOT NULL DO NOTHING",
							  6, (Oid[]) {UUIDOID, UUIDOID, JSONBOID, OIDOID, TEXTOID, UUIDOID},
							  (Datum[]) {document, template_id, p->options, p->owner, p->model, p->id},
							  template_null ? " n    " : NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not enqueue a sub-document of extraction %s", uuid_text(p->id));
	AtEOXact_GUC(true, nestlevel);
}

/*
 * The split answer of extraction id: its sub-documents and their
 * extractions, in the caller's transaction (c: the candidates, when it was
 * submitted without a template).  Nothing if it is no longer
 * processing (cancelled meanwhile).
 */
void
split_store(pg_uuid_t *id, json_object *answer, const ClassifyCandidates *c)
{
	SplitParent p;
	SplitRange *ranges;
	int			n;
	MemoryContext range_cxt;

	spi_connect();
	if (!load_parent(id, &p))
	{
		spi_finish();
		return;
	}
	ranges = split_ranges_repair(answer, p.doc.page_count, &n);
	mark_split(&p, n);
	/* Each sub-document's bytes are freed once stored: one at a time in memory. */
	range_cxt = AllocSetContextCreate(CurrentMemoryContext, "docextract split range",
									  ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < n; i++)
	{
		bool		template_null;
		Datum		template_id = range_template(&p, c, &ranges[i], &template_null);
		MemoryContext old = MemoryContextSwitchTo(range_cxt);

		child_extraction(&p, child_document(&p, &ranges[i]), template_id, template_null);
		MemoryContextSwitchTo(old);
		MemoryContextReset(range_cxt);
	}
	MemoryContextDelete(range_cxt);
	/* Tests: the worker stops here, children written but not committed. */
	crashguard_fault_point(psprintf("%s#split", p.doc.filename));
	spi_finish();
	docextract_wake_worker_at_commit();
}
