/*
 * statuses.h: the sets of extraction statuses the C code's SQL tests, one
 * definition each, as SQL lists ready for "status IN " ... .  The install
 * script keeps its own (docextract.extractions' CHECK constraint is the
 * whole set).
 */
#ifndef STATUSES_H
#define STATUSES_H

/* Queued or running: they count against docextract.max_active_per_role. */
#define STATUS_LIST_ACTIVE "'pending','classifying','processing','retrying'"
/* Not ended yet: cancel_extraction (and deleting a document) ends them. */
#define STATUS_LIST_CANCELLABLE STATUS_LIST_ACTIVE ",'awaiting_approval'"
/* An earlier extraction of these makes a new submit return it (no duplicate). */
#define STATUS_LIST_ACTIVE_OR_DONE STATUS_LIST_CANCELLABLE ",'completed'"
/* Ended for good: retention may delete them. */
#define STATUS_LIST_FINAL "'completed','failed','cancelled','insufficient_credits'"

#define STATUSES_ACTIVE "(" STATUS_LIST_ACTIVE ")"
#define STATUSES_CANCELLABLE "(" STATUS_LIST_CANCELLABLE ")"
#define STATUSES_ACTIVE_OR_DONE "(" STATUS_LIST_ACTIVE_OR_DONE ")"
#define STATUSES_FINAL "(" STATUS_LIST_FINAL ")"

/* A worker has the extraction in hand: classifying (classify.c) or processing. */
#define IN_HAND_STATUSES "('classifying', 'processing')"
/*
 * The same set as a test of the column status: an OR of equalities, which
 * the planner answers with a bitmap OR of the partial indexes
 * extractions_classifying and extractions_in_flight (an IN list matches
 * neither, and would read every row).
 */
#define IN_HAND_STATUS_TEST "(status = 'classifying' OR status = 'processing')"

#endif							/* STATUSES_H */
