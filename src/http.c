/*
 * http.c: every request of a process goes through one libcurl multi handle.
 *
 * libcurl tells us which sockets it wants watched (socket callback) and when
 * it next needs a call (timer callback).  We keep those sockets in an epoll
 * set of our own, and that one descriptor is what the worker's WaitEventSet
 * watches next to its latch: so hundreds of transfers are in flight without
 * threads, and a committing backend still wakes the worker at once.
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include <curl/curl.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>


static CURLM *multi = NULL;
static int	epoll_fd = -1;
static int	running_handles = 0;
static int	inflight = 0;
static bool timer_armed = false;
static TimestampTz timer_deadline;

static int
on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL);
		curl_multi_assign(multi, s, NULL);
		return 0;
	}
	ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
	if (socketp == NULL)
	{
		if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev) != 0 && errno == EEXIST)
			epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev);
		curl_multi_assign(multi, s, (void *) 1);
	}
	else
		epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev);
	return 0;
}

static int
on_timer(CURLM *m, long timeout_ms, void *userp)
{
	timer_armed = timeout_ms >= 0;
	if (timer_armed)
		timer_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	return 0;
}

/* docextract.max_response_size in bytes. */
static size_t
max_response_bytes(void)
{
	return (size_t) docextract_max_response_size * 1024;
}

/*
 * A model's answer is a few kB: refuse to buffer more than the setting
 * allows (this counts decoded bytes, so a gzip bomb stops here too).
 */
static size_t
on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	HttpRequest *req = userdata;
	size_t		n = size * nmemb;

	if ((size_t) req->response.len + n > max_response_bytes())
	{
		req->too_large = true;
		return 0;				/* curl reports CURLE_WRITE_ERROR */
	}
	appendBinaryStringInfo(&req->response, ptr, (int) n);
	return n;
}

/*
 * libcurl is about to connect to an address (after resolving the name):
 * a webhook's request connects only where egress.c allows.
 */
static curl_socket_t
on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	HttpRequest *req = clientp;
	char		text[INET6_ADDRSTRLEN];

	if (req->egress_checked && !egress_allowed_sockaddr(&address->addr, false, text))
	{
		strlcpy(req->egress_refused, text, sizeof(req->egress_refused));
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

/*
 * Where a request may go: no proxy taken from the server's environment, no
 * redirect followed, the address checked at connect; a checked request
 * never rides on a connection opened by another (unchecked) one.
 */
static void
set_egress_options(CURL *easy, HttpRequest *req)
{
	req->egress_refused[0] = '\0';
	if (curl_easy_setopt(easy, CURLOPT_PROXY, "") != CURLE_OK ||
		curl_easy_setopt(easy, CURLOPT_NOPROXY, "*") != CURLE_OK ||
		curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
		curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, on_open_socket) != CURLE_OK ||
		curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, req) != CURLE_OK ||
		(req->egress_checked &&
		 (curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L) != CURLE_OK ||
		  curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L) != CURLE_OK)))
	{
		curl_easy_cleanup(easy);
		req->easy = NULL;
		elog(ERROR, "could not set libcurl's connection options");
	}
}

void
http_init(void)
{
	if (multi)
		return;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(ERROR, "could not initialize libcurl");
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (epoll_fd < 0)
		elog(ERROR, "epoll_create1 failed: %m");
	multi = curl_multi_init();
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
}

/*
 * Start a POST.  Takes ownership of headers and of the malloc'd body; the
 * response buffer lives in the current memory context.
 */
void
http_start(HttpRequest *req, const char *url, struct curl_slist *headers,
		   char *body, long timeout_ms)
{
	CURL	   *easy = curl_easy_init();

	if (easy == NULL)
		elog(ERROR, "could not create a libcurl handle");
	/* No "Expect: 100-continue" round trip before each body. */
	headers = curl_slist_append(headers, "Expect:");
	req->easy = easy;
	req->headers = headers;
	req->body = body;
	req->status = 0;
	req->curl_code = CURLE_OK;
	req->errbuf[0] = '\0';
	req->done = false;
	req->too_large = false;
	req->location = NULL;
	initStringInfo(&req->response);

	curl_easy_setopt(easy, CURLOPT_URL, url);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen(body));
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, Min(timeout_ms, 10000L));
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	/* A redirect is an answer like any other: never followed. */
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) max_response_bytes());
	curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "docextract/0.1");
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->errbuf);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, req);
	set_egress_options(easy, req);
	curl_multi_add_handle(multi, easy);
	inflight++;
}

static void
release_handle(HttpRequest *req)
{
	curl_multi_remove_handle(multi, req->easy);
	curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	free(req->body);
	req->easy = NULL;
	req->headers = NULL;
	req->body = NULL;
	inflight--;
}

/*
 * When to try a failed request again: its Retry-After if the server gave
 * one, else base_ms doubled per earlier attempt, ±25 % jitter; at most max_ms.
 */
long
http_retry_delay_ms(const HttpRequest *req, long base_ms, int attempt, long max_ms)
{
	double		delay;

	if (req->retry_after_s > 0)
		return Min(req->retry_after_s * 1000L, max_ms);
	delay = base_ms * pow(2.0, attempt - 1);
	delay *= 0.75 + 0.5 * pg_prng_double(&pg_global_prng_state);
	return (long) Min(delay, (double) max_ms);
}

/* Drop a request that is still in flight. */
void
http_cancel(HttpRequest *req)
{
	if (req->easy && !req->done)
		release_handle(req);
}

int
http_socket_fd(void)
{
	return epoll_fd;
}

int
http_inflight(void)
{
	return inflight;
}

/* Milliseconds until libcurl wants a timeout call; -1 if it does not. */
long
http_timeout_ms(void)
{
	long		secs;
	int			usecs;

	if (!timer_armed)
		return -1;
	TimestampDifference(GetCurrentTimestamp(), timer_deadline, &secs, &usecs);
	return secs * 1000 + (usecs + 999) / 1000;
}

/* Let libcurl act on ready sockets and on its timer when it is due. */
void
http_drive(bool timed_out)
{
	struct epoll_event events[64];
	int			n;

	if (multi == NULL)
		return;
	do
	{
		n = epoll_wait(epoll_fd, events, lengthof(events), 0);
		for (int i = 0; i < n; i++)
		{
			int			flags = 0;

			if (events[i].events & EPOLLIN)
				flags |= CURL_CSELECT_IN;
			if (events[i].events & EPOLLOUT)
				flags |= CURL_CSELECT_OUT;
			if (events[i].events & (EPOLLERR | EPOLLHUP))
				flags |= CURL_CSELECT_ERR;
			curl_multi_socket_action(multi, events[i].data.fd, flags, &running_handles);
		}
	} while (n == lengthof(events));
	if (timed_out || (timer_armed && http_timeout_ms() <= 0))
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running_handles);
}

/* The next finished request, its handle released; NULL when none. */
HttpRequest *
http_next_done(void)
{
	CURLMsg    *msg;
	int			left;

	if (multi == NULL)
		return NULL;
	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		HttpRequest *req;
		curl_off_t	usecs = 0;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
		req->curl_code = msg->data.result;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &req->status);
		curl_easy_getinfo(msg->easy_handle, CURLINFO_TOTAL_TIME_T, &usecs);
		req->retry_after_s = 0;
		{
			curl_off_t	retry_after = 0;

			if (curl_easy_getinfo(msg->easy_handle, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK)
				req->retry_after_s = (long) retry_after;
		}
		req->location = NULL;
		{
			char	   *url = NULL;

			if (curl_easy_getinfo(msg->easy_handle, CURLINFO_REDIRECT_URL, &url) == CURLE_OK && url)
			{
				MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(req->response.data));

				req->location = answer_excerpt(url, -1, 200);
				MemoryContextSwitchTo(old);
			}
		}
		req->elapsed_ms = usecs / 1000.0;
		req->done = true;
		release_handle(req);
		return req;
	}
	return NULL;
}

/* Why a transfer failed at the HTTP level ("timed out after 5000 ms", ...). */
char *
http_error_text(HttpRequest *req)
{
	/*
	 * Not naming the address: a role would learn what internal names
	 * resolve to through the server's resolver.
	 */
	if (req->egress_refused[0] && req->curl_code == CURLE_COULDNT_CONNECT)
		return pstrdup("the destination's address is not allowed by docextract.webhook_allowed_destinations");
	if (req->too_large || req->curl_code == CURLE_FILESIZE_EXCEEDED)
		return psprintf("the answer is larger than docextract.max_response_size (%d kB)",
						docextract_max_response_size);
	if (req->errbuf[0])
		return answer_excerpt(req->errbuf, -1, sizeof(req->errbuf));
	return pstrdup(curl_easy_strerror((CURLcode) req->curl_code));
}

/*
 * A 3xx: redirects are not followed (a model's base_url or a webhook's url
 * names the endpoint itself), so say where it pointed.  NULL if not one.
 */
char *
http_redirect_text(HttpRequest *req)
{
	if (req->status < 300 || req->status >= 400)
		return NULL;
	return psprintf("HTTP %ld redirect to \"%s\" not followed: redirects are never followed",
					req->status, req->location ? req->location : "");
}
