/*
 * classify.c: template_id NULL, the document classified among the
 * templates its submitter may use.
 *
 * One request asks the model to choose among the candidates
 * (classify_candidates.c), with the provider's own JSON-output mode: the
 * question is put as a template of two fields, "template" (a multiple
 * choice among the candidates' labels, "<n>. <name>") and "confidence" (a
 * number), so that every provider builds it as it builds an extraction.
 * The answer is read as untrusted: only a label, an index or a name of a
 * listed candidate chooses it, at or above docextract.classify_min_confidence;
 * anything else (null, another type, an index out of range, an id or a
 * name not in the list) is "nothing fits".  The chosen template is
 * recorded on the extraction (template_id and the classification column),
 * which then goes on, in the same job, as an extraction with that template.
 * Nothing fits: the job fails naming the candidates, or, with
 * auto_approve false, waits for a reviewer, who picks one with
 * approve(id, '{"template_id": ...}').
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "classify.h"
#include "privileged.h"
#include "queue.h"
#include "settings.h"
#include "spi_checked.h"
#include "statuses.h"
#include "template.h"
#include "util.h"
#include "workerset.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include <math.h>

double		docextract_classify_min_confidence = 0.5;

/* How much of a model's unexpected answer a message quotes. */
#define ANSWER_QUOTE_MAX 80

void
classify_define_settings(void)
{
	DefineCustomRealVariable("docextract.classify_min_confidence",
							 "Confidence (0 to 1) below which a classification's choice is not taken.",
							 "Below it, nothing fits: the extraction fails, or awaits a reviewer's pick when auto_approve is false.",
							 &docextract_classify_min_confidence, 0.5, 0.0, 1.0,
							 PGC_SUSET, 0, NULL, NULL, NULL);
}

/* The candidates listed in classify_candidates()'s JSON text. */
void
classify_parse_candidates(const char *json, ClassifyCandidates *c)
{
	json_object *arr = json_tokener_parse(json);

	c->n = arr ? (int) json_object_array_length(arr) : 0;
	c->ids = palloc0(sizeof(char *) * Max(c->n, 1));
	c->names = palloc0(sizeof(char *) * Max(c->n, 1));
	c->labels = palloc0(sizeof(char *) * Max(c->n, 1));
	for (int i = 0; i < c->n; i++)
	{
		json_object *o = json_object_array_get_idx(arr, i);

		c->ids[i] = pstrdup(json_member_string(o, "id"));
		c->names[i] = pstrdup(json_member_string(o, "name"));
		c->labels[i] = pstrdup(json_member_string(o, "label"));
	}
	json_object_put(arr);
}

/*
 * The question as a template: which candidate (by label) and how sure.
 * prompt presents the candidates (classify_candidates()).
 */
void
classify_template(const ClassifyCandidates *c, const char *prompt, Template *t)
{
	TemplateField *f = palloc0(sizeof(TemplateField) * 2);

	memset(t, 0, sizeof(*t));
	f[0].key = "template";
	f[0].name = "Template";
	f[0].prompt = "the label of the one candidate template that fits this document, exactly as listed; null if none of them fits";
	f[0].format = FORMAT_MULTIPLE_CHOICE;
	f[0].noptions = c->n;
	f[0].options = c->labels;
	f[0].position = 1;
	f[1].key = "confidence";
	f[1].name = "Confidence";
	f[1].prompt = "how sure you are that the chosen template fits, from 0 (a guess) to 1 (certain)";
	f[1].format = FORMAT_NUMBER;
	f[1].position = 2;
	t->ngeneral = 2;
	t->general = f;
	t->global_instructions =
		psprintf("This time, do not extract values: classify the document.  Decide which one of "
				 "the candidate templates below fits it, judging by each template's name, "
				 "description and fields, and answer with that template's label.  If none of "
				 "them fits, answer null.\n%s", prompt);
	t->general_prompt = "Answer which template fits the document, and your confidence.";
}

/* A quoted excerpt of an unexpected answer, for a message. */
static char *
quoted(json_object *v)
{
	const char *text = json_object_is_type(v, json_type_string) ? json_object_get_string(v)
		: json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);

	return answer_excerpt(text, -1, ANSWER_QUOTE_MAX);
}

/* The candidate a string names: its label, its index, or its name if unique; -1: none. */
static int
candidate_named(const ClassifyCandidates *c, const char *s)
{
	int			found = -1;
	char	   *end;
	long		n;

	while (*s == ' ' || *s == '\t' || *s == '\n')
		s++;
	for (int i = 0; i < c->n; i++)
		if (pg_strcasecmp(s, c->labels[i]) == 0)
			return i;
	n = strtol(s, &end, 10);
	if (end != s && (*end == '\0' || *end == '.') && n >= 1 && n <= c->n &&
		(*end == '\0' || end[1] == '\0'))
		return (int) n - 1;
	for (int i = 0; i < c->n; i++)
		if (pg_strcasecmp(s, c->names[i]) == 0)
		{
			if (found >= 0)
				return -1;		/* two candidates of that name: not a choice */
			found = i;
		}
	return found;
}

/* Which candidate the answer's "template" names; -1 and *why if none. */
static int
chosen_index(const ClassifyCandidates *c, json_object *v, char **why)
{
	int			i = -1;

	if (v == NULL || json_object_is_type(v, json_type_null))
		*why = pstrdup("the model found that none of the candidates fits");
	else if (json_object_is_type(v, json_type_int))
	{
		int64		n = json_object_get_int64(v);

		if (n >= 1 && n <= c->n)
			return (int) n - 1;
		*why = psprintf("the model answered template number %s, which is not one of the %d candidates",
						quoted(v), c->n);
	}
	else if (!json_object_is_type(v, json_type_string))
		*why = psprintf("the model's \"template\" is not a label but %s", quoted(v));
	else if ((i = candidate_named(c, json_object_get_string(v))) < 0)
		*why = psprintf("the model answered \"%s\", which is not one of the candidates", quoted(v));
	return i;
}

/*
 * Read the model's answer (untrusted): the candidate chosen and the
 * confidence, or index -1 and why nothing was chosen.
 */
void
classify_read_answer(json_object *answer, const ClassifyCandidates *c, ClassifyChoice *out)
{
	json_object *general = json_member(answer, "general", json_type_object);
	json_object *v = NULL;
	json_object *conf;

	memset(out, 0, sizeof(*out));
	out->index = -1;
	if (general == NULL)
	{
		out->why = pstrdup("the model's answer has no \"general\" object");
		return;
	}
	json_object_object_get_ex(general, "confidence", &v);
	conf = v ? coerce_value(v, FORMAT_NUMBER, 0, NULL) : NULL;
	if (conf && json_object_get_double(conf) >= 0 && json_object_get_double(conf) <= 1)
	{
		out->has_confidence = true;
		out->confidence = json_object_get_double(conf);
	}
	json_object_put(conf);
	v = NULL;
	json_object_object_get_ex(general, "template", &v);
	if ((out->index = chosen_index(c, v, &out->why)) < 0)
		return;
	if (!out->has_confidence || out->confidence < docextract_classify_min_confidence)
	{
		out->why = out->has_confidence
			? psprintf("the model's confidence in \"%s\", %g, is below docextract.classify_min_confidence (%g)",
					   c->names[out->index], out->confidence, docextract_classify_min_confidence)
			: psprintf("the model chose \"%s\" without a confidence from 0 to 1", c->names[out->index]);
		out->index = -1;
	}
}

/* "no template fits ...: why; candidates: "a", "b"" */
char *
classify_failure_message(const ClassifyCandidates *c, const char *why)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfo(&s, "no template fits the document: %s; candidates: ", why);
	for (int i = 0; i < c->n; i++)
		appendStringInfo(&s, "%s\"%s\"", i ? ", " : "", c->names[i]);
	if (c->n == 0)
		appendStringInfoString(&s, "none");
	return s.data;
}

/* The classification column: what was offered, chosen, and how sure. */
static char *
classification_json(const ClassifyCandidates *c, const ClassifyChoice *ch, int64 in_tokens,
					int64 out_tokens)
{
	json_object *o = json_object_new_object();
	json_object *list = json_object_new_array();
	json_object *usage = json_object_new_object();
	char	   *text;

	for (int i = 0; i < c->n; i++)
	{
		json_object *e = json_object_new_object();

		json_object_object_add(e, "id", json_object_new_string(c->ids[i]));
		json_object_object_add(e, "name", json_object_new_string(c->names[i]));
		json_object_array_add(list, e);
	}
	json_object_object_add(o, "template_id",
						   ch->index >= 0 ? json_object_new_string(c->ids[ch->index]) : NULL);
	json_object_object_add(o, "template_name",
						   ch->index >= 0 ? json_object_new_string(c->names[ch->index]) : NULL);
	json_object_object_add(o, "confidence",
						   ch->has_confidence ? json_number_from_double(ch->confidence) : NULL);
	json_object_object_add(o, "chosen_by",
						   ch->index >= 0 ? json_object_new_string("model") : NULL);
	if (ch->why)
		json_object_object_add(o, "reason", json_object_new_string(ch->why));
	json_object_object_add(o, "candidates", list);
	json_object_object_add(usage, "input_tokens", json_object_new_int64(in_tokens));
	json_object_object_add(usage, "output_tokens", json_object_new_int64(out_tokens));
	json_object_object_add(o, "usage", usage);
	text = pstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return text;
}

/*
 * Record the model's choice: template_id and classification, a progress
 * event (half way), then processing (extraction.started).  The template
 * must still be active and usable by the owner.  False if the extraction
 * is no longer classifying (cancelled meanwhile): nothing to go on with.
 */
bool
classify_record_choice(pg_uuid_t *id, const ClassifyCandidates *c, const ClassifyChoice *ch,
					   int64 in_tokens, int64 out_tokens)
{
	Datum		args[3];
	bool		recorded;

	args[0] = UUIDPGetDatum(id);
	args[1] = CStringGetTextDatum(c->ids[ch->index]);
	args[2] = CStringGetTextDatum(classification_json(c, ch, in_tokens, out_tokens));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("UPDATE docextract.extractions e"
							  " SET template_id = $2::uuid, classification = $3::jsonb,"
							  "     completion_percentage = 50"
							  " WHERE e.id = $1 AND " ROW_STATUS_IS("e.status", "classifying")
							  "   AND EXISTS (SELECT 1 FROM docextract.templates t"
							  "                WHERE t.id = $2::uuid AND t.is_active"
							  "                  AND " TEMPLATE_USABLE_BY("e.owner::pg_catalog.oid") ")",
							  3, (Oid[]) {UUIDOID, TEXTOID, TEXTOID}, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the classification of extraction %s", uuid_text(args[0]));
	recorded = SPI_processed == 1;
	if (!recorded)
	{
		/* Cancelled, or the template went meanwhile: which? */
		if (SPI_execute_with_args("SELECT 1 FROM docextract.extractions WHERE id = $1 AND " ROW_STATUS_IS("status", "classifying"),
								  1, (Oid[]) {UUIDOID}, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read extraction %s", uuid_text(args[0]));
		if (SPI_processed == 1)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("template \"%s\", chosen by classification, was deactivated meanwhile",
							c->names[ch->index])));
	}
	else if (SPI_execute_with_args("UPDATE docextract.extractions SET status = 'processing'"
								   " WHERE id = $1 AND " ROW_STATUS_IS("status", "classifying"),
								   1, (Oid[]) {UUIDOID}, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not start extraction %s", uuid_text(args[0]));
	spi_finish();
	return recorded;
}

/*
 * Nothing fits and auto_approve is false: the extraction waits for a
 * reviewer's pick (nothing is charged: settle_credits keeps the
 * reservation of an extraction without a template).
 */
void
classify_await_review(pg_uuid_t *id, const ClassifyCandidates *c, const ClassifyChoice *ch,
					  int64 in_tokens, int64 out_tokens)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("UPDATE docextract.extractions"
							  " SET status = 'awaiting_approval', classification = $2::jsonb,"
							  "     error_message = $3"
							  " WHERE id = $1 AND " ROW_STATUS_IS("status", "classifying"),
							  3, (Oid[]) {UUIDOID, TEXTOID, TEXTOID},
							  (Datum[]) {UUIDPGetDatum(id),
								  CStringGetTextDatum(classification_json(c, ch, in_tokens, out_tokens)),
								  CStringGetTextDatum(classify_failure_message(c, ch->why))},
							  NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the classification of extraction %s",
			 uuid_text(UUIDPGetDatum(id)));
	spi_finish();
}

/*
 * approve() of an extraction that awaits a template (classification found
 * none): corrections (a jsonb, 0 if NULL) {"template_id": "..."} picks one of the owner's
 * candidates and puts the extraction back in the queue with it.  False if
 * the extraction has a template (a review of its data).  In approve()'s
 * SPI connection, as the extension owner, the row locked.
 */
bool
classify_pick(Datum id, Oid caller, Datum corrections)
{
	json_object *corr;
	json_object *v;
	const char *picked;

	if (SPI_execute_with_args("SELECT 1 FROM docextract.extractions"
							  " WHERE id = $1 AND template_id IS NULL AND classification IS NOT NULL",
							  1, (Oid[]) {UUIDOID}, &id, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read extraction %s", uuid_text(id));
	if (SPI_processed == 0)
		return false;
	if (corrections)
	{
		Jsonb	   *j = DatumGetJsonbP(corrections);

		corr = json_tokener_parse(JsonbToCString(NULL, &j->root, VARSIZE(j)));
	}
	else
		corr = NULL;
	picked = json_member_string(corr, "template_id");
	if (picked == NULL || json_object_object_length(corr) != 1)
	{
		json_object_put(corr);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("extraction %s awaits a template: no candidate fitted", uuid_text(id)),
				 errhint("Pick one with approve(id, '{\"template_id\": \"...\"}'): an active template of the extraction's owner or a system one.")));
	}
	v = json_object_new_string(picked);
	json_object_put(corr);
	if (SPI_execute_with_args("UPDATE docextract.extractions e"
							  " SET template_id = t.id, status = 'pending', error_message = NULL,"
							  "     completion_percentage = 0,"
							  "     classification = e.classification || jsonb_build_object("
							  "       'template_id', t.id, 'template_name', t.name,"
							  "       'chosen_by', 'reviewer', 'reviewer', $3::regrole::text)"
							  "  FROM docextract.templates t"
							  " WHERE e.id = $1 AND t.id::text = lower($2) AND t.is_active"
							  "   AND " TEMPLATE_USABLE_BY("e.owner::pg_catalog.oid"),
							  3, (Oid[]) {UUIDOID, TEXTOID, OIDOID},
							  (Datum[]) {id, CStringGetTextDatum(json_object_get_string(v)),
								  ObjectIdGetDatum(caller)},
							  NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not requeue extraction %s", uuid_text(id));
	if (SPI_processed != 1)
	{
		char	   *text = answer_excerpt(json_object_get_string(v), -1, ANSWER_QUOTE_MAX);

		json_object_put(v);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("template %s is not an active template the extraction's owner may use", text)));
	}
	json_object_put(v);
	docextract_wake_worker_at_commit();
	return true;
}

/* Is a trigger form's template argument NULL (or empty): classify? */
bool
classify_trigger_arg(const char *arg)
{
	return arg == NULL || arg[0] == '\0' || pg_strcasecmp(arg, "null") == 0;
}

/* extract_document(document, template, options) from C; template 0: classify. */
Datum
classify_or_extract(Datum document, Datum template_id, Datum options)
{
	return submit_extraction(document, template_id, DatumGetJsonbP(options));
}

/* The candidate a string names (as candidate_named()); for split.c's ranges. */
int
classify_candidate_index(const ClassifyCandidates *c, const char *s)
{
	return s ? candidate_named(c, s) : -1;
}
