/*
 * worker.h: the job worker's own parts: crash guard, limits, DDL, cleanup, stats.
 */
#ifndef DOCEXTRACT_WORKER_H
#define DOCEXTRACT_WORKER_H

#include "postgres.h"
#include "queue.h"

extern bool docextract_is_job_worker;	/* worker.c: this process is the job worker */

/* crashguard.c: a job that keeps stopping the worker is failed, not retried - */

extern int	docextract_max_crashes;
extern char *docextract_debug_crash_on_document;
extern void crashguard_sigterm(SIGNAL_ARGS);
extern bool crashguard_last_stop_was_crash(void);
extern void crashguard_worker_exit(void);
extern int	crashguard_requeue_orphans(bool after_crash, int *failed);
extern bool crashguard_single_mode(void);
extern int	crashguard_claim_suspect(ClaimedJob *out);
extern void crashguard_fault_point(const char *filename);

/* inflight.c: the worker's own limits: requests, descriptors, memory ------- */

extern int	docextract_max_inflight_memory;	/* kB */
extern void inflight_define_settings(void);
extern int64 inflight_memory_budget(void);
extern Size inflight_shmem_size(void);
extern void inflight_shmem_init(void);
extern void inflight_worker_exit(void);
extern int	inflight_claim_room(int jobs, int all);
extern void inflight_claimed(int requests, int room);
extern int	inflight_admit(ClaimedJob *jobs, int n, int max);
extern bool inflight_memory_freed(void);
extern int	inflight_waiting_jobs(void);

/* steplock.c: the workers step aside for DDL on the extension's tables ----- */

extern bool steplock_begin(void);
extern bool steplock_absent(void);
extern long steplock_retry_ms(void);
extern void steplock_wait(void);

/* retention.c: the worker's cleanup of old rows ------------------------------ */

extern bool retention_cleanup(void);

/* stats.c: worker_stats' counters, folded by the worker ------------------ */

extern int	stats_fold(void);
extern void stats_fold_credits_if_many(void);

#endif							/* DOCEXTRACT_WORKER_H */
