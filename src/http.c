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

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"
#include "http.h"
#include "worker.h"

#include "common/pg_prng.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/fd.h"
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

/*
 * Every request in flight, oldest first (for the byte budget), and those
 * that wait for a descriptor before connecting again.
 */
static dlist_head requests = DLIST_STATIC_INIT(requests);
static dlist_head fd_waiting = DLIST_STATIC_INIT(fd_waiting);

/* Bytes held by requests in flight: bodies, and answers as they come. */
static int64 bytes_held = 0;
static uint64 bytes_freed = 0;	/* ever, by requests that ended */

/* Sockets libcurl holds, each counted by AcquireExternalFD. */
static int	sockets_held = 0;

/* A request that found no descriptor tries again this much later at most. */
#define FD_RETRY_MS 100

/* What each request is charged for its answer up front, at most. */
#define ANSWER_RESERVE (64 * 1024)

static int
on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		/* The socket may be closed already: nothing to undo then. */
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL);
		(void) curl_multi_assign(multi, s, NULL);
		return 0;
	}
	ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
	/*
	 * -1 (the epoll set refused it): libcurl fails every transfer of the
	 * multi handle rather than leave one hanging on an unwatched socket.
	 */
	if (socketp == NULL)
	{
		if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev) != 0 &&
			(errno != EEXIST || epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0))
			return -1;
		if (curl_multi_assign(multi, s, (void *) 1) != CURLM_OK)
			return -1;
	}
	else if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0)
		return -1;
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

/* The answer's bytes charged up front: its cap, or ANSWER_RESERVE if less. */
static int64
answer_reserve(void)
{
	return Min((int64) max_response_bytes(), (int64) ANSWER_RESERVE);
}

/*
 * An answer outgrows its reserve: charge the rest to the byte budget.  Past
 * the budget, only the oldest job's requests may grow (so one always
 * finishes and frees memory); another stops, as a transient failure.
 */
static bool
charge_answer(HttpRequest *req, size_t n)
{
	int64		grow = (int64) req->response.len + (int64) n - answer_reserve();
	HttpRequest *oldest = dlist_head_element(HttpRequest, node, &requests);

	grow = Min(grow, (int64) n);
	if (grow <= 0)
		return true;
	if (bytes_held + grow > inflight_memory_budget() && oldest->arg != req->arg)
		return false;
	bytes_held += grow;
	req->charged += grow;
	return true;
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
	if (!charge_answer(req, n))
	{
		req->over_budget = true;
		return 0;
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
	curl_socket_t s;

	if (req->egress_checked && !egress_allowed_sockaddr(&address->addr, false, text))
	{
		strlcpy(req->egress_refused, text, sizeof(req->egress_refused));
		return CURL_SOCKET_BAD;
	}
	/* Counted as PostgreSQL counts its own files: max_files_per_process. */
	if (!AcquireExternalFD())
	{
		req->no_descriptor = true;
		return CURL_SOCKET_BAD;
	}
	s = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
	if (s == CURL_SOCKET_BAD)
		ReleaseExternalFD();
	else
		sockets_held++;
	return s;
}

/* libcurl is done with a connection (maybe long after its request). */
static int
on_close_socket(void *clientp, curl_socket_t s)
{
	int			rc = close(s);

	ReleaseExternalFD();
	sockets_held--;
	return rc;
}

/*
 * Where a request may go: no proxy taken from the server's environment, no
 * redirect followed, the address checked at connect; a checked request
 * never rides on a connection opened by another (unchecked) one.  Its
 * sockets are opened and closed by us, to count them.
 */
static bool
set_egress_options(CURL *easy, HttpRequest *req)
{
	req->egress_refused[0] = '\0';
	return curl_easy_setopt(easy, CURLOPT_PROXY, "") == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_NOPROXY, "*") == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, on_open_socket) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, req) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket) == CURLE_OK &&
		(!req->egress_checked ||
		 (curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L) == CURLE_OK &&
		  curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L) == CURLE_OK));
}

/* Descriptors a process holds that PostgreSQL does not count: libcurl's wake-up pair, the parser's pipes. */
#define UNCOUNTED_FDS 4

static int	descriptor_cap = 0;

/*
 * Sockets this process may hold: what AcquireExternalFD (a third of
 * max_safe_fds) leaves it once its wait sets and our epoll are counted,
 * found by asking, less what it holds uncounted.  Before http_init, an
 * estimate: those wait sets take about three.
 */
int
http_descriptor_cap(void)
{
	return descriptor_cap > 0 ? descriptor_cap : Max(max_safe_fds / 3 - 3 - UNCOUNTED_FDS, 1);
}

static void
count_free_descriptors(void)
{
	int			n = 0;

	while (AcquireExternalFD())
		n++;
	for (int i = 0; i < n; i++)
		ReleaseExternalFD();
	descriptor_cap = Max(n + sockets_held - UNCOUNTED_FDS, 1);
}

void
http_init(void)
{
	if (multi)
		return;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (epoll_fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create an epoll descriptor for libcurl: %m")));
	ReserveExternalFD();
	count_free_descriptors();
	multi = curl_multi_init();
	if (multi == NULL ||
		curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L) != CURLM_OK ||
		/* Idle connections kept for reuse hold descriptors too. */
		curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) http_descriptor_cap()) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not set up libcurl's multi handle")));
}

/* Every option of a request but where it may go; false if libcurl refused one. */
static bool
set_request_options(CURL *easy, HttpRequest *req, const char *url, long timeout_ms)
{
	return curl_easy_setopt(easy, CURLOPT_URL, url) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, req->headers) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen(req->body)) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, Min(timeout_ms, 10000L)) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) max_response_bytes()) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "") == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_USERAGENT, "docextract/0.1") == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_data) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_WRITEDATA, req) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->errbuf) == CURLE_OK &&
		curl_easy_setopt(easy, CURLOPT_PRIVATE, req) == CURLE_OK;
}

/* The easy handle, headers and body of a request, freed. */
static void
free_transfer(HttpRequest *req)
{
	if (req->easy)
		curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	free(req->body);
	req->easy = NULL;
	req->headers = NULL;
	req->body = NULL;
}

/* A request that could not start: free what it was given, and say so. */
static void
abandon_start(HttpRequest *req, const char *why)
{
	free_transfer(req);
	ereport(ERROR,
			(errcode(ERRCODE_SYSTEM_ERROR),
			 errmsg("could not start a request: %s", why)));
}

/*
 * Start a POST.  Takes ownership of headers and of the malloc'd body; the
 * response buffer lives in the current memory context.  The body and the
 * answer's reserve are charged to the process's bytes in flight.
 */
void
http_start(HttpRequest *req, const char *url, struct curl_slist *headers,
		   char *body, long timeout_ms)
{
	struct curl_slist *with_expect;
	CURLMcode	mc;

	req->easy = curl_easy_init();
	/* No "Expect: 100-continue" round trip before each body. */
	with_expect = curl_slist_append(headers, "Expect:");
	req->headers = with_expect ? with_expect : headers;
	req->body = body;
	req->status = 0;
	req->curl_code = CURLE_OK;
	req->errbuf[0] = '\0';
	req->done = false;
	req->too_large = false;
	req->over_budget = false;
	req->no_descriptor = false;
	req->fd_wait_since = 0;
	req->waiting_fd = false;
	req->timeout_ms = timeout_ms;
	req->location = NULL;
	initStringInfo(&req->response);
	if (req->easy == NULL || with_expect == NULL || body == NULL)
		abandon_start(req, "libcurl is out of memory");
	if (!set_request_options(req->easy, req, url, timeout_ms) || !set_egress_options(req->easy, req))
		abandon_start(req, "libcurl refused an option");
	if ((mc = curl_multi_add_handle(multi, req->easy)) != CURLM_OK)
		abandon_start(req, curl_multi_strerror(mc));
	inflight++;
	dlist_push_tail(&requests, &req->node);
	req->charged = (int64) strlen(body) + answer_reserve();
	bytes_held += req->charged;
}

static void
release_handle(HttpRequest *req)
{
	CURLMcode	mc = curl_multi_remove_handle(multi, req->easy);

	if (mc != CURLM_OK)
		elog(WARNING, "docextract: libcurl could not remove a request: %s", curl_multi_strerror(mc));
	if (req->waiting_fd)
		dlist_delete(&req->wait_node);
	dlist_delete(&req->node);
	bytes_held -= req->charged;
	bytes_freed += req->charged;
	free_transfer(req);
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

/* Milliseconds until libcurl wants a timeout call, or a waiter its retry; -1: none. */
long
http_timeout_ms(void)
{
	long		secs;
	int			usecs;
	long		ms;

	if (!timer_armed)
		return dlist_is_empty(&fd_waiting) ? -1 : FD_RETRY_MS;
	TimestampDifference(GetCurrentTimestamp(), timer_deadline, &secs, &usecs);
	ms = secs * 1000 + (usecs + 999) / 1000;
	return dlist_is_empty(&fd_waiting) ? ms : Min(ms, FD_RETRY_MS);
}

/*
 * Requests that found no descriptor connect again, in the order they came:
 * at most every FD_RETRY_MS, or as soon as a socket was closed.
 */
static void
retry_fd_waiters(void)
{
	static TimestampTz last_try = 0;
	static int	sockets_then = 0;
	dlist_mutable_iter it;

	if (dlist_is_empty(&fd_waiting) ||
		(sockets_held >= sockets_then &&
		 !TimestampDifferenceExceeds(last_try, GetCurrentTimestamp(), FD_RETRY_MS)))
		return;
	last_try = GetCurrentTimestamp();
	sockets_then = sockets_held;
	dlist_foreach_modify(it, &fd_waiting)
	{
		HttpRequest *req = dlist_container(HttpRequest, wait_node, it.cur);
		CURLMcode	mc;

		resetStringInfo(&req->response);
		req->no_descriptor = false;
		if ((mc = curl_multi_add_handle(multi, req->easy)) != CURLM_OK)
		{
			elog(WARNING, "docextract: libcurl could not restart a request: %s",
				 curl_multi_strerror(mc));
			break;
		}
		dlist_delete(&req->wait_node);
		req->waiting_fd = false;
	}
}

/* Let libcurl act on ready sockets and on its timer when it is due. */
void
http_drive(bool timed_out)
{
	struct epoll_event events[64];
	int			n;
	bool		due;
	long		left_ms;

	if (multi == NULL)
		return;
	retry_fd_waiters();
	do
	{
		n = epoll_wait(epoll_fd, events, lengthof(events), 0);
		for (int i = 0; i < n; i++)
		{
			int			flags = 0;
			CURLMcode	mc;

			if (events[i].events & EPOLLIN)
				flags |= CURL_CSELECT_IN;
			if (events[i].events & EPOLLOUT)
				flags |= CURL_CSELECT_OUT;
			if (events[i].events & (EPOLLERR | EPOLLHUP))
				flags |= CURL_CSELECT_ERR;
			mc = curl_multi_socket_action(multi, events[i].data.fd, flags, &running_handles);
			if (mc != CURLM_OK)
				elog(WARNING, "docextract: libcurl: %s", curl_multi_strerror(mc));
		}
	} while (n == lengthof(events));
	/*
	 * The timer is one-shot: once due, it is disarmed, and libcurl sets it
	 * again if it still needs one.  It need not say -1 when it needs none
	 * (7.88 does not, after a timeout call that left no timer): a timer kept
	 * armed past its deadline had the worker spin at full speed while idle.
	 * Nor need it call back with a timer it already told (8.10.0 to 8.11.0,
	 * when called before libcurl's own clock says due): asked, then (at
	 * least 1 ms: a multi handle a callback failed says 0 for ever).
	 */
	due = timer_armed && GetCurrentTimestamp() >= timer_deadline;
	if (due)
		timer_armed = false;
	if (!timed_out && !due)
		return;
	if (curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running_handles) != CURLM_OK)
		elog(WARNING, "docextract: libcurl could not act on its timer");
	else if (!timer_armed && curl_multi_timeout(multi, &left_ms) == CURLM_OK && left_ms >= 0)
		on_timer(multi, Max(left_ms, 1), NULL);
}

/*
 * A request failed to connect for want of a descriptor: it waits for one
 * (off libcurl's multi handle), within its own timeout.  False if its time
 * is up: it ends with that error.
 */
static bool
wait_for_descriptor(HttpRequest *req)
{
	TimestampTz now = GetCurrentTimestamp();
	CURLMcode	mc;

	if (!req->no_descriptor)
		return false;
	if (req->fd_wait_since == 0)
		req->fd_wait_since = now;
	else if (TimestampDifferenceExceeds(req->fd_wait_since, now, (int) req->timeout_ms))
		return false;
	if ((mc = curl_multi_remove_handle(multi, req->easy)) != CURLM_OK)
	{
		elog(WARNING, "docextract: libcurl could not set a request aside: %s", curl_multi_strerror(mc));
		return false;
	}
	dlist_push_tail(&fd_waiting, &req->wait_node);
	req->waiting_fd = true;
	return true;
}

/* What the finished transfer says about itself, into req. */
static void
read_transfer_info(HttpRequest *req, CURL *easy)
{
	curl_off_t	usecs = 0;
	curl_off_t	retry_after = 0;
	char	   *url = NULL;

	if (curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &req->status) != CURLE_OK)
		req->status = 0;
	if (curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &usecs) != CURLE_OK)
		usecs = 0;
	req->retry_after_s = 0;
	if (curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK)
		req->retry_after_s = (long) retry_after;
	req->location = NULL;
	if (curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &url) == CURLE_OK && url)
	{
		MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(req->response.data));

		req->location = answer_excerpt(url, -1, 200);
		MemoryContextSwitchTo(old);
	}
	req->elapsed_ms = usecs / 1000.0;
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
		HttpRequest *req = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req) != CURLE_OK ||
			req == NULL)
			elog(ERROR, "libcurl returned a transfer that is not docextract's");
		req->curl_code = msg->data.result;
		if (req->curl_code != CURLE_OK && wait_for_descriptor(req))
			continue;
		read_transfer_info(req, msg->easy_handle);
		req->done = true;
		release_handle(req);
		return req;
	}
	return NULL;
}

/* Bytes the requests of this process hold now (bodies, answers so far). */
int64
http_bytes_held(void)
{
	return bytes_held;
}

/* Bytes freed by ended requests so far: has memory been freed since? */
uint64
http_bytes_freed(void)
{
	return bytes_freed;
}

/* Requests of this process waiting for a descriptor. */
int
http_descriptor_waiters(void)
{
	int			n = 0;
	dlist_iter	it;

	dlist_foreach(it, &fd_waiting)
		n++;
	return n;
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
	if (req->over_budget)
		return psprintf("the answer did not fit in docextract.max_inflight_memory (%d kB) beside the other requests in flight",
						docextract_max_inflight_memory);
	if (req->no_descriptor)
		return psprintf("no file descriptor became free for a connection within %ld ms (max_files_per_process allows %d sockets per process)",
						req->timeout_ms, http_descriptor_cap());
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
