/*
 * webhook_delivery.c: delivering the outbox (docextract.events) to webhooks.
 *
 * The announce trigger writes one delivery row per event and matching
 * webhook, in the transaction of the status change.  The worker claims due
 * deliveries, POSTs each event's JSON signed with HMAC-SHA256 through its
 * libcurl multi handle, and records the answer: a 2xx marks it delivered
 * (never sent again), anything else schedules a retry with backoff.  A
 * claimed delivery carries a lease (next_attempt_at): if the worker dies
 * mid-request, the delivery falls due again and nothing is lost.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "http.h"
#include "settings.h"
#include "spi_checked.h"
#include "webhook.h"

#include "catalog/pg_type.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include <curl/curl.h>
#include <time.h>

#define MAX_BACKOFF_MS (3600 * 1000L)

/* One delivery in flight, in its own memory context. */
typedef struct Delivery
{
	MemoryContext cxt;
	int64		id;
	int			attempts;
	HttpRequest req;
} Delivery;

/*
 * "v1=" and the hex HMAC-SHA256, keyed by the secret, of the timestamp, a
 * dot, and the body: what a receiver recomputes to trust a delivery.
 */
char *
webhook_signature(const char *secret, const char *timestamp, const char *body)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	char	   *out = palloc(3 + 2 * PG_SHA256_DIGEST_LENGTH + 1);

	if (ctx == NULL ||
		pg_hmac_init(ctx, (const uint8 *) secret, strlen(secret)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) timestamp, strlen(timestamp)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) ".", 1) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) body, strlen(body)) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
	{
		pg_hmac_free(ctx);
		elog(ERROR, "could not compute an HMAC-SHA256 signature");
	}
	pg_hmac_free(ctx);
	strcpy(out, "v1=");
	hex_encode((const char *) mac, sizeof(mac), out + 3);
	out[3 + 2 * PG_SHA256_DIGEST_LENGTH] = '\0';
	return out;
}

/* Leave a worker that died mid-request no lease to wait out. */
void
webhook_reset_leases(void)
{
	spi_connect();
	spi_execute("UPDATE docextract.webhook_deliveries SET in_flight = false,"
				" next_attempt_at = clock_timestamp() WHERE in_flight", false, 0);
	spi_finish();
}

static struct curl_slist *
delivery_headers(Delivery *d, const char *event, const char *secret, const char *body)
{
	struct curl_slist *h = NULL;
	char	   *ts = psprintf("%ld", (long) time(NULL));

	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, psprintf("X-Docextract-Event: %s", event));
	h = curl_slist_append(h, psprintf("X-Docextract-Delivery: " INT64_FORMAT, d->id));
	h = curl_slist_append(h, psprintf("X-Docextract-Timestamp: %s", ts));
	h = curl_slist_append(h, psprintf("X-Docextract-Signature: %s",
									  webhook_signature(secret, ts, body)));
	return h;
}

/* Send the claimed row i of SPI_tuptable. */
static void
start_delivery(int i)
{
	HeapTuple	tup = SPI_tuptable->vals[i];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		isnull;
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "docextract delivery",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Delivery   *d = palloc0(sizeof(Delivery));
	char	   *body = SPI_getvalue(tup, desc, 5);
	char	   *secret = SPI_getvalue(tup, desc, 4);

	d->cxt = cxt;
	d->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	d->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	d->req.purpose = HTTP_FOR_WEBHOOK;
	d->req.arg = d;
	/* Only a superuser's webhook may go where the egress policy forbids. */
	d->req.egress_checked = !DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	http_start(&d->req, SPI_getvalue(tup, desc, 3),
			   delivery_headers(d, SPI_getvalue(tup, desc, 6), secret, body),
			   strdup(body), docextract_webhook_timeout_ms);
	memset(secret, 0, strlen(secret));
	MemoryContextSwitchTo(old);
}

/*
 * Claim up to room due deliveries of enabled webhooks and send them.
 * Returns how many; *next_due_ms is when the next one falls due (-1: none).
 */
int
webhook_claim_and_start(int room, long *next_due_ms)
{
	int			n;
	bool		isnull;
	Datum		due;

	spi_connect();
	spi_execute_with_args(
		"WITH due AS ("
		"  SELECT d.id FROM docextract.webhook_deliveries d"
		"  JOIN docextract.webhooks w ON w.id = d.webhook_id"
		"  WHERE d.status = 'pending' AND d.next_attempt_at <= clock_timestamp() AND w.enabled"
		"  ORDER BY d.next_attempt_at, d.id LIMIT $1 FOR UPDATE OF d SKIP LOCKED)"
		" UPDATE docextract.webhook_deliveries d"
		"    SET attempts = d.attempts + 1, in_flight = true,"
		"        next_attempt_at = clock_timestamp() + make_interval(secs => $2)"
		"   FROM due, docextract.webhooks w, docextract.webhook_secrets s, docextract.events e"
		"  WHERE d.id = due.id AND w.id = d.webhook_id AND s.webhook_id = w.id AND e.id = d.event_id"
		" RETURNING d.id, d.attempts, w.url, s.secret, e.payload::text, e.event,"
		"   (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = w.owner)",
		2, (Oid[]) {INT4OID, FLOAT8OID},
		(Datum[]) {Int32GetDatum(room),
			Float8GetDatum(docextract_webhook_timeout_ms / 1000.0 + 60)},
		NULL, false, 0);
	n = (int) SPI_processed;
	for (int i = 0; i < n; i++)
		start_delivery(i);
	/*
	 * NULL if none waits (not greatest(0, NULL), which is 0: a worker that
	 * never sleeps).  Those due already wait for a slot: a delivery that
	 * ends makes the worker look again.
	 */
	spi_execute("SELECT ceil(1000 * extract(epoch FROM"
				"        min(d.next_attempt_at) - clock_timestamp()))::bigint"
				"  FROM docextract.webhook_deliveries d"
				"  JOIN docextract.webhooks w ON w.id = d.webhook_id"
				" WHERE d.status = 'pending' AND w.enabled"
				"   AND d.next_attempt_at > clock_timestamp()", true, 1);
	due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	*next_due_ms = isnull ? -1 : Max(0, (long) DatumGetInt64(due));
	spi_finish();
	return n;
}

/*
 * A session that drops or changes a webhook (drop_webhook cascades to its
 * deliveries) holds those rows until it ends: the worker must not wait for
 * it.  A delivery whose row is held is left to its lease; a webhook whose
 * row is held keeps its failure count this time.
 */
#define DELIVERY_UNLOCKED \
	"(SELECT x.id FROM docextract.webhook_deliveries x WHERE x.id = $1 FOR UPDATE SKIP LOCKED)"
#define WEBHOOK_UNLOCKED \
	" wl AS (SELECT h.id FROM docextract.webhooks h WHERE h.id IN (SELECT webhook_id FROM d)" \
	"        FOR NO KEY UPDATE SKIP LOCKED)"

static void
record_delivered(Delivery *d)
{
	spi_execute_with_args("WITH d AS (UPDATE docextract.webhook_deliveries"
						  "   SET status = 'delivered', in_flight = false, delivered_at = clock_timestamp(),"
						  "       response_status = $2, last_error = NULL"
						  "  WHERE id = " DELIVERY_UNLOCKED " RETURNING webhook_id),"
						  WEBHOOK_UNLOCKED
						  " UPDATE docextract.webhooks w SET consecutive_failures = 0"
						  "   FROM wl WHERE w.id = wl.id",
						  2, (Oid[]) {INT8OID, INT4OID},
						  (Datum[]) {Int64GetDatum(d->id), Int32GetDatum((int32) d->req.status)},
						  NULL, false, 0);
}

/*
 * Not delivered: try again later, or give up after webhook_max_attempts;
 * either way one more consecutive failure for the webhook, which is
 * disabled when they reach webhook_disable_after.
 */
static void
record_failed(Delivery *d, const char *error)
{
	spi_execute_with_args("WITH d AS (UPDATE docextract.webhook_deliveries"
						  "   SET in_flight = false, response_status = $2, last_error = $3,"
						  "       status = CASE WHEN attempts >= $4 THEN 'failed' ELSE 'pending' END,"
						  "       next_attempt_at = clock_timestamp() + make_interval(secs => $5)"
						  "  WHERE id = " DELIVERY_UNLOCKED " RETURNING webhook_id),"
						  WEBHOOK_UNLOCKED
						  " UPDATE docextract.webhooks w"
						  "    SET consecutive_failures = w.consecutive_failures + 1,"
						  "        enabled = w.enabled AND w.consecutive_failures + 1 < $6,"
						  "        disabled_reason = CASE WHEN w.enabled AND w.consecutive_failures + 1 >= $6"
						  "          THEN format('disabled after %s consecutive failed deliveries; the last: %s',"
						  "                      w.consecutive_failures + 1, $3)"
						  "          ELSE w.disabled_reason END"
						  "   FROM wl WHERE w.id = wl.id",
						  6, (Oid[]) {INT8OID, INT4OID, TEXTOID, INT4OID, FLOAT8OID, INT4OID},
						  (Datum[]) {Int64GetDatum(d->id), Int32GetDatum((int32) d->req.status),
							  CStringGetTextDatum(error),
							  Int32GetDatum(docextract_webhook_max_attempts),
							  Float8GetDatum(http_retry_delay_ms(&d->req, docextract_webhook_backoff_ms,
																 d->attempts, MAX_BACKOFF_MS) / 1000.0),
							  Int32GetDatum(docextract_webhook_disable_after)},
						  d->req.status ? NULL : " n    ", false, 0);
}

/* A delivery's request is done: record how it went.  In a transaction. */
void
webhook_done(HttpRequest *req)
{
	Delivery   *d = req->arg;

	spi_connect();
	if (req->curl_code == 0 && req->status >= 200 && req->status < 300)
		record_delivered(d);
	else if (req->curl_code != 0)
		record_failed(d, http_error_text(req));
	else if (http_redirect_text(req) != NULL)
		record_failed(d, http_redirect_text(req));
	else
		record_failed(d, psprintf("HTTP %ld: %s", req->status,
								  answer_excerpt(req->response.data, req->response.len, 200)));
	spi_finish();
}

void
webhook_release(HttpRequest *req)
{
	Delivery   *d = req->arg;

	http_cancel(req);
	MemoryContextDelete(d->cxt);
}
