/*
 * parser.c: untrusted bytes are parsed by a helper program, never here.
 *
 * Each process (backend or worker) starts $libdir/docextract_parser once, on
 * its first document, and reuses it; the helper forks a child per document
 * (see src/parser/).  It is spawned, never forked from us: a forked backend
 * would keep shared memory, and the server's environment holds the API keys
 * of env: secrets.  It gets an empty environment, its two pipes and
 * /dev/null, a process group of its own (signals meant for backends are not
 * its business) and a memory limit; it dies with us.
 *
 * We wait for it on our latch, so statement_timeout and cancel interrupt
 * the wait; on any error while it works (timeout, cancel, a torn reply) we
 * kill its process group and reap it, and the next document starts another.
 */
#include "postgres.h"

#include "parser.h"

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parser/parser_protocol.h"

/*
 * Set while the parser raises a failure of the document's (it crashed, hit
 * a limit, ran out of time, answered out of protocol), never another error:
 * only those may parser_run_or_problem() record instead of raising.
 */
static bool document_failed = false;

/* The errcode() of such a failure: 22023. */
static int
document_failure(void)
{
	document_failed = true;
	return errcode(ERRCODE_INVALID_PARAMETER_VALUE);
}

int			docextract_parser_timeout_ms = 30000;
int			docextract_parser_memory_mb = 1024;
int			docextract_parser_fault = PARSER_INJECT_NONE;

static const struct config_enum_entry parser_faults[] = {
	{"none", PARSER_INJECT_NONE, false},
	{"crash", PARSER_INJECT_CRASH, false},
	{"hang", PARSER_INJECT_HANG, false},
	{NULL, 0, false}
};

int			docextract_render_dpi = 150;

/* The helper of this process, if one runs. */
static pid_t helper_pid = 0;
static int	helper_in = -1;		/* we write requests here */
static int	helper_out = -1;	/* and read replies here */
static int	helper_memory_mb = 0;	/* the limit it was started with */

/* SUSET: a role must not be able to lift its own limits. */
void
parser_define_settings(void)
{
	DefineCustomIntVariable("docextract.parser_timeout",
							"Longest time the document parser may take over one document.",
							NULL, &docextract_parser_timeout_ms, 30000, 100, 3600 * 1000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.parser_memory_limit",
							"Address space the document parser may use.",
							NULL, &docextract_parser_memory_mb, 1024, 64, 1024 * 1024,
							PGC_SUSET, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomIntVariable("docextract.render_dpi",
							"Resolution at which a PDF page without text is rendered to be sent as an image.",
							NULL, &docextract_render_dpi, 150, 36, 600,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("docextract.parser_fault",
							 "Fault injection for tests: the parser's child crashes or hangs.",
							 NULL, &docextract_parser_fault, PARSER_INJECT_NONE, parser_faults,
							 PGC_SUSET, GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
}

/* Kill the helper and its child (its process group), reap it, close pipes. */
static void
helper_stop(void)
{
	if (helper_pid > 0)
	{
		kill(-helper_pid, SIGKILL);
		kill(helper_pid, SIGKILL);
		while (waitpid(helper_pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (helper_in >= 0)
		close(helper_in);
	if (helper_out >= 0)
		close(helper_out);
	helper_pid = 0;
	helper_in = helper_out = -1;
}

/* posix_spawn's settings: default signals, none blocked, a group of its own. */
static void
spawn_attributes(posix_spawnattr_t *attr)
{
	sigset_t	all,
				none;

	sigfillset(&all);
	sigemptyset(&none);
	posix_spawnattr_init(attr);
	posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
							 POSIX_SPAWN_SETPGROUP);
	posix_spawnattr_setsigdefault(attr, &all);
	posix_spawnattr_setsigmask(attr, &none);
	posix_spawnattr_setpgroup(attr, 0);
}

/* Its descriptors: the two pipes as stdin and stdout, /dev/null, nothing else. */
static void
spawn_file_actions(posix_spawn_file_actions_t *fa, int in, int out)
{
	posix_spawn_file_actions_init(fa);
	posix_spawn_file_actions_adddup2(fa, in, 0);
	posix_spawn_file_actions_adddup2(fa, out, 1);
	posix_spawn_file_actions_addopen(fa, 2, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addclosefrom_np(fa, 3);
}

static void
helper_start(void)
{
	char		path[MAXPGPATH];
	char		parent[32];
	char		memory[32];
	char	   *argv[] = {path, parent, memory, NULL};
	char	   *envp[] = {NULL};
	int			in[2],
				out[2];
	posix_spawnattr_t attr;
	posix_spawn_file_actions_t fa;
	int			rc;

	snprintf(path, sizeof(path), "%s/docextract_parser", pkglib_path);
	snprintf(parent, sizeof(parent), "%d", (int) MyProcPid);
	snprintf(memory, sizeof(memory), "%llu",
			 (unsigned long long) docextract_parser_memory_mb * 1024 * 1024);
	if (access(path, X_OK) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not run docextract's document parser \"%s\": %m", path)));
	if (pipe2(in, O_CLOEXEC) != 0)
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not create a pipe: %m")));
	if (pipe2(out, O_CLOEXEC) != 0)
	{
		close(in[0]);
		close(in[1]);
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not create a pipe: %m")));
	}
	spawn_attributes(&attr);
	spawn_file_actions(&fa, in[0], out[1]);
	rc = posix_spawn(&helper_pid, path, &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(in[0]);
	close(out[1]);
	helper_in = in[1];
	helper_out = out[0];
	if (rc != 0)
	{
		helper_pid = 0;
		helper_stop();
		errno = rc;
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not start docextract's document parser \"%s\": %m", path)));
	}
	/* A big pipe means fewer wake-ups for a big document (best effort). */
	(void) fcntl(helper_in, F_SETPIPE_SZ, 1024 * 1024);
	if (fcntl(helper_in, F_SETFL, O_NONBLOCK) != 0 || fcntl(helper_out, F_SETFL, O_NONBLOCK) != 0)
	{
		int			save_errno = errno;

		helper_stop();
		errno = save_errno;
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not make the document parser's pipes non-blocking: %m")));
	}
	helper_memory_mb = docextract_parser_memory_mb;
	elog(DEBUG1, "docextract: started the document parser, pid %d", (int) helper_pid);
}

/* A helper that is still there, with the current memory limit. */
static void
helper_ensure(void)
{
	/* It died between documents (reaped now, or by someone else). */
	if (helper_pid > 0 && waitpid(helper_pid, NULL, WNOHANG) != 0)
	{
		helper_pid = 0;
		helper_stop();
	}
	if (helper_pid > 0 && helper_memory_mb != docextract_parser_memory_mb)
		helper_stop();
	if (helper_pid == 0)
		helper_start();
}

/* One exchange with the helper: where it is, and until when it may take. */
typedef struct Exchange
{
	const char *filename;
	TimestampTz deadline;
	bool		latch_was_set;
} Exchange;

/* Wait until fd is ready for event (WL_SOCKET_*), serving interrupts. */
static void
wait_for_helper(Exchange *x, int fd, int event)
{
	for (;;)
	{
		long		left_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), x->deadline);
		int			rc;

		if (left_ms <= 0)
			ereport(ERROR,
					(document_failure(),
					 errmsg("could not parse document \"%s\": the parser took longer than docextract.parser_timeout (%d ms)",
							x->filename, docextract_parser_timeout_ms)));
		rc = WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | event,
							   fd, left_ms, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			x->latch_was_set = true;
			CHECK_FOR_INTERRUPTS();
		}
		if (rc & event)
			return;
	}
}

/* The helper ended where it should answer: say how, as a parse failure. */
static void
helper_lost(Exchange *x)
{
	int			status = 0;
	pid_t		rc;

	while ((rc = waitpid(helper_pid, &status, 0)) < 0 && errno == EINTR)
		;
	helper_pid = 0;				/* reaped */
	helper_stop();
	if (rc > 0 && WIFSIGNALED(status))
		ereport(ERROR,
				(document_failure(),
				 errmsg("could not parse document \"%s\": the parser was killed by signal %d",
						x->filename, WTERMSIG(status))));
	ereport(ERROR,
			(document_failure(),
			 errmsg("could not parse document \"%s\": the parser exited unexpectedly (code %d)",
					x->filename, rc > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1)));
}

static void
send_all(Exchange *x, const char *data, size_t len)
{
	while (len > 0)
	{
		ssize_t		n = write(helper_in, data, len);

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
		{
			wait_for_helper(x, helper_in, WL_SOCKET_WRITEABLE);
			continue;
		}
		if (n <= 0)
			helper_lost(x);		/* EPIPE: it is gone */
		data += n;
		len -= n;
	}
}

static void
receive_all(Exchange *x, char *buf, size_t len)
{
	while (len > 0)
	{
		ssize_t		n = read(helper_out, buf, len);

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
		{
			wait_for_helper(x, helper_out, WL_SOCKET_READABLE);
			continue;
		}
		if (n <= 0)
			helper_lost(x);		/* EOF: it is gone */
		buf += n;
		len -= n;
	}
}

/* How the child ended, when not well: a 22023 error that says so. */
static void
check_outcome(const ParserReply *reply, const char *filename)
{
	if (reply->outcome == PARSER_EXITED && reply->value == 0)
		return;
	if (reply->outcome == PARSER_SIGNALLED && reply->value == SIGXCPU)
		ereport(ERROR,
				(document_failure(),
				 errmsg("could not parse document \"%s\": the parser used more CPU time than docextract.parser_timeout allows",
						filename)));
	if (reply->outcome == PARSER_SIGNALLED)
		ereport(ERROR,
				(document_failure(),
				 errmsg("could not parse document \"%s\": the parser was killed by signal %d",
						filename, reply->value),
				 reply->value == SIGABRT ?
				 errhint("It may have run out of memory (docextract.parser_memory_limit is %d MB).",
						 docextract_parser_memory_mb) : 0));
	if (reply->outcome == PARSER_TOO_LARGE)
		ereport(ERROR,
				(document_failure(),
				 errmsg("could not parse document \"%s\": what the parser made of it (text, pages or images) is larger than %d MB",
						filename, PARSER_MAX_OUTPUT / (1024 * 1024))));
	if (reply->outcome == PARSER_FAILED && reply->value == ENOMEM)
		ereport(ERROR,
				(document_failure(),
				 errmsg("could not parse document \"%s\": it does not fit in docextract.parser_memory_limit (%d MB)",
						filename, docextract_parser_memory_mb)));
	if (reply->outcome == PARSER_FAILED)
	{
		errno = reply->value;
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not parse document \"%s\": the parser could not start a child: %m",
						filename)));
	}
	ereport(ERROR,
			(document_failure(),
			 errmsg("could not parse document \"%s\": the parser exited with code %d",
					filename, reply->value)));
}

static uint32
request_flags(bool want_text)
{
	uint32		flags = want_text ? PARSER_WANT_TEXT : 0;

	if (docextract_parser_fault == PARSER_INJECT_CRASH)
		flags |= PARSER_FAULT_CRASH;
	else if (docextract_parser_fault == PARSER_INJECT_HANG)
		flags |= PARSER_FAULT_HANG;
	return flags;
}

/* Send one document, read the reply; on any error the helper is killed. */
static char *
exchange(Exchange *x, const ParserRequest *req, const char *data, const int32 *pages,
		 ParserReply *reply)
{
	char	   *out = NULL;

	PG_TRY();
	{
		send_all(x, (const char *) req, sizeof(*req));
		send_all(x, data, req->len);
		if (req->npages > 0)
			send_all(x, (const char *) pages, sizeof(int32) * req->npages);
		receive_all(x, (char *) reply, sizeof(*reply));
		if (reply->magic != PARSER_MAGIC || reply->len > PARSER_MAX_OUTPUT)
			ereport(ERROR,
					(document_failure(),
					 errmsg("could not parse document \"%s\": the parser answered out of protocol",
							x->filename)));
		out = palloc(reply->len + 1);
		receive_all(x, out, reply->len);
		out[reply->len] = '\0';
	}
	PG_CATCH();
	{
		helper_stop();
		SetLatch(MyLatch);		/* in case we swallowed a wake-up */
		PG_RE_THROW();
	}
	PG_END_TRY();
	return out;
}

/*
 * One request to the helper.  Returns what the child wrote (palloc'd,
 * NUL-terminated, *len bytes) when it ended well; raises 22023 when it
 * crashed, hit a limit or ran out of time, 57014 when cancelled.
 */
static char *
run_request(ParserRequest *req, const char *data, const int32 *pages, const char *filename,
			size_t *out_len)
{
	Exchange	x;
	ParserReply reply;
	char	   *out;

	req->magic = PARSER_MAGIC;
	req->cpu_seconds = docextract_parser_timeout_ms / 1000 + 2;
	x.filename = filename;
	x.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), docextract_parser_timeout_ms);
	x.latch_was_set = false;

	helper_ensure();
	out = exchange(&x, req, data, pages, &reply);
	if (x.latch_was_set)
		SetLatch(MyLatch);		/* someone else's wake-up: pass it on */
	check_outcome(&reply, filename);
	*out_len = reply.len;
	return out;
}

/* Parse one document: 'O', its page count and (want_text) its text. */
char *
parser_run(const char *data, size_t len, bool want_text, const char *filename, size_t *out_len)
{
	ParserRequest req;

	memset(&req, 0, sizeof(req));
	req.flags = request_flags(want_text);
	req.len = len;
	return run_request(&req, data, NULL, filename, out_len);
}

/*
 * parser_run() for a caller that records a bad document rather than
 * raising (the trigger form under docextract.trigger_errors = 'record'):
 * when the parser crashes, hits a limit or runs out of time on this
 * document -- the 22023 errors run_request() raises -- NULL and *problem
 * (the error's message).  Any other error (a cancel, the helper not
 * starting) propagates.  No subtransaction: run_request() raises those
 * errors itself, holding no lock, buffer or other resource-owner resource,
 * the helper already stopped (exchange()), so the error is dropped safely;
 * a subtransaction per row would slow a large COPY and the whole cluster.
 */
char *
parser_run_or_problem(const char *data, size_t len, bool want_text, const char *filename,
					  size_t *out_len, char **problem)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile out = NULL;

	/* errfinish() zeroes these for an ERROR: put them back if we go on. */
	uint32		holdoff = InterruptHoldoffCount;
	uint32		cancel_holdoff = QueryCancelHoldoffCount;
	uint32		crit = CritSectionCount;

	*problem = NULL;
	document_failed = false;
	PG_TRY();
	{
		out = parser_run(data, len, want_text, filename, out_len);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (!document_failed || edata->elevel != ERROR ||
			edata->sqlerrcode != ERRCODE_INVALID_PARAMETER_VALUE)
			PG_RE_THROW();
		FlushErrorState();
		InterruptHoldoffCount = holdoff;
		QueryCancelHoldoffCount = cancel_holdoff;
		CritSectionCount = crit;
		*problem = edata->message;
	}
	PG_END_TRY();
	return out;
}

/*
 * A request about these pages (ascending, 1-based): PARSER_SELECT_PAGES, a
 * PDF of only them ('P' and its bytes); PARSER_WANT_WORDS, their words
 * with boxes ('W' and lines); PARSER_RENDER_PAGES, each as a PNG at dpi
 * ('R' and the pages).  See parser_protocol.h.
 */
char *
parser_pages_request(uint32 what, const char *data, size_t len, const int32 *pages, int npages,
					 int dpi, const char *filename, size_t *out_len)
{
	ParserRequest req;

	Assert(npages > 0 && npages <= PARSER_MAX_PAGES);
	memset(&req, 0, sizeof(req));
	req.flags = request_flags(false) | what;
	req.npages = npages;
	req.dpi = dpi;
	req.len = len;
	return run_request(&req, data, pages, filename, out_len);
}

/* A HEIC/HEIF image as PNG: 'I' and its bytes, or 'F' and libheif's reason. */
char *
parser_heif_to_png(const char *data, size_t len, const char *filename, size_t *out_len)
{
	ParserRequest req;

	memset(&req, 0, sizeof(req));
	req.flags = request_flags(false) | PARSER_HEIF_TO_PNG;
	req.len = len;
	return run_request(&req, data, NULL, filename, out_len);
}

/* Why the child said 'F' (its library's reason, printable), or that it spoke out of protocol. */
char *
parser_reason(const char *out, size_t len)
{
	char	   *reason;

	if (len < 2 || out[0] != 'F')
		return "the parser answered out of protocol";
	reason = pnstrdup(out + 1, Min(len - 1, 200));
	for (char *p = reason; *p; p++)
		if ((unsigned char) *p < 0x20 || (unsigned char) *p > 0x7e)
			*p = '?';
	return reason;
}
