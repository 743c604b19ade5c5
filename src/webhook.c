/*
 * webhook.c: delivering the outbox (docextract.events) to webhooks.
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

#include "docextract.h"	/* first: see the note on json_object */

#include "catalog/pg_type.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include <curl/curl.h>
#include <time.h>

PG_FUNCTION_INFO_V1(docextract_add_webhook);
PG_FUNCTION_INFO_V1(docextract_set_webhook_enabled);
PG_FUNCTION_INFO_V1(docextract_drop_webhook);
PG_FUNCTION_INFO_V1(docextract_webhook_signature);

#define MAX_BACKOFF_MS (3600 * 1000L)

/* The events a webhook may ask for (event_name() in the install script). */
static const char *const known_events[] = {
	"extraction.queued", "extraction.started", "extraction.progress",
	"extraction.retrying", "extraction.requeued", "extraction.awaiting_approval",
	"extraction.approved", "extraction.completed", "extraction.failed",
	"extraction.cancelled", "extraction.insufficient_credits", NULL
};

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

Datum
docextract_webhook_signature(PG_FUNCTION_ARGS)
{
	char	   *ts = psprintf(INT64_FORMAT, PG_GETARG_INT64(1));

	PG_RETURN_TEXT_P(cstring_to_text(webhook_signature(text_to_cstring(PG_GETARG_TEXT_PP(0)),
													   ts, text_to_cstring(PG_GETARG_TEXT_PP(2)))));
}

/* -- SQL: add, enable, drop ------------------------------------------------ */

static void
check_events(ArrayType *events)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	deconstruct_array(events, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errhidestmt(true),
				 errmsg("events must name at least one event, or be NULL for every event")));
	for (int i = 0; i < n; i++)
	{
		char	   *name = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
		bool		known = false;

		for (int k = 0; name && known_events[k]; k++)
			known = known || strcmp(name, known_events[k]) == 0;
		if (!known)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errhidestmt(true),
					 errmsg("events[%d]: \"%s\" is not a docextract event", i + 1,
							name ? name : "NULL"),
					 errhint("Events are extraction.queued, .started, .progress, .retrying, .requeued, .awaiting_approval, .approved, .completed, .failed, .cancelled and .insufficient_credits.")));
	}
}

Datum
docextract_add_webhook(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	char	   *url = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *secret = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	Datum		events = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	const char *host = url ? after_prefix(url, "http://") : NULL;
	Privileged	priv;
	Datum		id;
	bool		isnull;

	if (url && host == NULL)
		host = after_prefix(url, "https://");
	if (host == NULL || host[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errhidestmt(true),
				 errmsg("webhook url must be an http:// or https:// URL, got \"%s\"",
						url ? url : "NULL")));
	if (secret == NULL || strlen(secret) < 16)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errhidestmt(true),
				 errmsg("webhook secret must be at least 16 characters"),
				 errhint("For example: SELECT encode(gen_random_bytes(32), 'hex') with pgcrypto, or md5(random()::text) twice.")));
	if (!PG_ARGISNULL(2))
		check_events(PG_GETARG_ARRAYTYPE_P(2));
	egress_check_url(url, superuser());	/* an IP address: refused now */

	spi_connect();
	privileged_begin(&priv);
	spi_execute_with_args("INSERT INTO docextract.webhooks (url, events, owner)"
						  " VALUES ($1, $2, $3::regrole) RETURNING id",
						  3, (Oid[]) {TEXTOID, TEXTARRAYOID, OIDOID},
						  (Datum[]) {CStringGetTextDatum(url), events, ObjectIdGetDatum(caller)},
						  PG_ARGISNULL(2) ? " n " : "   ", false, 1);
	id = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull),
						   false, UUID_LEN);
	spi_execute_with_args("INSERT INTO docextract.webhook_secrets (webhook_id, secret) VALUES ($1, $2)",
						  2, (Oid[]) {UUIDOID, TEXTOID},
						  (Datum[]) {id, CStringGetTextDatum(secret)}, NULL, false, 0);
	privileged_end(&priv);
	spi_finish();
	PG_RETURN_DATUM(id);
}

/* Run sql ($1 the webhook id, $2 a boolean) on a webhook the caller owns. */
static void
change_webhook(Datum id, const char *sql, bool flag)
{
	Oid			caller = GetUserId();
	Privileged	priv;

	spi_connect();
	privileged_begin(&priv);
	check_visible("webhook", "SELECT owner::oid FROM docextract.webhooks WHERE id = $1",
				  id, caller, false);
	spi_execute_with_args(sql, 2, (Oid[]) {UUIDOID, BOOLOID},
						  (Datum[]) {id, BoolGetDatum(flag)}, NULL, false, 0);
	privileged_end(&priv);
	spi_finish();
	docextract_signal_at_commit(SIGNAL_DELIVERIES);	/* enabled again: its pending ones */
}

/* Enabling again also forgets the failures that disabled it. */
Datum
docextract_set_webhook_enabled(PG_FUNCTION_ARGS)
{
	change_webhook(PG_GETARG_DATUM(0),
				   "UPDATE docextract.webhooks SET enabled = $2,"
				   " consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures END,"
				   " disabled_reason = CASE WHEN $2 THEN NULL ELSE 'disabled by its owner' END"
				   " WHERE id = $1", PG_GETARG_BOOL(1));
	PG_RETURN_BOOL(PG_GETARG_BOOL(1));
}

Datum
docextract_drop_webhook(PG_FUNCTION_ARGS)
{
	change_webhook(PG_GETARG_DATUM(0), "DELETE FROM docextract.webhooks WHERE id = $1 AND $2", true);
	PG_RETURN_BOOL(true);
}

/* -- the worker ------------------------------------------------------------ */

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
