/*
 * ids.c: new documents and extractions get ids that ascend with time
 * (the layout of RFC 9562's version 7: 48 bits of Unix milliseconds, then
 * 74 random bits).
 *
 * Why: every extraction inserts its id into extractions_pkey, results_pkey
 * and credit_ledger_once, and its document's id into extractions_document.
 * With random (version 4) ids each insert lands on a random leaf page of
 * indexes that grow with the stored history: once they outgrow shared
 * buffers every insert reads a page, and the first change of each page after
 * a checkpoint writes it whole to the WAL (8 kB).  Ids that ascend insert at
 * the right edge, into pages already in memory and already logged, so that
 * cost stays the same whatever the history.  Still unguessable (74 random
 * bits from pg_strong_random); they show when the row was made, as its
 * created_at already does to whoever may see it.
 */
#include "postgres.h"

#include "util.h"

#include "fmgr.h"
#include "port/pg_bswap.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(docextract_time_ordered_uuid);

Datum
docextract_time_ordered_uuid(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(new_time_ordered_uuid());
}

/* A new id, as docextract.time_ordered_uuid() gives (a uuid Datum). */
Datum
new_time_ordered_uuid(void)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	TimestampTz now = GetCurrentTimestamp();
	uint64		ms;

	if (!pg_strong_random(id->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	/* Milliseconds since the Unix epoch, big-endian, in the first 6 bytes. */
	ms = (uint64) (now / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);
	ms = pg_hton64(ms << 16);
	memcpy(id->data, &ms, 6);
	id->data[6] = (id->data[6] & 0x0f) | 0x70;	/* version 7 */
	id->data[8] = (id->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
	return UUIDPGetDatum(id);
}
