/*
 * ratelimit.h: per-model limits shared by every process.
 */
#ifndef DOCEXTRACT_RATELIMIT_H
#define DOCEXTRACT_RATELIMIT_H

#include "postgres.h"
#include "utils/timestamp.h"

/* ratelimit.c: per-model limits shared by every process, in shared memory - */

#define MODEL_NAME_LEN (NAMEDATALEN * 2)	/* as ClaimedJob.model */

extern Size ratelimit_shmem_size(void);
extern void ratelimit_shmem_request(void);
extern void ratelimit_shmem_startup(void);
extern int	ratelimit_reserve(const char *model, int max_concurrency, int rpm, int want,
							  int min, bool force);
extern void ratelimit_release(const char *model, int n, bool sent);
extern TimestampTz ratelimit_next_free(TimestampTz now);
extern int	ratelimit_in_flight(const char *model);

#endif							/* DOCEXTRACT_RATELIMIT_H */
