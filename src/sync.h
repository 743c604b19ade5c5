/*
 * sync.h: extract_sync handed to a worker of its own (sync.c, sync_worker.c).
 */
#ifndef DOCEXTRACT_SYNC_H
#define DOCEXTRACT_SYNC_H

#include "postgres.h"
#include "port/atomics.h"
#include "utils/uuid.h"

/* sync.c, sync_worker.c: extract_sync handed to a worker of its own -------- */

/*
 * extract_sync's dynamic shared memory: a shm_toc holding the task, the
 * document's bytes (a bytea), the options (a jsonb) and a queue on which the
 * sync worker sends its errors and notices (as the frontend protocol does)
 * and finally SYNC_MSG_RESULT with get_result()'s text.
 */
#define SYNC_TOC_MAGIC 0x64787331
#define SYNC_KEY_TASK 1
#define SYNC_KEY_CONTENT 2
#define SYNC_KEY_OPTIONS 3
#define SYNC_KEY_QUEUE 4
#define SYNC_QUEUE_SIZE 65536
#define SYNC_MSG_RESULT 'D'

/* The caller's settings the worker takes over (all superuser-only). */
#define SYNC_NUM_SETTINGS 3
#define SYNC_SETTING_LEN 64
extern const char *const sync_setting_names[SYNC_NUM_SETTINGS];

typedef struct SyncTask
{
	Oid			dboid;
	Oid			login_role;		/* the caller's authenticated role: the worker logs in as it */
	Oid			role;			/* the caller's current user: the worker acts as it */
	int			sec_context;
	pg_uuid_t	template_id;
	char		settings[SYNC_NUM_SETTINGS][SYNC_SETTING_LEN];
	pg_atomic_uint32 caller_gone;	/* set when the caller stops waiting */
	pg_atomic_uint32 worker_pid;	/* the worker's, while it submits (then 0) */
	bool		classify;		/* template_id NULL: classify (classify.c) */
} SyncTask;

#endif							/* DOCEXTRACT_SYNC_H */
