/*
 * classify.h: template_id NULL, the template chosen by the model among
 * those the submitting role may use (classify_candidates.c, classify.c);
 * options.split, whose ranges name a template each (split.c, split_ranges.c).
 */
#ifndef DOCEXTRACT_CLASSIFY_H
#define DOCEXTRACT_CLASSIFY_H

#include "prelude.h"
#include "template.h"

/* classify_candidates.c: the templates a role may classify among --------- */

/* At most this many candidates are offered (own first, then system ones). */
#define CLASSIFY_MAX_CANDIDATES 50
extern char *classify_candidates(Oid role, int *n, char **prompt);

/* classify.c --------------------------------------------------------------- */

typedef struct ClassifyCandidates
{
	int			n;
	char	  **ids;			/* uuid texts */
	char	  **names;
	char	  **labels;			/* "<n>. <name>", what the model answers */
} ClassifyCandidates;

typedef struct ClassifyChoice
{
	int			index;			/* into the candidates; -1: none fits */
	bool		has_confidence;
	double		confidence;
	char	   *why;			/* why none fits */
} ClassifyChoice;

extern double docextract_classify_min_confidence;
extern void classify_define_settings(void);
extern void classify_parse_candidates(const char *json, ClassifyCandidates *c);
extern void classify_template(const ClassifyCandidates *c, const char *prompt, Template *t);
extern void classify_read_answer(json_object *answer, const ClassifyCandidates *c,
								 ClassifyChoice *out);
extern char *classify_failure_message(const ClassifyCandidates *c, const char *why);
extern bool classify_record_choice(pg_uuid_t *id, const ClassifyCandidates *c,
								   const ClassifyChoice *ch, int64 in_tokens, int64 out_tokens);
extern void classify_await_review(pg_uuid_t *id, const ClassifyCandidates *c,
								  const ClassifyChoice *ch, int64 in_tokens, int64 out_tokens);
extern bool classify_pick(Datum id, Oid caller, Datum corrections);
extern bool classify_trigger_arg(const char *arg);
extern Datum classify_or_extract(Datum document, Datum template_id, Datum options);

extern int	classify_candidate_index(const ClassifyCandidates *c, const char *s);

/* split.c, split_ranges.c: options.split, a file of several documents --- */

/* Entries of a split answer read at most; sub-documents made at most. */
#define SPLIT_MAX_ENTRIES 1000
#define SPLIT_MAX_DOCUMENTS 100

typedef struct SplitRange
{
	int			page_start;		/* 1-based, inclusive */
	int			page_end;
	char	   *template_name;	/* the model's choice, or NULL */
} SplitRange;

extern SplitRange *split_ranges_repair(json_object *answer, int page_count, int *n);
extern bool split_requested(const char *options);
extern void split_check_submit(Datum document, bool with_pages);
extern void split_request_template(Template *out, pg_uuid_t *id, const ClassifyCandidates *c,
								   Oid owner);
extern void split_store(pg_uuid_t *id, json_object *answer, const ClassifyCandidates *c);

#endif							/* DOCEXTRACT_CLASSIFY_H */
