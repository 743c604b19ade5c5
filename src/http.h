/*
 * http.h: the worker's HTTP requests (http.c) and where they may connect (egress.c).
 */
#ifndef DOCEXTRACT_HTTP_H
#define DOCEXTRACT_HTTP_H

#include "postgres.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "utils/timestamp.h"

struct curl_slist;

/* http.c: one libcurl multi handle, driven from a latch loop ----------------- */

typedef enum HttpPurpose
{
	HTTP_FOR_JOB = 0,			/* arg is a Job */
	HTTP_FOR_WEBHOOK			/* arg is a webhook Delivery */
} HttpPurpose;

typedef struct HttpRequest
{
	HttpPurpose purpose;
	void	   *easy;			/* CURL * */
	struct curl_slist *headers;
	char	   *body;			/* malloc'd request body */
	StringInfoData response;	/* in the request's memory context */
	long		status;			/* HTTP status, 0 if none */
	int			curl_code;		/* CURLcode */
	char		errbuf[256];
	double		elapsed_ms;
	long		retry_after_s;	/* Retry-After header, 0 if none */
	void	   *arg;			/* the caller's */
	bool		done;
	bool		egress_checked; /* connect only where egress.c allows */
	char		egress_refused[48]; /* an address it refused, if any */
	bool		too_large;		/* stopped at docextract.max_response_size */
	char	   *location;		/* a 3xx's redirect target (not followed), or NULL */
	/* Kept by http.c: */
	long		timeout_ms;
	dlist_node	node;			/* in the process's requests, oldest first */
	int64		charged;		/* bytes counted against max_inflight_memory */
	bool		over_budget;	/* its answer outgrew max_inflight_memory */
	bool		no_descriptor;	/* no descriptor was free to connect */
	bool		waiting_fd;		/* set aside until one is */
	TimestampTz fd_wait_since;
	dlist_node	wait_node;
} HttpRequest;

extern void http_init(void);
extern void http_start(HttpRequest *req, const char *url, struct curl_slist *headers,
					   char *body, long timeout_ms);
extern void http_cancel(HttpRequest *req);
extern int	http_socket_fd(void);
extern long http_timeout_ms(void);
extern void http_drive(bool timed_out);
extern HttpRequest *http_next_done(void);
extern int	http_inflight(void);
extern char *http_error_text(HttpRequest *req);
extern char *http_redirect_text(HttpRequest *req);
extern long http_retry_delay_ms(const HttpRequest *req, long base_ms, int attempt, long max_ms);
extern int	http_descriptor_cap(void);
extern int	http_descriptor_waiters(void);
extern int64 http_bytes_held(void);
extern uint64 http_bytes_freed(void);

/* egress.c: where webhooks may connect -------------------------------------- */

struct sockaddr;
extern char *docextract_webhook_allowed_destinations;
extern void egress_define_settings(void);
extern bool egress_allowed_sockaddr(const struct sockaddr *sa, bool for_superuser, char *text);
extern void egress_check_url(const char *url, bool for_superuser);

#endif							/* DOCEXTRACT_HTTP_H */
