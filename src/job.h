/*
 * job.h: one extraction's steps in the job worker (job.c, subxact.c, transient.c).
 */
#ifndef DOCEXTRACT_JOB_H
#define DOCEXTRACT_JOB_H

#include "postgres.h"
#include "http.h"
#include "utils/uuid.h"

/* job.c: one extraction from claimed row to stored result -------------------- */

typedef struct Job Job;

extern Job *job_create(pg_uuid_t *id, int attempts, int parts);
extern void job_prepare(Job *job);
extern bool job_part_done(Job *job, HttpRequest *req);
extern void job_record_progress(Job *job);
extern void job_finish(Job *job);
extern void job_release(Job *job);
extern void job_hold_slots(Job *job, const char *model, int n);
extern char *job_id_text(Job *job);
extern pg_uuid_t *job_id(Job *job);
extern bool job_will_retry(Job *job);

extern bool job_busy(Job *job);	/* job.c: its status change waits for a lock */

/* subxact.c ----------------------------------------------------------------- */

typedef void (*StepFn) (void *arg);

extern char *in_subtransaction(StepFn fn, void *arg);

/* transient.c: errors that retry a job's step rather than fail the job ----- */

extern bool error_is_transient(int sqlerrcode);
extern void step_note_error(int sqlerrcode);
extern const char *step_note_aside(void);
extern bool step_transient(void);
extern bool step_stepped_aside(void);
extern bool transient_retry(pg_uuid_t *id, const char *err);
extern void transient_requeue(pg_uuid_t *id, const char *message);

/* batch_finish.c: a batch of answered jobs stored in one transaction ----- */

/* What a job stores, as JSON texts (attributions, citations may be NULL). */
typedef struct StoredResult
{
	char	   *data;
	char	   *raw;
	char	   *usage;
	char	   *attributions;
	char	   *table_attributions;	/* per line item, when attributions are */
	char	   *citations;
	char	   *validation;
	bool		needs_review;	/* a rule failed, or auto_approve is false */
} StoredResult;

extern void job_build_result(Job *job, StoredResult *r);
extern bool job_batchable(Job *job);

typedef enum
{
	BATCH_STORED,				/* stored, or its row had gone or was no longer processing */
	BATCH_BUSY					/* a session holds its row or its owner's credits: later */
} BatchOutcome;

extern void batch_finish(Job **jobs, int n, BatchOutcome *outcome);

extern bool job_continues(Job *job);	/* a classified job sent its extraction */

#endif							/* DOCEXTRACT_JOB_H */
