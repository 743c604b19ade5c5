/*
 * webhook.c: the SQL functions that manage webhooks.
 *
 * add_webhook, set_webhook_enabled and drop_webhook, run by their owners,
 * and webhook_signature, which a receiver's tests use to check a signature.
 * The worker's deliveries are webhook_delivery.c's.
 */
#include "postgres.h"

#include "http.h"
#include "privileged.h"
#include "spi_checked.h"
#include "util.h"
#include "webhook.h"
#include "workerset.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(docextract_add_webhook);
PG_FUNCTION_INFO_V1(docextract_set_webhook_enabled);
PG_FUNCTION_INFO_V1(docextract_drop_webhook);
PG_FUNCTION_INFO_V1(docextract_webhook_signature);

/* The events a webhook may ask for (event_name() in the install script). */
static const char *const known_events[] = {
	"extraction.queued", "extraction.started", "extraction.progress",
	"extraction.retrying", "extraction.requeued", "extraction.awaiting_approval",
	"extraction.approved", "extraction.completed", "extraction.failed",
	"extraction.cancelled", "extraction.insufficient_credits", NULL
};

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
