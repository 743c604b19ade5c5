/*
 * queue.h: an extraction's status transitions (queue.c, nowait.c).
 */
#ifndef DOCEXTRACT_QUEUE_H
#define DOCEXTRACT_QUEUE_H

#include "statuses.h"

#include "postgres.h"
#include "fmgr.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/* queue.c: status transitions shared by the SQL functions and the worker ------ */

typedef struct ClaimedJob
{
	pg_uuid_t	id;
	int			attempts;
	int			parts;			/* requests it sends at once */
	char		model[NAMEDATALEN * 2];
} ClaimedJob;

extern int	queue_claim(ClaimedJob *out, int max, long *next_due_ms);
extern const char *const queue_claim_sql;
/*
 * Rows a previous worker left processing, less those a live job worker of
 * this database (a sibling) or an extract_sync call's own worker is running
 * (they outlive a restart of one worker).  A split parent waiting for its
 * sub-documents (split_count set) is held by no worker: not an orphan.
 */
#define ORPHANED_PROCESSING \
	IN_HAND_STATUS_TEST " AND split_count IS NULL AND (worker_pid IS NULL OR worker_pid NOT IN" \
	" (SELECT a.pid FROM pg_catalog.pg_stat_activity a" \
	"   WHERE a.backend_type IN ('docextract sync worker', 'docextract worker')" \
	"     AND a.datname = pg_catalog.current_database()" \
	"     AND a.pid <> pg_catalog.pg_backend_pid()))"

extern int	queue_requeue_orphans(void);
extern void queue_fail(pg_uuid_t *id, const char *message);
extern void queue_retry(pg_uuid_t *id, const char *message, long delay_ms);
extern void queue_progress(pg_uuid_t *id, int percentage);
extern void queue_find_ended(pg_uuid_t **ids, int n, bool *ended);
extern void queue_requeue_uncommitted(pg_uuid_t *ids, int n, const char *error);


/* nowait.c: the job worker never waits on a session's lock ---------------- */

extern bool docextract_never_wait;
extern bool queue_lock_nowait(pg_uuid_t *id);

/* submit.c: enqueue (template_id 0: classify; options NULL: none). */
extern Datum submit_extraction(Datum document, Datum template_id, Jsonb *options);

#endif							/* DOCEXTRACT_QUEUE_H */
