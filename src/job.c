/*
 * job.c: one extraction, from claimed row to stored result.
 *
 * job_prepare() loads what the request needs and starts it; job_finish()
 * reads the answer, types it and stores it.  Each runs inside a transaction
 * of the caller's; an error in either is the job's failure, not the worker's.
 * A Job lives in its own memory context, from claim to release.
 *
 * A job sends one request, or two in parallel (parts: the general fields,
 * then the line items), each asking for its part of the template.  Each
 * answer is read as it arrives; the job is finished when all are in, or at
 * the first that failed.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "classify.h"

#include "answer.h"
#include "document.h"
#include "http.h"
#include "job.h"
#include "options.h"
#include "privileged.h"
#include "provider.h"
#include "queue.h"
#include "ratelimit.h"
#include "settings.h"
#include "spi_checked.h"
#include "statuses.h"
#include "template.h"
#include "util.h"
#include "worker.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include <curl/curl.h>

#include <math.h>

/* When neither the extraction nor the model says otherwise. */
#define DEFAULT_MAX_RETRIES 2
#define DEFAULT_RETRY_BACKOFF_MS 1000
#define MAX_RETRY_DELAY_MS (5 * 60 * 1000)

#define MAX_PARTS 2

typedef struct JobPart
{
	Template	tmpl;			/* the part of the job's template asked for */
	HttpRequest req;
	bool		started;
	bool		answered;		/* req done and its answer read */
	char	   *error;			/* why not, once done */
	bool		unreadable;		/* an answer came but made no sense */
	ProviderReply reply;
} JobPart;

struct Job
{
	MemoryContext cxt;
	pg_uuid_t	id;
	int			attempts;
	Template	tmpl;
	ModelConfig model;
	const Provider *provider;
	char	   *url;
	int			nparts;
	JobPart		part[MAX_PARTS];
	JobPart    *failed;			/* the part that failed, if one did */
	Oid			owner;			/* the submitting role, whose rights the job has */
	const char *rules;			/* the template's validation_rules, or NULL */
	bool		auto_approve;
	int			max_retries;
	bool		attributions;	/* per_key_attribution asked */
	bool		citations;		/* citations asked */
	bool		will_retry;
	bool		busy;			/* a session held what finishing needs: later */
	bool		split;			/* options.split: asks for the documents' page ranges */
	bool		sub_document;	/* a split's: its end locks its parent (split_follow) */
	char		slot_model[MODEL_NAME_LEN];	/* its model's slots it holds (ratelimit.c) */
	int			slots_held;
	/* template_id NULL (classify.c): first a request choosing the template. */
	bool		classifying;	/* the request in flight is that one */
	ClassifyCandidates candidates;
	bool		continues;		/* job_finish() chose and sent the extraction's request */
	bool		classified;
	int64		classify_in_tokens;
	int64		classify_out_tokens;
	double		classify_ms;
};

/* Read as the worker: the model and its key, which no submitter may read. */
static const char *model_query =
"SELECT e.owner::oid, e.options::text,"
"       m.name, m.provider, m.base_url, m.model, m.options::text, k.api_key, e.page_numbers,"
"       e.parent_extraction_id IS NOT NULL"
"  FROM docextract.extractions e"
"  LEFT JOIN docextract.models m ON m.name = e.model_name"
"  LEFT JOIN docextract.model_keys k ON k.model_name = m.name"
" WHERE e.id = $1";

/*
 * Read as the submitting role, under its row-level security.  No template
 * (column 6): the document is classified first (classify.c).
 */
static const char *document_query =
"SELECT d.filename, d.content_type, d.content, d.page_count, d.text, e.template_id IS NULL,"
"       " TEMPLATE_ROW_COLUMNS
"  FROM docextract.extractions e"
"  JOIN docextract.documents d ON d.id = e.document_id"
"  LEFT JOIN docextract.templates t ON t.id = e.template_id"
" WHERE e.id = $1 AND (e.template_id IS NULL OR t.id IS NOT NULL)";

Job *
job_create(pg_uuid_t *id, int attempts, int parts)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "docextract job",
											  ALLOCSET_SMALL_SIZES);
	Job		   *job = MemoryContextAllocZero(cxt, sizeof(Job));

	job->cxt = cxt;
	job->id = *id;
	job->attempts = attempts;
	job->nparts = parts == 2 ? 2 : 1;
	for (int i = 0; i < MAX_PARTS; i++)
		job->part[i].req.arg = job;
	return job;
}

/* The job holds n of its model's slots: each request that ends gives one back. */
void
job_hold_slots(Job *job, const char *model, int n)
{
	strlcpy(job->slot_model, model, MODEL_NAME_LEN);
	job->slots_held = n;
}

char *
job_id_text(Job *job)
{
	return uuid_text(UUIDPGetDatum(&job->id));
}

static char *
col_text(int col)
{
	char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);

	return v ? pstrdup(v) : NULL;
}

static void
read_json_options(const char *text, ExtractOptions *o, ModelConfig *m)
{
	json_object *j = json_tokener_parse(text ? text : "{}");
	json_object *v;

	if (o)
	{
		memset(o, 0, sizeof(*o));
		if ((o->has_temperature = json_object_object_get_ex(j, EXTRACT_OPT_TEMPERATURE, &v)))
			o->temperature = json_object_get_double(v);
		if ((o->has_seed = json_object_object_get_ex(j, EXTRACT_OPT_SEED, &v)))
			o->seed = json_object_get_int64(v);
		o->citations = json_object_object_get_ex(j, EXTRACT_OPT_CITATIONS, &v) &&
			json_object_get_boolean(v);
		o->per_key_attribution = json_object_object_get_ex(j, EXTRACT_OPT_PER_KEY_ATTRIBUTION, &v) &&
			json_object_get_boolean(v);
		if ((o->has_max_retries = json_object_object_get_ex(j, EXTRACT_OPT_MAX_RETRIES, &v)))
			o->max_retries = json_object_get_int(v);
		o->auto_approve = !(json_object_object_get_ex(j, EXTRACT_OPT_AUTO_APPROVE, &v) &&
							!json_object_get_boolean(v));
		if (json_object_object_get_ex(j, EXTRACT_OPT_ADDITIONAL_INSTRUCTIONS, &v))
			o->additional_instructions = pstrdup(json_object_get_string(v));
	}
	if (m)
	{
		m->timeout_ms = json_object_object_get_ex(j, MODEL_OPT_TIMEOUT_MS, &v)
			? json_object_get_int64(v) : docextract_default_timeout_ms;
		if ((m->has_temperature = json_object_object_get_ex(j, MODEL_OPT_TEMPERATURE, &v)))
			m->temperature = json_object_get_double(v);
		m->send_file = json_object_object_get_ex(j, MODEL_OPT_DOCUMENT_MODE, &v) &&
			strcmp(json_object_get_string(v), DOCUMENT_MODE_FILE) == 0;
		m->max_retries = json_object_object_get_ex(j, MODEL_OPT_MAX_RETRIES, &v)
			? json_object_get_int(v) : DEFAULT_MAX_RETRIES;
		m->retry_backoff_ms = json_object_object_get_ex(j, MODEL_OPT_RETRY_BACKOFF_MS, &v)
			? json_object_get_int(v) : DEFAULT_RETRY_BACKOFF_MS;
		m->priced = false;
		if (json_object_object_get_ex(j, MODEL_OPT_INPUT_PRICE, &v))
			m->input_price = json_object_get_double(v), m->priced = true;
		if (json_object_object_get_ex(j, MODEL_OPT_OUTPUT_PRICE, &v))
			m->output_price = json_object_get_double(v), m->priced = true;
	}
	json_object_put(j);
}

/*
 * A key stored as "env:NAME" is read from the server's environment, so that
 * it never has to appear in SQL text at all.
 */
static char *
resolve_api_key(char *stored)
{
	const char *value;
	const char *variable = stored ? after_prefix(stored, "env:") : NULL;

	if (variable == NULL)
		return stored;
	value = getenv(variable);
	if (value == NULL || value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the model's api_key names environment variable %s, which is not set in the server's environment",
						variable)));
	return pstrdup(value);
}

/* options.pages, as stored at submit: *n page numbers, or 0 for all. */
static int32 *
page_numbers(int col, int *n)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);
	Datum	   *elems;
	int32	   *pages;

	*n = 0;
	if (isnull)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(d), INT4OID, sizeof(int32), true, TYPALIGN_INT,
					  &elems, NULL, n);
	pages = palloc(sizeof(int32) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		pages[i] = DatumGetInt32(elems[i]);
	return pages;
}

/*
 * The model (and key) into the job; the extraction's options text into
 * *options, its page numbers into *pages (*npages of them, 0: all).
 */
static void
load_model(Job *job, char **options, int32 **pages, int *npages)
{
	bool		isnull;

	static SPIPlanPtr plan = NULL;

	if (spi_execute_plan(spi_kept_plan(&plan, model_query, 1, (Oid[]) {UUIDOID}),
						 (Datum[]) {UUIDPGetDatum(&job->id)}, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extraction %s no longer exists", job_id_text(job))));
	if (SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the extraction's model no longer exists")));
	*options = col_text(2);
	*pages = page_numbers(9, npages);

	/* What outlives this transaction goes into the job's context. */
	MemoryContextSwitchTo(job->cxt);
	job->owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												&isnull));
	job->sub_document = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 10,
												   &isnull));
	job->model.name = col_text(3);
	job->model.provider = col_text(4);
	job->model.base_url = col_text(5);
	job->model.model = col_text(6);
	job->model.api_key = resolve_api_key(col_text(8));
	read_json_options(col_text(7), NULL, &job->model);
	job->provider = provider_lookup(job->model.provider);
	if (job->provider == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("provider \"%s\" is not available", job->model.provider)));
}

/*
 * template_id NULL: the question "which of the owner's templates?" as the
 * job's template (classify.c).
 */
static void
load_candidates(Job *job)
{
	char	   *prompt;
	int			n;
	char	   *json = classify_candidates(job->owner, &n, &prompt);

	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no template to classify the document among: role %s may use no active template",
						GetUserNameFromId(job->owner, false))));
	classify_parse_candidates(json, &job->candidates);
	classify_template(&job->candidates, prompt, &job->tmpl);
	job->rules = NULL;
	job->classifying = true;
}

/*
 * The document into *doc and the template into the job, read as the role
 * that submitted the extraction: what it may no longer see, the worker
 * does not send.
 */
static void
load_document(Job *job, MemoryContext call_cxt, DocumentInput *doc)
{
	Privileged	as_owner;
	bool		isnull;
	TemplateRow row;
	const ParsedTemplate *parsed;

	static SPIPlanPtr plan = NULL;

	act_as_begin(&as_owner, job->owner);
	/* Not read-only: extract_sync's rows are of this very statement. */
	spi_execute_plan(spi_kept_plan(&plan, document_query, 1, (Oid[]) {UUIDOID}),
					 (Datum[]) {UUIDPGetDatum(&job->id)}, NULL, false, 1);
	act_as_end(&as_owner);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the document or template of extraction %s is not visible to role %s, which submitted it",
						job_id_text(job), GetUserNameFromId(job->owner, false))));

	MemoryContextSwitchTo(call_cxt);
	doc->filename = col_text(1);
	doc->content_type = col_text(2);
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		bytea	   *content;

		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("document \"%s\" has no content any more", doc->filename)));
		content = DatumGetByteaPP(d);
		doc->data = VARDATA_ANY(content);
		doc->len = VARSIZE_ANY_EXHDR(content);
	}
	doc->page_count = atoi(col_text(4));
	doc->text = col_text(5);

	MemoryContextSwitchTo(job->cxt);
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull)))
	{
		load_candidates(job);
		return;
	}
	/* Shared with other jobs (template_cache.c): copied by value, never changed. */
	template_row_read(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, true, &row);
	parsed = template_cache_get(&row, job->cxt);
	if (parsed->err)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("template no longer valid: %s", parsed->err)));
	job->tmpl = parsed->tmpl;
	job->rules = parsed->rules;
}

/* The parts' templates: the whole, or the general fields and the line items apart. */
static void
split_template(Job *job)
{
	job->part[0].tmpl = job->tmpl;
	if (job->nparts == 2 && !(job->tmpl.has_table && job->tmpl.ngeneral > 0))
		job->nparts = 1;		/* the template changed shape since submit */
	if (job->nparts == 1)
		return;
	job->part[0].tmpl.has_table = false;
	job->part[0].tmpl.ntable = 0;
	job->part[1].tmpl = job->tmpl;
	job->part[1].tmpl.ngeneral = 0;
}

/*
 * Load the job and start its requests.  Request bodies are built in a
 * scratch context: a 20MB PDF sent inline must not stay in memory for the
 * whole flight.
 */
void
job_prepare(Job *job)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext scratch = AllocSetContextCreate(outer, "docextract request",
												  ALLOCSET_DEFAULT_SIZES);
	DocumentInput doc;
	ExtractOptions opts;
	char	   *options;
	int32	   *pages;
	int			npages;

	spi_connect();
	load_model(job, &options, &pages, &npages);
	load_document(job, outer, &doc);
	if ((job->split = split_requested(options)))
	{
		/*
		 * The split request: the documents in the file (split.c), not the
		 * template's fields; template NULL: each range's among the candidates.
		 */
		MemoryContext prev = MemoryContextSwitchTo(job->cxt);

		split_request_template(&job->tmpl, &job->id, job->classifying ? &job->candidates : NULL,
							   job->owner);
		job->classifying = false;
		job->nparts = 1;
		MemoryContextSwitchTo(prev);
	}
	{
		MemoryContext prev = MemoryContextSwitchTo(outer);

		if (npages > 0)
			document_select_pages(&doc, pages, npages);
		document_prepare_media(&doc, job->model.provider, job->model.send_file);
		MemoryContextSwitchTo(prev);
	}
	crashguard_fault_point(doc.filename);
	MemoryContextSwitchTo(scratch);
	read_json_options(options, &opts, NULL);
	job->auto_approve = opts.auto_approve;
	job->max_retries = Min(opts.has_max_retries ? opts.max_retries : job->model.max_retries,
						   MAX_RETRIES_CAP);	/* options stored before the cap */
	if (job->split)
		opts.per_key_attribution = opts.citations = false;
	job->attributions = opts.per_key_attribution;
	job->citations = opts.citations;
	split_template(job);
	for (int i = 0; i < job->nparts; i++)
	{
		JobPart    *part = &job->part[i];
		struct curl_slist *headers = NULL;
		char	   *body = NULL;
		char	   *url;
		ExtractOptions part_opts = opts;

		/* Evidence for every value of each part: citations locate it. */
		part_opts.per_key_attribution = !job->classifying &&
			(opts.per_key_attribution || opts.citations);
		job->provider->build(&job->model, &part->tmpl, &doc, &part_opts, &url, &headers, &body);
		MemoryContextSwitchTo(job->cxt);
		if (job->url == NULL)
			job->url = pstrdup(url);
		http_start(&part->req, job->url, headers, body, job->model.timeout_ms);
		part->started = true;
		MemoryContextSwitchTo(scratch);
	}
	MemoryContextSwitchTo(outer);
	MemoryContextDelete(scratch);
	spi_finish();
}

/* Why the request did not give us an answer, or NULL if it did. */
static char *
transfer_error(Job *job, HttpRequest *req)
{
	char	   *provider_text;

	if (req->curl_code != 0)
		return psprintf("request to %s failed: %s", job->url, http_error_text(req));
	if (req->status >= 200 && req->status < 300)
		return NULL;
	if ((provider_text = http_redirect_text(req)) != NULL)
		return psprintf("model endpoint answered %s", provider_text);
	provider_text = job->provider->error_text(req->response.data, req->response.len);
	if (provider_text == NULL)
		provider_text = answer_excerpt(req->response.data, req->response.len, ANSWER_TEXT_MAX);
	return psprintf("model endpoint answered HTTP %ld: %s", req->status, provider_text);
}

/* Tokens of all parts; latency of the slowest, as they ran side by side. */
static char *
usage_json(Job *job)
{
	json_object *u = json_object_new_object();
	int64		in = 0,
				out = 0;
	double		latency = 0;
	char	   *text;

	for (int i = 0; i < job->nparts; i++)
	{
		in += job->part[i].reply.input_tokens;
		out += job->part[i].reply.output_tokens;
		latency = Max(latency, job->part[i].req.elapsed_ms);
	}
	/* The classification's request came first. */
	in += job->classify_in_tokens;
	out += job->classify_out_tokens;
	latency += job->classify_ms;
	json_object_object_add(u, "input_tokens", json_object_new_int64(in));
	json_object_object_add(u, "output_tokens", json_object_new_int64(out));
	json_object_object_add(u, "latency_ms", json_number_from_double(rint(latency)));
	json_object_object_add(u, "model", json_object_new_string(job->model.model));
	json_object_object_add(u, "model_name", json_object_new_string(job->model.name));
	json_object_object_add(u, "attempts", json_object_new_int(job->attempts));
	if (job->nparts + job->classified > 1)
		json_object_object_add(u, "requests", json_object_new_int(job->nparts + job->classified));
	/* Prices are per million tokens; the cost is kept to the millionth. */
	if (job->model.priced)
		json_object_object_add(u, "cost", json_number_from_double(
								   rint(in * job->model.input_price +
										out * job->model.output_price) / 1e6));
	text = pstrdup(json_object_to_json_string_ext(u, JSON_C_TO_STRING_PLAIN));
	json_object_put(u);
	return text;
}

static Datum
optional_text(const char *s)
{
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/*
 * Complete the extraction (or send it to review) and store its result,
 * unless it was cancelled meanwhile.  Credits are charged by the status
 * change itself (trigger settle_credits), in this transaction.
 */
static void
store_result(Job *job, StoredResult *r)
{
	Datum		id = UUIDPGetDatum(&job->id);

	spi_connect();
	spi_execute_with_args("UPDATE docextract.extractions"
						  " SET status = CASE WHEN $2 THEN 'awaiting_approval' ELSE 'completed' END,"
						  "     completed_at = CASE WHEN $2 THEN NULL ELSE clock_timestamp() END,"
						  "     completion_percentage = 100, error_message = NULL"
						  " WHERE id = $1 AND " ROW_STATUS_IS("status", "processing"),
						  2, (Oid[]) {UUIDOID, BOOLOID},
						  (Datum[]) {id, BoolGetDatum(r->needs_review)}, NULL, false, 0);
	if (SPI_processed == 1)
		/* Its usage counts in worker_stats (model_stat_deltas), in the same statement. */
		spi_execute_with_args("WITH r AS (INSERT INTO docextract.results"
							  " (extraction_id, document_id, template_id, owner, data, raw_output, usage,"
							  "  attributions, validation, table_attributions, citations)"
							  " SELECT id, document_id, template_id, owner, $2::jsonb, $3::jsonb, $4::jsonb,"
							  "  $5::jsonb, $6::jsonb, $7::jsonb, $8::jsonb"
							  "  FROM docextract.extractions WHERE id = $1"
							  " RETURNING owner, usage)"
							  " INSERT INTO docextract.model_stat_deltas (model_name, owner, latency_ms_sum,"
							  "  latency_n, input_tokens, output_tokens, cost)"
							  " SELECT (SELECT x.model_name FROM docextract.extractions x WHERE x.id = $1), r.owner,"
							  "  coalesce((r.usage->>'latency_ms')::numeric, 0), (r.usage ? 'latency_ms')::integer,"
							  "  coalesce((r.usage->>'input_tokens')::numeric, 0),"
							  "  coalesce((r.usage->>'output_tokens')::numeric, 0), (r.usage->>'cost')::numeric FROM r",
							  8, (Oid[]) {UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID},
							  (Datum[]) {id, CStringGetTextDatum(r->data), CStringGetTextDatum(r->raw),
								  CStringGetTextDatum(r->usage), optional_text(r->attributions),
								  CStringGetTextDatum(r->validation), optional_text(r->table_attributions),
								  optional_text(r->citations)},
							  (char[]) {' ', ' ', ' ', ' ', r->attributions ? ' ' : 'n', ' ',
								  r->table_attributions ? ' ' : 'n', r->citations ? ' ' : 'n'},
							  false, 0);
	spi_finish();
}

/* JSON text of obj, which is freed. */
static char *
json_text_of(json_object *obj)
{
	char	   *text = pstrdup(json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN));

	json_object_put(obj);
	return text;
}

/* Transport errors that another attempt may well not meet. */
static bool
transient_curl_error(int code)
{
	switch ((CURLcode) code)
	{
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_CONNECT:
		case CURLE_OPERATION_TIMEDOUT:
		case CURLE_SEND_ERROR:
		case CURLE_RECV_ERROR:
		case CURLE_GOT_NOTHING:
		case CURLE_PARTIAL_FILE:
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_HTTP2:
		case CURLE_HTTP2_STREAM:
			return true;
		default:
			return false;
	}
}

/* 429, 5xx gateway trouble, timeouts, broken connections, unreadable answers. */
static bool
retryable(HttpRequest *req, bool unreadable_answer)
{
	if (req->over_budget)
		return true;			/* memory is freed as other requests end */
	if (req->curl_code != 0)
		return transient_curl_error(req->curl_code);
	switch (req->status)
	{
		case 429:
		case 500:
		case 502:
		case 503:
		case 504:
			return true;
		default:
			return unreadable_answer;
	}
}

/* Which part is this request's? */
static JobPart *
part_of(Job *job, HttpRequest *req)
{
	for (int i = 0; i < job->nparts; i++)
		if (&job->part[i].req == req)
			return &job->part[i];
	elog(ERROR, "request does not belong to extraction %s", job_id_text(job));
	return NULL;
}

/*
 * One of the job's requests is done: read its answer.  True when the job
 * is ready for job_finish(): every part answered, or this one failed.
 */
bool
job_part_done(Job *job, HttpRequest *req)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);
	JobPart    *part = part_of(job, req);
	bool		ready = true;

	/* A classification's slot is kept for the extraction's request. */
	if (job->slots_held > 0 && !job->classifying)
	{
		ratelimit_release(job->slot_model, 1, true);
		job->slots_held--;
	}

	part->error = transfer_error(job, req);
	if (part->error == NULL &&
		(part->error = job->provider->parse(req->response.data, req->response.len,
											&part->reply)) != NULL)
	{
		part->error = psprintf("could not read the model's answer: %s", part->error);
		part->unreadable = true;
	}
	if (part->error)
		job->failed = part;
	else
	{
		part->answered = true;
		for (int i = 0; i < job->nparts; i++)
			ready = ready && job->part[i].answered;
	}
	MemoryContextSwitchTo(old);
	return ready;
}

/* Parts answered so far, as completion_percentage (event extraction.progress). */
void
job_record_progress(Job *job)
{
	int			answered = 0;

	for (int i = 0; i < job->nparts; i++)
		answered += job->part[i].answered;
	if (docextract_never_wait && !queue_lock_nowait(&job->id))
		return;					/* a session holds the row: no progress event */
	queue_progress(&job->id, 100 * answered / job->nparts);
}

/*
 * A part failed.  Worth another attempt: schedule one (status retrying),
 * the other part dropped.  Otherwise, or the last time, an ERROR whose
 * message (API key redacted) is the job's error_message.
 */
static void
handle_failure(Job *job)
{
	JobPart    *part = job->failed;
	char	   *err = redact_secret(part->error, job->model.api_key);

	if (retryable(&part->req, part->unreadable) && job->attempts <= job->max_retries)
	{
		long		delay = http_retry_delay_ms(&part->req, job->model.retry_backoff_ms,
												job->attempts, MAX_RETRY_DELAY_MS);

		elog(LOG, "docextract worker: extraction %s attempt %d failed, retrying in %ld ms: %s",
			 job_id_text(job), job->attempts, delay, err);
		queue_retry(&job->id, err, delay);
		job->will_retry = true;
		return;
	}
	if (job->attempts > 1)
		err = psprintf("%s (attempt %d of %d)", err, job->attempts, job->max_retries + 1);
	/* The model, outside the database, failed: 38000, never XX000. */
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg_internal("%s", err)));
}

/* The parts' answers as one: the first's, with the second's "table". */
static json_object *
merged_answer(Job *job)
{
	json_object *answer = job->part[0].reply.output;
	json_object *table;

	if (job->nparts == 2 &&
		json_object_object_get_ex(job->part[1].reply.output, "table", &table))
		json_object_object_add(answer, "table", json_object_get(table));
	if (job->nparts == 2 &&
		json_object_object_get_ex(job->part[1].reply.output, "table_attributions", &table))
		json_object_object_add(answer, "table_attributions", json_object_get(table));
	return answer;
}

/*
 * The classification chose a template: recorded, the extraction's request
 * goes out in the same job, counted as one more send of the model in the
 * slot the classification held.
 */
static void
continue_with_template(Job *job)
{
	JobPart    *part = &job->part[0];

	/* Failing here (a step tried again later), the job still holds the classification's answer. */
	job->classifying = false;
	PG_TRY();
	{
		job_prepare(job);
	}
	PG_CATCH();
	{
		job->classifying = true;
		PG_RE_THROW();
	}
	PG_END_TRY();
	json_object_put(part->reply.output);
	memset(&part->reply, 0, sizeof(part->reply));
	part->answered = false;
	part->error = NULL;
	part->unreadable = false;
	if (job->slots_held > 0)
	{
		(void) ratelimit_reserve(job->slot_model, 0, 0, 1, 0, true);
		ratelimit_release(job->slot_model, 1, true);
	}
	job->continues = true;
}

/* The classification's answer: go on with the template, wait for a reviewer, or fail. */
static void
finish_classification(Job *job)
{
	JobPart    *part = &job->part[0];
	ClassifyChoice ch;

	classify_read_answer(part->reply.output, &job->candidates, &ch);
	job->classified = true;
	job->classify_in_tokens = part->reply.input_tokens;
	job->classify_out_tokens = part->reply.output_tokens;
	job->classify_ms = part->req.elapsed_ms;
	if (ch.index < 0 && !job->auto_approve)
		classify_await_review(&job->id, &job->candidates, &ch, job->classify_in_tokens,
							  job->classify_out_tokens);
	else if (ch.index < 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg_internal("%s", classify_failure_message(&job->candidates, ch.why))));
	else if (classify_record_choice(&job->id, &job->candidates, &ch, job->classify_in_tokens,
									job->classify_out_tokens))
		continue_with_template(job);
}

/* Did job_finish() send the extraction's request (the job goes on)?  Asked once. */
bool
job_continues(Job *job)
{
	bool		continues = job->continues;

	job->continues = false;
	return continues;
}

/*
 * Every part answered, or one failed: type and store the answer, or
 * handle the failure.
 */
void
job_finish(Job *job)
{
	StoredResult r;

	/* The worker does not wait for a session's locks: it keeps the job. */
	job->busy = docextract_never_wait && !queue_lock_nowait(&job->id);
	if (job->busy)
		return;
	if (job->failed)
	{
		handle_failure(job);
		return;
	}
	if (job->classifying)
	{
		finish_classification(job);
		return;
	}
	if (job->split)
	{
		split_store(&job->id, merged_answer(job), job->candidates.n > 0 ? &job->candidates : NULL);
		return;
	}
	job_build_result(job, &r);
	store_result(job, &r);
}

/*
 * The answers typed and checked, as the texts to store (batch_finish.c
 * stores a batch of them in one statement).
 */
void
job_build_result(Job *job, StoredResult *rp)
{
	json_object *answer;
	json_object *data;
	json_object *validation;
	StoredResult r;
	bool		passed;

	answer = merged_answer(job);
	data = coerce_output(answer, &job->tmpl);
	validation = validation_run(job->rules, data, &passed);
	if (charlimit_apply(data, &job->tmpl, validation) > 0)
		passed = false;			/* a value was cut: a reviewer should see it */
	r.validation = json_text_of(validation);
	r.needs_review = !passed || !job->auto_approve;
	r.citations = job->citations
		? json_text_of(citations_build(answer, data, &job->tmpl, &job->id, job->owner)) : NULL;
	r.data = json_text_of(data);
	r.attributions = job->attributions
		? json_text_of(coerce_attributions(answer, &job->tmpl)) : NULL;
	r.table_attributions = job->attributions && job->tmpl.has_table
		? json_text_of(coerce_table_attributions(answer, &job->tmpl)) : NULL;
	r.raw = pstrdup(json_object_to_json_string_ext(answer, JSON_C_TO_STRING_PLAIN));
	r.usage = usage_json(job);
	*rp = r;
}

/* Can batch_finish.c store it with others? */
bool
job_batchable(Job *job)
{
	/*
	 * Not: a failure, citations (SQL of their own), a classification or a
	 * split request (they go on), a sub-document (its parent's row is
	 * locked too, queue_lock_nowait()).
	 */
	return job->failed == NULL && !job->citations && !job->classifying && !job->split &&
		!job->sub_document;
}

bool
job_busy(Job *job)
{
	return job->busy;
}

bool
job_will_retry(Job *job)
{
	return job->will_retry;
}

pg_uuid_t *
job_id(Job *job)
{
	return &job->id;
}

/* Forget the job; a request still in flight is dropped. */
void
job_release(Job *job)
{
	for (int i = 0; i < MAX_PARTS; i++)
	{
		if (job->part[i].started)
			http_cancel(&job->part[i].req);
		json_object_put(job->part[i].reply.output);
	}
	if (job->model.api_key)
		memset(job->model.api_key, 0, strlen(job->model.api_key));
	ratelimit_release(job->slot_model, job->slots_held, true);
	MemoryContextDelete(job->cxt);
}
