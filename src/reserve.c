/*
 * reserve.c: a submit's credit reservation, when it can be quick.
 *
 * A transaction's first submit, with no quota of active extractions to
 * check, reserves here, before its INSERT, in two statements and no trigger
 * call (the trigger's call and its PL/pgSQL were a sixth of a submit's
 * reservation).  The first locks a slot of the owner's with the pages free
 * that no other transaction holds, without waiting; the second, in a new
 * snapshot under that lock, folds the slot's settled deltas in, reserves
 * the pages in the row version the fold writes anyway and writes the
 * ledger row, whose available credits are read in that statement's
 * snapshot (those before it, less the pages).  The row is then inserted
 * holding its reservation, which the trigger reserve_credits leaves alone
 * (WHEN credits_reserved = 0).  Every other submit is inserted holding
 * nothing, and the trigger reserves for it (sql: credit_slot_for, which
 * also gathers credits spread over several slots).
 */
#include "postgres.h"

#include "credits.h"
#include "settings.h"
#include "spi_checked.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/guc.h"

/* $1 owner, $2 pages, $3 not enforced. */
static const char *const lock_slot_sql =
"SELECT s.slot FROM docextract.credit_slots s"
" WHERE s.role = $1::regrole AND ($3 OR s.balance - s.reserved >= $2)"
" ORDER BY (s.slot + pg_catalog.pg_backend_pid()) % 8 LIMIT 1"
"   FOR UPDATE SKIP LOCKED";

/* $1 owner, $2 slot, $3 pages, $4 not enforced, $5 the extraction's id. */
static const char *const fold_and_reserve_sql =
"WITH d AS (DELETE FROM docextract.credit_slot_deltas x WHERE x.role = $1::regrole AND x.slot = $2"
"           RETURNING x.balance_delta, x.reserved_delta),"
" t AS (SELECT coalesce(sum(d.balance_delta), 0) AS b, coalesce(sum(d.reserved_delta), 0) AS rd,"
"              count(*) AS n FROM d),"
" f AS (SELECT (s.balance + t.b - s.reserved - t.rd)::bigint AS free,"
"              ($4 OR s.balance + t.b - s.reserved - t.rd >= $3) AS taken,"
"              (SELECT coalesce(sum(a.balance - a.reserved), 0)::bigint"
"                 FROM docextract.credit_slots a WHERE a.role = $1::regrole)"
"              + (SELECT coalesce(sum(e.balance_delta - e.reserved_delta), 0)::bigint"
"                   FROM docextract.credit_slot_deltas e"
"                  WHERE e.role = $1::regrole AND e.balance_delta <> e.reserved_delta) - $3 AS after"
"         FROM docextract.credit_slots s, t WHERE s.role = $1::regrole AND s.slot = $2),"
" u AS (UPDATE docextract.credit_slots s"
"          SET balance = s.balance + t.b,"
"              reserved = s.reserved + t.rd + CASE WHEN f.taken THEN $3 ELSE 0 END,"
"              updated_at = now()"
"         FROM t, f WHERE s.role = $1::regrole AND s.slot = $2 AND (t.n > 0 OR f.taken)),"
" l AS (INSERT INTO docextract.credit_ledger (role, kind, credits, available_after,"
"                                             extraction_id, reason, created_by)"
"       SELECT $1::regrole, 'reserve', $3, f.after, $5, 'submitted', $1::regrole FROM f WHERE f.taken)"
" SELECT f.taken, f.free, f.after FROM f";

/* The slot locked with pages free, or -1: none (without waiting). */
static int16
lock_slot(Oid owner, int32 pages, bool enforce)
{
	static SPIPlanPtr plan = NULL;
	bool		isnull;

	spi_execute_kept(&plan, lock_slot_sql, 3, (Oid[]) {OIDOID, INT4OID, BOOLOID},
					 (Datum[]) {ObjectIdGetDatum(owner), Int32GetDatum(pages), BoolGetDatum(!enforce)},
					 NULL, false, 1);
	if (SPI_processed == 0)
		return -1;
	return DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Reserve pages for extraction id of owner, if this can be done here:
 * returns the slot they are held in, or -1 (the trigger reserves, or
 * refuses; also for no pages or an unknown count: a row holding 0 credits
 * goes through the trigger, which must not reserve for it a second time).
 * Plain index scans, as credit_available(): a bitmap scan would read
 * folded deltas' dead entries again on every submit until the table's
 * vacuum.
 */
int16
reserve_at_submit(Oid owner, int32 pages, Datum id)
{
	static SPIPlanPtr plan = NULL;
	bool		enforce = docextract_credits_mode == CREDITS_ENFORCE;
	int			nestlevel;
	int16		slot;
	bool		isnull;
	HeapTuple	row;
	int64		slot_free;
	int64		role_free;

	if (pages <= 0 || docextract_max_active_per_role > 0 || credit_slot_cached())
		return -1;
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	slot = lock_slot(owner, pages, enforce);
	if (slot >= 0)
		spi_execute_kept(&plan, fold_and_reserve_sql, 5,
						 (Oid[]) {OIDOID, INT2OID, INT4OID, BOOLOID, UUIDOID},
						 (Datum[]) {ObjectIdGetDatum(owner), Int16GetDatum(slot), Int32GetDatum(pages),
							 BoolGetDatum(!enforce), id}, NULL, false, 0);
	AtEOXact_GUC(true, nestlevel);
	if (slot < 0 || SPI_processed != 1)	/* (the locked slot is always there) */
		return -1;
	row = SPI_tuptable->vals[0];
	if (!DatumGetBool(SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &isnull)))
	{
		credit_slot_remember_state(NULL);	/* held, folded, too few free */
		return -1;
	}
	slot_free = DatumGetInt64(SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &isnull));
	role_free = DatumGetInt64(SPI_getbinval(row, SPI_tuptable->tupdesc, 3, &isnull));
	credit_slot_remember_state(psprintf("%u,%d," INT64_FORMAT "," INT64_FORMAT ",f,i",
										owner, slot, slot_free - pages, role_free));
	return slot;
}
