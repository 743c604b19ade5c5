/*
 * settings.h: docextract.c's settings and shared memory.
 */
#ifndef DOCEXTRACT_SETTINGS_H
#define DOCEXTRACT_SETTINGS_H

#include "postgres.h"
#include "storage/spin.h"

/* docextract.c: settings, shared memory, waking the worker ----------------- */

extern int	docextract_max_document_size;	/* kB */
extern int	docextract_max_inflight;
extern int	docextract_poll_interval_ms;
extern int	docextract_default_timeout_ms;

typedef enum CreditsMode
{
	CREDITS_ENFORCE,
	CREDITS_TRACK
} CreditsMode;

extern int	docextract_credits_mode;
extern int	docextract_max_active_per_role;
extern int	docextract_webhook_timeout_ms;
extern int	docextract_webhook_max_attempts;
extern int	docextract_webhook_disable_after;
extern int	docextract_webhook_backoff_ms;
extern int	docextract_retention_s;
extern bool docextract_submitting;

typedef struct DocextractShared
{
	slock_t		mutex;
} DocextractShared;

extern DocextractShared *docextract_shared;

extern void register_static_worker(const char *function, const char *name);

extern int	docextract_max_webhook_inflight;	/* docextract.c */
extern double docextract_notify_queue_limit;	/* docextract.c */

#endif							/* DOCEXTRACT_SETTINGS_H */
