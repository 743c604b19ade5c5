/*
 * docextract.h: every subsystem header at once.
 *
 * Kept only for code not yet moved to the subsystem headers: a file includes
 * the headers of what it uses (src/prelude.h first if it uses json-c), and
 * this umbrella goes once nothing includes it.  doc/layout.md lists which
 * header declares what.
 */
#ifndef DOCEXTRACT_H
#define DOCEXTRACT_H

#include "prelude.h"

#include "answer.h"
#include "classify.h"
#include "document.h"
#include "options.h"
#include "http.h"
#include "job.h"
#include "parser.h"
#include "privileged.h"
#include "provider.h"
#include "queue.h"
#include "ratelimit.h"
#include "settings.h"
#include "spi_checked.h"
#include "statuses.h"
#include "sync.h"
#include "template.h"
#include "util.h"
#include "webhook.h"
#include "worker.h"
#include "workerset.h"
#include "writeback.h"

/*
 * stats.c (declared in worker.h): repeated here so that declarations
 * appended below, on branches made before the split, merge cleanly.
 */
/* stats.c: worker_stats' counters, folded by the worker ------------------ */

extern int	stats_fold(void);

#endif							/* DOCEXTRACT_H */
