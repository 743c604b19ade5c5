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

/*
 * A test of the status of a row found by its id (id = $1), or of the rows
 * of one parent (an event's deliveries).  Written as status = 'processing',
 * it matches the predicate of that status's partial index
 * (extractions_in_flight, _classifying, _retry_due, _ended;
 * extractions_queue for 'retrying'; webhook_deliveries_due), which the
 * planner takes instead of the primary key when the last ANALYZE saw no
 * row in that status (estimated at a row: usual with a long history), and
 * then reads every job in flight, or the whole backlog, for one row.
 * Compared with an InitPlan's value, which the planner does not know, the
 * test matches no index predicate; an UPDATE (or FOR UPDATE) still tests
 * it on the row's latest version (a concurrent cancel).
 */
#define ROW_STATUS_IS(column, status) column " = (SELECT '" status "'::text)"

#endif							/* STATUSES_H */
