/*
 * instant_model.c: an OpenAI-compatible chat-completions endpoint for the
 * benchmarks, fast enough never to be the bottleneck (test/model_server.py,
 * in Python, checks every request like the real API and answers about a
 * thousand a second; this one answers one fixed completion, tens of
 * thousands a second, on one thread with epoll).
 *
 *   instant_model --port-file F [--port N] [--delay-ms N] [--answer-file F]
 *       POST .../chat/completions   the fixed answer (after --delay-ms)
 *       GET  /_stats                {"count", "inflight", "max_inflight", "connections", "bytes"}
 *       GET  /_last                 the last request body (up to 1 MB kept)
 *       POST /_reset                counters to zero
 *   instant_model --load HOST:PORT [--conns 16] [--seconds 3] [--body-file F]
 *       a load generator: C connections, each POSTing the body back to back
 *       with keep-alive; prints "requests/s" (to measure an endpoint alone).
 *
 * The answer file holds the model's answer (a JSON object, the message
 * content); it is escaped into the completion envelope once, at start.
 * Request bodies are read and dropped as they come (a 27 MB base64 PDF costs
 * no memory here). Loopback only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 16384
#define KEEP_MAX (1024 * 1024)

typedef struct Conn
{
	int			gen;			/* bumped at close: a delayed answer checks it */
	char		head[HEAD_MAX];
	size_t		head_len;
	long long	body_left;		/* body bytes still to read; -1: reading head */
	char	   *keep;			/* the body's first KEEP_MAX bytes */
	size_t		keep_len;
	int			is_model;		/* a chat completion (counted, maybe delayed) */
	char		path[256];
	char	   *out;			/* answer not yet written */
	size_t		out_len, out_off;
	int			waiting;		/* delayed: not reading until answered */
	int			open;
} Conn;

typedef struct Due
{
	int			fd, gen;
	long long	at_ms;
} Due;

static Conn **conns;
static int	nconns;
static Due *dues;
static size_t due_head, due_tail, due_cap;
static int	ep;
static long long delay_ms;
static char *completion;		/* the whole HTTP answer to a completion */
static size_t completion_len;
static long long st_count, st_inflight, st_max_inflight, st_connections, st_bytes;
static char *last_body;
static size_t last_len;

static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
die(const char *what)
{
	perror(what);
	exit(1);
}

static char *
read_file(const char *path, size_t *len)
{
	FILE	   *f = fopen(path, "rb");
	char	   *buf;
	long		n;

	if (!f)
		die(path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n + 1);
	if (!buf || fread(buf, 1, n, f) != (size_t) n)
		die(path);
	buf[n] = '\0';
	fclose(f);
	*len = n;
	return buf;
}

/* The completion envelope around the answer, as a JSON string, with its HTTP head. */
static void
build_completion(const char *answer)
{
	size_t		n = strlen(answer);
	char	   *esc = malloc(2 * n + 1), *body, *p = esc;
	int			blen;

	for (const char *s = answer; *s; s++)
	{
		if (*s == '"' || *s == '\\')
			*p++ = '\\', *p++ = *s;
		else if (*s == '\n' || *s == '\r' || *s == '\t')
			*p++ = ' ';
		else
			*p++ = *s;
	}
	*p = '\0';
	blen = asprintf(&body, "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":%ld,"
					"\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"finish_reason\":\"stop\","
					"\"message\":{\"role\":\"assistant\",\"content\":\"%s\",\"refusal\":null}}],"
					"\"usage\":{\"prompt_tokens\":400,\"completion_tokens\":60,\"total_tokens\":460}}",
					(long) time(NULL), esc);
	completion_len = asprintf(&completion, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
							  "Content-Length: %d\r\n\r\n%s", blen, body);
	free(esc);
	free(body);
}

static Conn *
conn_of(int fd)
{
	if (fd >= nconns)
	{
		int			n = fd * 2 + 64;

		conns = realloc(conns, n * sizeof(Conn *));
		memset(conns + nconns, 0, (n - nconns) * sizeof(Conn *));
		nconns = n;
	}
	if (!conns[fd])
		conns[fd] = calloc(1, sizeof(Conn));
	return conns[fd];
}

static void
close_conn(int fd)
{
	Conn	   *c = conns[fd];

	if (c->waiting)
		st_inflight--;
	c->gen++;
	free(c->keep);
	free(c->out);
	c->keep = c->out = NULL;
	c->keep_len = c->head_len = c->out_len = c->out_off = 0;
	c->waiting = 0;
	c->open = 0;
	c->body_left = -1;
	epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
	close(fd);
}

static void
want(int fd, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.fd = fd};

	epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Queue bytes to write; write what the socket takes now. false: the connection is closed. */
static int
send_bytes(int fd, const char *data, size_t len)
{
	Conn	   *c = conns[fd];
	ssize_t		w = 0;

	if (c->out == NULL)
	{
		w = write(fd, data, len);
		if (w < 0 && errno != EAGAIN)
		{
			close_conn(fd);
			return 0;
		}
		if (w == (ssize_t) len)
			return 1;
		if (w < 0)
			w = 0;
	}
	c->out = realloc(c->out, c->out_len + len - w);
	memcpy(c->out + c->out_len, data + w, len - w);
	c->out_len += len - w;
	want(fd, EPOLLIN | EPOLLOUT);
	return 1;
}

static int
send_json(int fd, const char *json)
{
	char	   *msg;
	int			n = asprintf(&msg, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
							 "Content-Length: %zu\r\n\r\n%s", strlen(json), json);
	int			ok = send_bytes(fd, msg, n);

	free(msg);
	return ok;
}

static int
answer_model(int fd)
{
	Conn	   *c = conns[fd];

	int			was_waiting = c->waiting;

	c->waiting = 0;
	st_inflight--;
	if (!send_bytes(fd, completion, completion_len))
		return 0;
	if (was_waiting && c->out == NULL)
		want(fd, EPOLLIN);
	return 1;
}

/* A whole request has been read: answer it (or schedule the answer). */
static int
handle_request(int fd)
{
	Conn	   *c = conns[fd];
	char		json[512];

	if (c->is_model)
	{
		st_count++;
		if (++st_inflight > st_max_inflight)
			st_max_inflight = st_inflight;
		free(last_body);
		last_body = c->keep;
		last_len = c->keep_len;
		c->keep = NULL;
		c->keep_len = 0;
		if (delay_ms <= 0)
			return answer_model(fd);
		if (due_tail - due_head == due_cap)
		{
			size_t		n = due_cap ? due_cap * 2 : 1024;
			Due		   *d = malloc(n * sizeof(Due));

			for (size_t i = due_head; i < due_tail; i++)
				d[i - due_head] = dues[i % due_cap];
			free(dues);
			dues = d;
			due_tail -= due_head;
			due_head = 0;
			due_cap = n;
		}
		dues[due_tail++ % due_cap] = (Due) {fd, c->gen, now_ms() + delay_ms};
		c->waiting = 1;
		want(fd, 0);			/* nothing to read until answered (HUP/ERR still come) */
		return 1;
	}
	free(c->keep);
	c->keep = NULL;
	c->keep_len = 0;
	if (strncmp(c->path, "/_stats", 7) == 0)
	{
		snprintf(json, sizeof(json), "{\"count\": %lld, \"inflight\": %lld, \"max_inflight\": %lld, "
				 "\"connections\": %lld, \"bytes\": %lld}",
				 st_count, st_inflight, st_max_inflight, st_connections, st_bytes);
		return send_json(fd, json);
	}
	if (strncmp(c->path, "/_last", 6) == 0)
	{
		char	   *msg;
		int			n = asprintf(&msg, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
								 "Content-Length: %zu\r\n\r\n", last_len);
		int			ok = send_bytes(fd, msg, n) && (last_len == 0 || send_bytes(fd, last_body, last_len));

		free(msg);
		return ok;
	}
	if (strncmp(c->path, "/_reset", 7) == 0)
		st_count = st_max_inflight = st_connections = st_bytes = 0;
	return send_json(fd, strncmp(c->path, "/_reset", 7) == 0 ? "{}" : "{\"error\": \"no route\"}");
}

/* The head is complete (ends at end): method, path, Content-Length. */
static void
parse_head(Conn *c, size_t end)
{
	char	   *cl;
	char		method[16] = "";

	c->head[end] = '\0';
	sscanf(c->head, "%15s %255s", method, c->path);
	c->is_model = strcmp(method, "POST") == 0 && strstr(c->path, "/chat/completions") != NULL;
	c->body_left = 0;
	for (cl = c->head; (cl = strchr(cl, '\n')) != NULL;)
	{
		cl++;
		if (strncasecmp(cl, "content-length:", 15) == 0)
			c->body_left = atoll(cl + 15);
	}
}

static int
on_readable(int fd)
{
	Conn	   *c = conns[fd];
	char		buf[65536];
	ssize_t		n;

	while (!c->waiting && (n = read(fd, buf, sizeof(buf))) > 0)
	{
		size_t		off = 0;

		st_bytes += n;
		while (off < (size_t) n && !c->waiting)
		{
			if (c->body_left < 0)
			{
				/* reading the head: up to its blank line */
				char	   *end;
				size_t		take = (size_t) n - off;

				if (take > HEAD_MAX - 1 - c->head_len)
					take = HEAD_MAX - 1 - c->head_len;
				memcpy(c->head + c->head_len, buf + off, take);
				c->head[c->head_len + take] = '\0';
				end = strstr(c->head, "\r\n\r\n");
				if (end == NULL)
				{
					c->head_len += take;
					off += take;
					if (c->head_len >= HEAD_MAX - 1)
					{
						close_conn(fd);
						return 0;
					}
					continue;
				}
				off += (end + 4 - c->head) - c->head_len;
				parse_head(c, end - c->head);
				c->head_len = 0;
			}
			{
				size_t		take = (size_t) n - off;

				if ((long long) take > c->body_left)
					take = c->body_left;
				if (c->keep_len + take <= KEEP_MAX)
				{
					c->keep = realloc(c->keep, c->keep_len + take + 1);
					memcpy(c->keep + c->keep_len, buf + off, take);
					c->keep_len += take;
				}
				off += take;
				c->body_left -= take;
			}
			if (c->body_left == 0)
			{
				c->body_left = -1;
				if (!handle_request(fd))
					return 0;
			}
		}
	}
	if (!c->waiting && (n == 0 || (n < 0 && errno != EAGAIN)))
	{
		close_conn(fd);
		return 0;
	}
	return 1;
}

static void
on_writable(int fd)
{
	Conn	   *c = conns[fd];
	ssize_t		w = write(fd, c->out + c->out_off, c->out_len - c->out_off);

	if (w < 0 && errno != EAGAIN)
	{
		close_conn(fd);
		return;
	}
	if (w > 0)
		c->out_off += w;
	if (c->out_off == c->out_len)
	{
		free(c->out);
		c->out = NULL;
		c->out_len = c->out_off = 0;
		want(fd, EPOLLIN);
	}
}

/* Answer the delayed requests whose time has come; the ms until the next one. */
static int
answer_due(void)
{
	long long	now = now_ms();

	while (due_head < due_tail)
	{
		Due		   *d = &dues[due_head % due_cap];

		if (d->at_ms > now)
			return (int) (d->at_ms - now);
		due_head++;
		if (d->fd < nconns && conns[d->fd] && conns[d->fd]->gen == d->gen && conns[d->fd]->waiting)
		{
			int			fd = d->fd;

			if (answer_model(fd))
				on_readable(fd);	/* what came meanwhile (nothing, for curl) */
		}
	}
	return -1;
}

static int
listen_on(int port, const char *port_file)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	socklen_t	alen = sizeof(a);
	int			one = 1, s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *) &a, sizeof(a)) < 0 || listen(s, 4096) < 0)
		die("bind/listen");
	getsockname(s, (struct sockaddr *) &a, &alen);
	if (port_file)
	{
		char		tmp[4096];
		FILE	   *f;

		snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
		if (!(f = fopen(tmp, "w")))
			die(tmp);
		fprintf(f, "%d", ntohs(a.sin_port));
		fclose(f);
		rename(tmp, port_file);
	}
	fprintf(stderr, "instant model endpoint on 127.0.0.1:%d, delay %lld ms\n", ntohs(a.sin_port), delay_ms);
	return s;
}

static void
serve(int port, const char *port_file)
{
	int			ls = listen_on(port, port_file);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];

	if ((ep = epoll_create1(0)) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0)
		die("epoll");
	for (;;)
	{
		int			n = epoll_wait(ep, evs, 256, answer_due());

		for (int i = 0; i < n; i++)
		{
			int			fd = evs[i].data.fd;

			if (fd == ls)
			{
				int			cfd, one = 1;

				while ((cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0)
				{
					struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};

					setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					conn_of(cfd)->body_left = -1;
					conns[cfd]->open = 1;
					st_connections++;
					epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
				}
				continue;
			}
			if (!conns[fd]->open)
				continue;
			if (conns[fd]->waiting)
			{
				if (evs[i].events & (EPOLLHUP | EPOLLERR))
					close_conn(fd);	/* the client gave up */
				continue;
			}
			if ((evs[i].events & EPOLLOUT) && conns[fd]->out)
				on_writable(fd);
			if (conns[fd]->open && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
				on_readable(fd);
		}
	}
}

/* -- the load generator ----------------------------------------------------- */

static struct sockaddr_in load_addr;
static char *load_req;
static size_t load_req_len;
static volatile int load_stop;
static long long load_done[1024];

static int
read_answer(int s, char *buf, size_t cap)
{
	size_t		have = 0;
	char	   *end = NULL;
	long long	left;

	while (!end)
	{
		ssize_t		r = read(s, buf + have, cap - 1 - have);

		if (r <= 0)
			return 0;
		have += r;
		buf[have] = '\0';
		end = strstr(buf, "\r\n\r\n");
	}
	left = atoll(strcasestr(buf, "content-length:") + 15) - (long long) (have - (end + 4 - buf));
	while (left > 0)
	{
		ssize_t		r = read(s, buf, cap - 1 < (size_t) left ? cap - 1 : (size_t) left);

		if (r <= 0)
			return 0;
		left -= r;
	}
	return 1;
}

static void *
load_thread(void *arg)
{
	int			i = (int) (intptr_t) arg, one = 1;
	int			s = socket(AF_INET, SOCK_STREAM, 0);
	char		buf[65536];

	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(s, (struct sockaddr *) &load_addr, sizeof(load_addr)) < 0)
		die("connect");
	while (!load_stop)
	{
		size_t		off = 0;

		while (off < load_req_len)
		{
			ssize_t		w = write(s, load_req + off, load_req_len - off);

			if (w <= 0)
				die("write");
			off += w;
		}
		if (!read_answer(s, buf, sizeof(buf)))
			die("read");
		load_done[i]++;
	}
	close(s);
	return NULL;
}

static void
load(const char *target, int nthreads, double seconds, const char *body_file)
{
	char	   *host = strdup(target), *colon = strrchr(host, ':');
	const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Invoice Number: X\"}]}";
	size_t		blen = strlen(body);
	pthread_t	th[1024];
	long long	total = 0;

	if (!colon)
		die("--load HOST:PORT");
	*colon = '\0';
	load_addr.sin_family = AF_INET;
	load_addr.sin_port = htons(atoi(colon + 1));
	inet_pton(AF_INET, host, &load_addr.sin_addr);
	if (body_file)
		body = read_file(body_file, &blen);
	load_req = malloc(blen + 512);
	load_req_len = sprintf(load_req, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
						   "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", target, blen);
	memcpy(load_req + load_req_len, body, blen);
	load_req_len += blen;
	if (nthreads > 1024)
		nthreads = 1024;
	for (int i = 0; i < nthreads; i++)
		pthread_create(&th[i], NULL, load_thread, (void *) (intptr_t) i);
	usleep((useconds_t) (seconds * 1e6));
	load_stop = 1;
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < nthreads; i++)
		total += load_done[i];
	printf("%.0f requests/s (%lld in %.1f s, %d connections, %zu-byte bodies)\n",
		   total / seconds, total, seconds, nthreads, blen);
}

int
main(int argc, char **argv)
{
	const char *port_file = NULL, *answer_file = NULL, *target = NULL, *body_file = NULL;
	int			port = 0, nthreads = 16;
	double		seconds = 3;
	/* What a strict structured-output model answers for test/fixtures/invoice.pdf. */
	const char *answer = "{\"general\":{\"invoice_date\":\"2026-03-14\",\"invoice_number\":\"INV-2026-0042\","
		"\"total_amount\":1469.06},\"table\":[{\"amount\":200.00,\"description\":\"Steel widgets, boxed\"},"
		"{\"amount\":125.00,\"description\":\"Copper fittings\"},"
		"{\"amount\":909.50,\"description\":\"Installation service\"}]}";

	signal(SIGPIPE, SIG_IGN);
	for (int i = 1; i < argc; i++)
	{
		const char *v = i + 1 < argc ? argv[i + 1] : "";

		if (strcmp(argv[i], "--port") == 0)
			port = atoi(v), i++;
		else if (strcmp(argv[i], "--port-file") == 0)
			port_file = v, i++;
		else if (strcmp(argv[i], "--delay-ms") == 0)
			delay_ms = atoll(v), i++;
		else if (strcmp(argv[i], "--answer-file") == 0)
			answer_file = v, i++;
		else if (strcmp(argv[i], "--load") == 0)
			target = v, i++;
		else if (strcmp(argv[i], "--conns") == 0)
			nthreads = atoi(v), i++;
		else if (strcmp(argv[i], "--seconds") == 0)
			seconds = atof(v), i++;
		else if (strcmp(argv[i], "--body-file") == 0)
			body_file = v, i++;
		else
		{
			fprintf(stderr, "unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	if (target)
	{
		load(target, nthreads, seconds, body_file);
		return 0;
	}
	if (answer_file)
	{
		size_t		n;

		answer = read_file(answer_file, &n);
	}
	build_completion(answer);
	serve(port, port_file);
	return 0;
}
