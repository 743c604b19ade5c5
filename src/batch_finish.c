/*
 * batch_finish.c: the answered jobs of one wake stored together.
 *
 * One transaction, no subtransaction: the extraction rows are locked for
 * the whole batch (SKIP LOCKED: the worker never waits for a session,
 * nowait.c; credits settle into credit_slot_deltas, which takes no lock a
 * session holds), then one statement completes every job, charges the
 * credits they reserved (one delta per slot, a ledger row each: the row
 * trigger settle_credits skips what the statement settled), stores every
 * result and adds the usage to model_stat_deltas.  Its
 * status changes fire the same triggers as one job's (events, NOTIFY,
 * credits, counters), committed with the batch.  If anything in it fails,
 * the caller stores the jobs one by one instead (worker.c), each in a
 * subtransaction, so that only the faulty job fails.
 */
#include "postgres.h"


#include "job.h"
#include "spi_checked.h"
#include "statuses.h"


#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"

/* The rows free to change now; the others are held by a session. */
static const char *lock_rows_sql =
"SELECT x.id, x.owner::pg_catalog.oid FROM docextract.extractions x"
" WHERE x.id = ANY ($1) FOR UPDATE SKIP LOCKED";
static const char *rows_exist_sql =
"SELECT x.id FROM docextract.extractions x WHERE x.id = ANY ($1)";
/*
 * Every job of the batch at once: those still processing complete (or
 * await review), their results are stored and their usage counted (per
 * model and owner: the fold sums them anyway).  The UPDATE returns what
 * the two INSERTs need, its input's columns included, so that nothing joins
 * a CTE to another: a kept plan estimates a CTE at a row or so, and a
 * nested loop over two would compare every pair of the batch.  The status
 * test is ROW_STATUS_IS's: a plain one made the kept plan start from
 * extractions_in_flight after an ANALYZE of a long history and look up
 * every job in flight for each batch (244 lookups for 32 jobs at 1M
 * extractions stored, bench/history.sh).
 */
static const char *store_sql =
"WITH u AS ("
"  UPDATE docextract.extractions e"
"     SET status = CASE WHEN i.review THEN 'awaiting_approval' ELSE 'completed' END,"
"         completed_at = CASE WHEN i.review THEN NULL ELSE clock_timestamp() END,"
"         completion_percentage = 100, error_message = NULL,"
"         credits_used = CASE WHEN o.settles THEN o.credits_reserved ELSE e.credits_used END,"
"         credits_reserved = CASE WHEN o.settles THEN 0 ELSE e.credits_reserved END"
"    FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::text[], $5::text[],"
"                $6::text[], $7::text[], $8::text[], $9::text[])"
"      AS i(id, review, data, raw, usage, attributions, validation, table_attributions, citations),"
"         LATERAL (SELECT x.credits_reserved, x.credit_slot,"
"                         x.credits_reserved <> 0 AND x.split_count IS NULL"
"                         AND NOT (i.review AND x.template_id IS NULL) AS settles"
"                    FROM docextract.extractions x WHERE x.id = i.id) o"
"   WHERE e.id = i.id AND " ROW_STATUS_IS("e.status", "processing")
"  RETURNING e.id, e.document_id, e.template_id, e.owner, e.model_name, i.data::jsonb AS data,"
"            i.raw::jsonb AS raw, i.usage::jsonb AS usage, i.attributions::jsonb AS attributions,"
"            i.validation::jsonb AS validation, i.table_attributions::jsonb AS table_attributions,"
"            i.citations::jsonb AS citations, e.status,"
"            CASE WHEN o.settles THEN o.credits_reserved ELSE 0 END AS settled,"
"            coalesce(o.credit_slot, 0) AS slot),"
/* The batch's charges, as settle_credits makes one's: a delta per slot. */
" d AS ("
"  INSERT INTO docextract.credit_slot_deltas (role, slot, balance_delta, reserved_delta)"
"  SELECT u.owner, u.slot, -sum(u.settled), -sum(u.settled) FROM u WHERE u.settled > 0"
"   GROUP BY u.owner, u.slot),"
" l AS ("
"  INSERT INTO docextract.credit_ledger (role, kind, credits, available_after, extraction_id,"
"                                        reason, created_by)"
"  SELECT u.owner, 'charge', u.settled, a.after, u.id, u.status, u.owner"
"    FROM u JOIN (SELECT k.owner, docextract.credit_available_after(k.owner, 0) AS after"
"                   FROM (SELECT DISTINCT u.owner FROM u WHERE u.settled > 0) k) a"
"      ON a.owner = u.owner"
"   WHERE u.settled > 0),"
" r AS ("
"  INSERT INTO docextract.results (extraction_id, document_id, template_id, owner, data,"
"                                  raw_output, usage, attributions, validation,"
"                                  table_attributions, citations)"
"  SELECT u.id, u.document_id, u.template_id, u.owner, u.data, u.raw, u.usage,"
"         u.attributions, u.validation, u.table_attributions, u.citations FROM u)"
" INSERT INTO docextract.model_stat_deltas (model_name, owner, latency_ms_sum, latency_n,"
"                                           input_tokens, output_tokens, cost)"
" SELECT u.model_name, u.owner, sum(coalesce((u.usage->>'latency_ms')::numeric, 0)),"
"        sum((u.usage ? 'latency_ms')::integer),"
"        sum(coalesce((u.usage->>'input_tokens')::numeric, 0)),"
"        sum(coalesce((u.usage->>'output_tokens')::numeric, 0)), sum((u.usage->>'cost')::numeric)"
"   FROM u GROUP BY u.model_name, u.owner";

#define STORE_NARGS 9

static Datum
array_of(Datum *values, bool *nulls, int n, Oid type, int len, bool byval, char align)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, type, len, byval, align));
}

static Datum
uuid_array(Datum *ids, int n)
{
	return array_of(ids, NULL, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR);
}

/* Run a kept one-array-argument statement; the tuples are in SPI_tuptable. */
static void
run_with_array(SPIPlanPtr plan, Datum array, int expected)
{
	if (SPI_execute_plan(plan, &array, NULL, false, 0) != expected)
		elog(ERROR, "could not lock or read docextract rows of a batch");
}

/* Index of id in ids[n], or -1. */
static int
find_id(Datum *ids, int n, pg_uuid_t *id)
{
	for (int i = 0; i < n; i++)
		if (memcmp(DatumGetUUIDP(ids[i]), id, UUID_LEN) == 0)
			return i;
	return -1;
}

/*
 * Lock the jobs' rows: outcome BUSY for a row a session holds; owner[i]
 * set for each locked row (InvalidOid: its row is gone, nothing to store).
 */
static void
lock_rows(Datum *ids, int n, Oid *owner, BatchOutcome *outcome)
{
	static SPIPlanPtr lock_plan = NULL;
	static SPIPlanPtr exist_plan = NULL;
	Oid			types[1] = {UUIDARRAYOID};
	bool		isnull;
	int			locked = 0;

	run_with_array(spi_kept_plan(&lock_plan, lock_rows_sql, 1, types), uuid_array(ids, n), SPI_OK_SELECT);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		int			i = find_id(ids, n, DatumGetUUIDP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)));

		owner[i] = DatumGetObjectId(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		locked++;
	}
	if (locked == n)
		return;
	/* Rows not locked: held by a session if they still exist. */
	run_with_array(spi_kept_plan(&exist_plan, rows_exist_sql, 1, types), uuid_array(ids, n), SPI_OK_SELECT);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		int			i = find_id(ids, n, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[r],
																	 SPI_tuptable->tupdesc, 1, &isnull)));

		if (owner[i] == InvalidOid)
			outcome[i] = BATCH_BUSY;
	}
}

static void
put_text(Datum *values, bool *nulls, int k, const char *text)
{
	nulls[k] = text == NULL;
	values[k] = text ? CStringGetTextDatum(text) : (Datum) 0;
}

/* Store the results of jobs[i] whose outcome is STORED and whose row is locked. */
static void
store_results(Job **jobs, int n, Oid *owner, BatchOutcome *outcome)
{
	static SPIPlanPtr store_plan = NULL;
	Oid			types[STORE_NARGS] = {UUIDARRAYOID, BOOLARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *review = palloc(sizeof(Datum) * n);
	Datum	   *texts[7];
	bool	   *nulls[7];
	Datum		args[STORE_NARGS];
	int			k = 0;

	for (int c = 0; c < 7; c++)
	{
		texts[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc(sizeof(bool) * n);
	}

	for (int i = 0; i < n; i++)
	{
		StoredResult r;

		if (outcome[i] != BATCH_STORED || owner[i] == InvalidOid)
			continue;
		job_build_result(jobs[i], &r);
		ids[k] = UUIDPGetDatum(job_id(jobs[i]));
		review[k] = BoolGetDatum(r.needs_review);
		put_text(texts[0], nulls[0], k, r.data);
		put_text(texts[1], nulls[1], k, r.raw);
		put_text(texts[2], nulls[2], k, r.usage);
		put_text(texts[3], nulls[3], k, r.attributions);
		put_text(texts[4], nulls[4], k, r.validation);
		put_text(texts[5], nulls[5], k, r.table_attributions);
		put_text(texts[6], nulls[6], k, r.citations);
		k++;
	}
	if (k == 0)
		return;
	args[0] = uuid_array(ids, k);
	args[1] = array_of(review, NULL, k, BOOLOID, 1, true, TYPALIGN_CHAR);
	for (int c = 0; c < 7; c++)
		args[2 + c] = array_of(texts[c], nulls[c], k, TEXTOID, -1, false, TYPALIGN_INT);
	if (spi_execute_plan(spi_kept_plan(&store_plan, store_sql, STORE_NARGS, types), args, NULL, false, 0)
		!= SPI_OK_INSERT)
		elog(ERROR, "could not store a batch of results");
}

/*
 * Store the n answered jobs (each job_batchable), inside the caller's
 * transaction; outcome[i] says which were left for later.  Any error is
 * the batch's: the caller rolls back and stores them one by one.
 */
void
batch_finish(Job **jobs, int n, BatchOutcome *outcome)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Oid		   *owner = palloc0(sizeof(Oid) * n);

	for (int i = 0; i < n; i++)
	{
		ids[i] = UUIDPGetDatum(job_id(jobs[i]));
		outcome[i] = BATCH_STORED;
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	lock_rows(ids, n, owner, outcome);
	store_results(jobs, n, owner, outcome);
	spi_finish();
}
