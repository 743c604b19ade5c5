/*
 * webhook.h: the outbox's webhook deliveries, sent from the worker.
 */
#ifndef DOCEXTRACT_WEBHOOK_H
#define DOCEXTRACT_WEBHOOK_H

#include "postgres.h"
#include "http.h"

/* webhook_delivery.c: the outbox's deliveries, sent from the worker ---------- */

extern int	webhook_claim_and_start(int room, long *next_due_ms);
extern void webhook_done(HttpRequest *req);
extern void webhook_release(HttpRequest *req);
extern void webhook_reset_leases(void);
extern char *webhook_signature(const char *secret, const char *timestamp, const char *body);

#endif							/* DOCEXTRACT_WEBHOOK_H */
