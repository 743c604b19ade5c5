/*
 * stats.c: worker_stats' counters.  Every ended extraction and stored
 * result adds a row to model_stat_deltas (insert-only: no status change
 * waits on another's row lock); the worker folds them into model_stats on
 * its polls, so that both stay small whatever the history.  Settled
 * credits are folded the same way (credit_slot_deltas into credit_slots).
 */
#include "postgres.h"

#include "spi_checked.h"
#include "worker.h"

#include "executor/spi.h"

/*
 * One folder at a time (the advisory lock, not waited for); the rows a
 * concurrent transaction adds meanwhile are left for the next fold.
 */
static const char *fold_sql =
"WITH go AS (SELECT pg_catalog.pg_try_advisory_xact_lock("
"              'docextract.model_stat_deltas'::pg_catalog.regclass::pg_catalog.oid::bigint) AS ok),"
" d AS (DELETE FROM docextract.model_stat_deltas WHERE (SELECT ok FROM go) RETURNING *)"
" INSERT INTO docextract.model_stats AS s"
" SELECT model_name, owner, sum(completed), sum(failed), sum(cancelled), sum(retries),"
"        sum(latency_ms_sum), sum(latency_n), sum(input_tokens), sum(output_tokens), sum(cost)"
"   FROM d GROUP BY model_name, owner"
" ON CONFLICT (model_name, owner) DO UPDATE SET"
"   completed = s.completed + EXCLUDED.completed, failed = s.failed + EXCLUDED.failed,"
"   cancelled = s.cancelled + EXCLUDED.cancelled, retries = s.retries + EXCLUDED.retries,"
"   latency_ms_sum = s.latency_ms_sum + EXCLUDED.latency_ms_sum,"
"   latency_n = s.latency_n + EXCLUDED.latency_n,"
"   input_tokens = s.input_tokens + EXCLUDED.input_tokens,"
"   output_tokens = s.output_tokens + EXCLUDED.output_tokens,"
"   cost = CASE WHEN s.cost IS NULL AND EXCLUDED.cost IS NULL THEN NULL"
"               ELSE coalesce(s.cost, 0) + coalesce(EXCLUDED.cost, 0) END";

/*
 * Credits reserved or released but not folded yet are summed by every
 * look at a role's available credits (credit_available): once there are
 * many, the slots no submit holds get them now rather than at the next poll.
 */
static const char *fold_credits_sql =
"SELECT docextract.fold_credit_deltas()"
" WHERE (SELECT count(*) FROM (SELECT FROM docextract.credit_slot_deltas d"
"                              WHERE d.balance_delta <> d.reserved_delta LIMIT 256) x) = 256";

/* Fold settled credits if many wait; in a transaction. */
void
stats_fold_credits_if_many(void)
{
	static SPIPlanPtr plan = NULL;

	spi_connect();
	spi_execute_kept(&plan, fold_credits_sql, 0, NULL, NULL, NULL, false, 1);
	spi_finish();
}

/* Fold the counters' deltas; in a transaction.  Returns the rows folded into. */
int
stats_fold(void)
{
	int			n;

	spi_connect();
	if (spi_execute(fold_sql, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not fold docextract's statistics");
	n = (int) SPI_processed;
	/* Settled credits into their slots (those no submit holds now). */
	if (spi_execute("SELECT docextract.fold_credit_deltas()", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not fold docextract's credit deltas");
	spi_finish();
	return n;
}
