/*
 * docextract.h: declarations shared by the extension's source files.
 *
 * Everything that crosses a file boundary is declared here, grouped by the
 * file that defines it.
 */
#ifndef DOCEXTRACT_H
#define DOCEXTRACT_H

#include "postgres.h"

#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/*
 * json-c names its type json_object, PostgreSQL declares a SQL function of
 * that name in fmgrprotos.h.  Include PostgreSQL's declaration under another
 * name first (so this header must come before any that pulls it in).
 */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#undef json_object
#include <json-c/json.h>

/* A uuid Datum as text, for messages. */
static inline char *
uuid_text(Datum id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, id));
}

/* docextract.c: settings, shared memory, waking the worker ----------------- */

extern char *docextract_database;
extern int	docextract_max_document_size;	/* kB */
extern int	docextract_max_inflight;
extern int	docextract_poll_interval_ms;
extern int	docextract_default_timeout_ms;

typedef enum CreditsMode
{
	CREDITS_ENFORCE,
	CREDITS_TRACK
} CreditsMode;

extern int	docextract_credits_mode;
extern int	docextract_max_active_per_role;
extern int	docextract_webhook_timeout_ms;
extern int	docextract_webhook_max_attempts;
extern int	docextract_webhook_disable_after;
extern int	docextract_webhook_backoff_ms;
extern int	docextract_retention_s;
extern bool docextract_submitting;

/* What a commit tells the worker, besides "look at the queue". */
typedef enum WorkerSignal
{
	SIGNAL_CANCEL = 0,			/* something was cancelled: check in-flight jobs */
	SIGNAL_DELIVERIES,			/* webhook deliveries were queued */
	NUM_WORKER_SIGNALS
} WorkerSignal;

typedef struct DocextractShared
{
	slock_t		mutex;
} DocextractShared;

extern DocextractShared *docextract_shared;

extern void register_static_worker(const char *function, const char *name);

/* privileged.c: acting as the extension owner on behalf of a caller -------- */

typedef struct Privileged
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} Privileged;

extern Oid	docextract_extension_owner(void);
extern void privileged_begin(Privileged *p);
extern void privileged_end(Privileged *p);
extern void act_as_begin(Privileged *p, Oid role);
extern void act_as_end(Privileged *p);
extern bool caller_can_act_for(Oid caller, Oid owner);
extern void check_visible(const char *what, const char *sql, Datum id, Oid caller,
						  bool null_owner_ok);

/* version.c: the schema the library runs against --------------------------- */

extern bool docextract_extension_row(Oid *owner, char **version);
extern char *docextract_installed_version(void);
extern bool docextract_schema_ready(void);

/* pdf.c: a PDF's pages and text, read by the parser helper ------------------ */

extern int	pdf_inspect(const char *data, size_t len, const char *filename, char **text);
extern char *pdf_text(const char *data, size_t len);

/* documents.c ---------------------------------------------------------------- */

extern const char *detect_content_type(const unsigned char *data, size_t len);
extern void check_document_size(const char *filename, size_t len);

/* templates.c: the parsed, validated form of a template --------------------- */

typedef enum FormatType
{
	FORMAT_TEXT,
	FORMAT_NUMBER,
	FORMAT_DATE,
	FORMAT_BOOLEAN,
	FORMAT_MULTIPLE_CHOICE
} FormatType;

typedef struct TemplateField
{
	char	   *key;
	char	   *name;
	char	   *prompt;			/* may be NULL */
	FormatType	format;
	int			noptions;
	char	  **options;		/* multiple_choice choices */
	int			position;
	bool		editable;		/* is_editable: may approve() correct it? */
	char	   *qbo_mapping;	/* QuickBooks column, for quickbooks_csv; may be NULL */
	int			char_limit;		/* text values longer are cut (charlimit.c); 0: none */
} TemplateField;

typedef struct Template
{
	int			ngeneral;
	TemplateField *general;
	bool		has_table;
	int			ntable;
	TemplateField *table;
	char	   *global_instructions;
	char	   *general_prompt;
	char	   *table_prompt;
} Template;

extern char *template_parse(const char *schema_json, const char *prompt_json,
							const char *rules_json, Template *out);
extern const char *format_type_name(FormatType f);

/* prompt.c: what we ask the model -------------------------------------------- */

typedef enum SchemaDialect
{
	SCHEMA_JSON,				/* JSON Schema: OpenAI (strict), Anthropic tools */
	SCHEMA_OPENAPI				/* Gemini's OpenAPI subset */
} SchemaDialect;

extern json_object *template_schema(const Template *t, SchemaDialect dialect, bool attributions);
extern json_object *template_json_schema(const Template *t, bool attributions);
extern void check_template_usable(Datum template_id);
extern char *template_system_prompt(const Template *t, const char *additional, bool attributions);

/* coerce.c: typing the model's answer --------------------------------------- */

extern json_object *coerce_value(json_object *v, FormatType f,
								 int noptions, char **options);
extern json_object *coerce_output(json_object *output, const Template *t);
extern json_object *coerce_attributions(json_object *output, const Template *t);
extern json_object *coerce_table_attributions(json_object *output, const Template *t);
extern json_object *json_number_from_double(double d);

/* validation.c: a template's rules against typed data ------------------------ */

extern json_object *validation_run(const char *rules_json, json_object *data, bool *all_passed);

/* charlimit.c: a field's char_limit applied to typed data -------------------- */

extern int	charlimit_apply(json_object *data, const Template *t, json_object *validation);

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

/* provider_openai.c and friends: wire formats -------------------------------- */

typedef struct ModelConfig
{
	char	   *name;
	char	   *provider;
	char	   *base_url;
	char	   *model;
	char	   *api_key;		/* NULL if none */
	long		timeout_ms;
	bool		send_file;		/* options.document_mode = 'file' */
	bool		has_temperature;
	double		temperature;
	int			max_retries;
	int			retry_backoff_ms;
	double		input_price;	/* per million tokens, 0 if not priced */
	double		output_price;
	bool		priced;
} ModelConfig;

typedef struct DocumentInput
{
	char	   *filename;
	const char *content_type;
	const char *data;
	size_t		len;
	int			page_count;
	const char *text;			/* a PDF's stored text, or NULL */
	int			nscans;			/* pages without text, sent as images (media.c) */
	struct PageImage *scans;
} DocumentInput;

typedef struct PageImage
{
	int			page;			/* of the pages sent, from 1 */
	const char *png;
	size_t		len;
} PageImage;

typedef struct ExtractOptions
{
	bool		has_temperature;
	double		temperature;
	bool		has_seed;
	int64		seed;
	bool		has_max_retries;
	int			max_retries;
	bool		per_key_attribution;	/* evidence for every value is asked */
	bool		citations;		/* ... and located on its page (citations.c) */
	bool		auto_approve;
	char	   *additional_instructions;
} ExtractOptions;

typedef struct ProviderReply
{
	json_object *output;		/* the structured answer, owned by caller */
	int64		input_tokens;
	int64		output_tokens;
} ProviderReply;

typedef struct Provider
{
	const char *name;
	/* Fill url, headers and body of a request. */
	void		(*build) (const ModelConfig *m, const Template *t, const DocumentInput *d,
						  const ExtractOptions *o, char **url, struct curl_slist **headers,
						  char **body);
	/* Parse a 2xx body; NULL on success, else a message. */
	char	   *(*parse) (const char *body, size_t len, ProviderReply *reply);
	/* The provider's own error text from a non-2xx body, or NULL. */
	char	   *(*error_text) (const char *body, size_t len);
} Provider;

extern const Provider openai_provider;
extern const Provider gemini_provider;
extern const Provider anthropic_provider;
extern const Provider *provider_lookup(const char *name);
extern char *provider_error_message(const char *body, size_t len);
extern char *document_intro(const DocumentInput *d);
extern struct curl_slist *append_secret_header(struct curl_slist *headers, const char *name,
											   const char *secret);
extern char *request_body(json_object *req);
extern json_object *answer_object(const char *text, char **err);
extern char *redact_secret(const char *text, const char *secret);
extern char *base64_encode(const char *data, size_t len);

/* ratelimit.c: per-model limits shared by every process, in shared memory - */

#define MODEL_NAME_LEN (NAMEDATALEN * 2)	/* as ClaimedJob.model */

extern Size ratelimit_shmem_size(void);
extern void ratelimit_shmem_request(void);
extern void ratelimit_shmem_startup(void);
extern int	ratelimit_reserve(const char *model, int max_concurrency, int rpm, int want,
							  int min, bool force);
extern void ratelimit_release(const char *model, int n, bool sent);
extern TimestampTz ratelimit_next_free(TimestampTz now);

/* job.c: one extraction from claimed row to stored result -------------------- */

typedef struct Job Job;

extern Job *job_create(pg_uuid_t *id, int attempts, int parts);
extern void job_prepare(Job *job);
extern bool job_part_done(Job *job, HttpRequest *req);
extern void job_record_progress(Job *job);
extern void job_finish(Job *job);
extern void job_release(Job *job);
extern void job_hold_slots(Job *job, const char *model, int n);
extern char *job_id_text(Job *job);
extern pg_uuid_t *job_id(Job *job);
extern bool job_will_retry(Job *job);

/* SQL-callable functions that other C code calls directly. */
extern Datum docextract_add_document(PG_FUNCTION_ARGS);
extern Datum docextract_extract_document(PG_FUNCTION_ARGS);

/* webhook.c: the outbox's deliveries, sent from the worker ------------------- */

extern int	webhook_claim_and_start(int room, long *next_due_ms);
extern void webhook_done(HttpRequest *req);
extern void webhook_release(HttpRequest *req);
extern void webhook_reset_leases(void);
extern char *webhook_signature(const char *secret, const char *timestamp, const char *body);

/* retention.c: the worker's cleanup of old rows ------------------------------ */

extern bool retention_cleanup(void);

/* subxact.c ----------------------------------------------------------------- */

typedef void (*StepFn) (void *arg);

extern char *in_subtransaction(StepFn fn, void *arg);

/* queue.c: status transitions shared by the SQL functions and the worker ------ */

typedef struct ClaimedJob
{
	pg_uuid_t	id;
	int			attempts;
	int			parts;			/* requests it sends at once */
	char		model[NAMEDATALEN * 2];
} ClaimedJob;

extern int	queue_claim(ClaimedJob *out, int max, long *next_due_ms);
extern const char *const queue_claim_sql;
/*
 * Rows a previous worker left processing, less those a live job worker of
 * this database (a sibling) or an extract_sync call's own worker is running
 * (they outlive a restart of one worker).  A split parent waiting for its
 * sub-documents (split_count set) is held by no worker: not an orphan.
 */
/* A worker has the extraction in hand: classifying (classify.c) or processing. */
#define IN_HAND_STATUSES "('classifying', 'processing')"
#define ORPHANED_PROCESSING \
	"status IN " IN_HAND_STATUSES " AND split_count IS NULL AND (worker_pid IS NULL OR worker_pid NOT IN" \
	" (SELECT a.pid FROM pg_catalog.pg_stat_activity a" \
	"   WHERE a.backend_type IN ('docextract sync worker', 'docextract worker')" \
	"     AND a.datname = pg_catalog.current_database()" \
	"     AND a.pid <> pg_catalog.pg_backend_pid()))"

extern int	queue_requeue_orphans(void);
extern void queue_fail(pg_uuid_t *id, const char *message);
extern void queue_retry(pg_uuid_t *id, const char *message, long delay_ms);
extern void queue_progress(pg_uuid_t *id, int percentage);
extern void queue_find_ended(pg_uuid_t **ids, int n, bool *ended);
extern void queue_requeue_uncommitted(pg_uuid_t *ids, int n, const char *error);

/* egress.c: where webhooks may connect; the worker's separate budgets ------- */

extern int	docextract_max_webhook_inflight;	/* docextract.c */
extern double docextract_notify_queue_limit;	/* docextract.c */

struct sockaddr;
extern char *docextract_webhook_allowed_destinations;
extern void egress_define_settings(void);
extern bool egress_allowed_sockaddr(const struct sockaddr *sa, bool for_superuser, char *text);
extern void egress_check_url(const char *url, bool for_superuser);

/* parser.c: untrusted bytes parsed in a helper process ---------------------- */

typedef enum ParserInject
{
	PARSER_INJECT_NONE,
	PARSER_INJECT_CRASH,		/* the parser's child raises SIGSEGV */
	PARSER_INJECT_HANG			/* the parser's child never answers */
} ParserInject;

extern int	docextract_parser_timeout_ms;
extern int	docextract_parser_memory_mb;
extern int	docextract_parser_fault;

extern void parser_define_settings(void);
extern char *parser_run(const char *data, size_t len, bool want_text, const char *filename,
						size_t *out_len);
extern char *parser_pages_request(uint32 what, const char *data, size_t len, const int32 *pages,
								  int npages, int dpi, const char *filename, size_t *out_len);
extern char *parser_reason(const char *out, size_t len);
extern char *parser_heif_to_png(const char *data, size_t len, const char *filename, size_t *out_len);
extern int	docextract_render_dpi;

/* answer.c: reading untrusted answers (model endpoints, webhook receivers) -- */

extern int	docextract_max_response_size;	/* kB */
extern json_object *answer_parse(const char *data, size_t len, char **err);
extern char *answer_failure(const char *what, const char *why);
extern json_object *json_member(json_object *obj, const char *key, json_type t);
extern const char *json_member_string(json_object *obj, const char *key);
extern int64 json_member_count(json_object *obj, const char *key);
extern char *answer_excerpt(const char *data, ssize_t len, size_t max);

/* How much of an answer's text an error message quotes, in bytes. */
#define ANSWER_TEXT_MAX 300

/* crashguard.c: a job that keeps stopping the worker is failed, not retried - */

extern int	docextract_max_crashes;
extern char *docextract_debug_crash_on_document;
extern bool docextract_is_job_worker;	/* worker.c: this process is the job worker */
extern void crashguard_sigterm(SIGNAL_ARGS);
extern bool crashguard_last_stop_was_crash(void);
extern void crashguard_worker_exit(void);
extern int	crashguard_requeue_orphans(bool after_crash, int *failed);
extern bool crashguard_single_mode(void);
extern int	crashguard_claim_suspect(ClaimedJob *out);
extern void crashguard_fault_point(const char *filename);

/* sync.c, sync_worker.c: extract_sync handed to a worker of its own -------- */

/* Retries an extraction may ask for, whatever its options or its model's say. */
#define MAX_RETRIES_CAP 10

/*
 * extract_sync's dynamic shared memory: a shm_toc holding the task, the
 * document's bytes (a bytea), the options (a jsonb) and a queue on which the
 * sync worker sends its errors and notices (as the frontend protocol does)
 * and finally SYNC_MSG_RESULT with get_result()'s text.
 */
#define SYNC_TOC_MAGIC 0x64787331
#define SYNC_KEY_TASK 1
#define SYNC_KEY_CONTENT 2
#define SYNC_KEY_OPTIONS 3
#define SYNC_KEY_QUEUE 4
#define SYNC_QUEUE_SIZE 65536
#define SYNC_MSG_RESULT 'D'

/* The caller's settings the worker takes over (all superuser-only). */
#define SYNC_NUM_SETTINGS 3
#define SYNC_SETTING_LEN 64
extern const char *const sync_setting_names[SYNC_NUM_SETTINGS];

typedef struct SyncTask
{
	Oid			dboid;
	Oid			login_role;		/* the caller's authenticated role: the worker logs in as it */
	Oid			role;			/* the caller's current user: the worker acts as it */
	int			sec_context;
	pg_uuid_t	template_id;
	char		settings[SYNC_NUM_SETTINGS][SYNC_SETTING_LEN];
	pg_atomic_uint32 caller_gone;	/* set when the caller stops waiting */
	pg_atomic_uint32 worker_pid;	/* the worker's, while it submits (then 0) */
	bool		classify;		/* template_id NULL: classify (classify.c) */
} SyncTask;

/* nowait.c: the job worker never waits on a session's lock ---------------- */

extern bool docextract_never_wait;
extern bool queue_lock_nowait(pg_uuid_t *id);
extern bool job_busy(Job *job);	/* job.c: its status change waits for a lock */

/* writeback_run.c, writeback_worker.c: write-backs of the trigger form ----- */

/* A write-back that met a lock is tried again this much later. */
#define WRITEBACK_RETRY_MS 1000
/*
 * A write-back's user code that outlives docextract.writeback_timeout by
 * this much (it caught the cancel) stops the write-back worker: a FATAL no
 * trigger can catch.  Its row was leased first, so it waits its turn again.
 */
#define WRITEBACK_GRACE_MS 1000
extern int	writeback_deadline_timeout;	/* a TimeoutId, -1 outside the worker */
extern bool writeback_lease(Datum id);

extern int	docextract_writeback_timeout_ms;
extern int	docextract_writeback_lock_timeout_ms;

extern bool writeback_run(Datum id, bool bounded);
extern void writeback_define_settings(void);

/* launcher.c, workerset.c, dbhooks.c: workers for every database -------- */

/*
 * The launcher (one static worker) starts, for each database where the
 * extension exists, docextract.workers job workers and one write-back
 * worker, and stops them when the extension or the database goes.  Each
 * served database has a DbWorkers in shared memory: its workers' latches,
 * what committing backends tell them, and their crash state.
 */
#define MAX_JOB_WORKERS 16

typedef struct JobWorkerSlot
{
	pid_t		pid;			/* 0 while none runs */
	Latch	   *latch;
	bool		wants_work;		/* asleep with room for more jobs */
	int			inflight;		/* jobs in flight (crashguard: suspects run alone) */
	bool		stopped_uncleanly;	/* its last worker did not stop on request */
} JobWorkerSlot;

typedef struct DbWorkers
{
	Oid			dboid;			/* InvalidOid: a free slot */
	slock_t		mutex;
	bool		present;		/* a worker found the extension here */
	bool		absent;			/* a worker found no extension here ... */
	uint64		absent_at;		/* ... at this count of extension events */
	pg_atomic_uint32 next_wake;	/* round robin among idle job workers */
	/* Bumped at each commit that signalled WorkerSignal i. */
	pg_atomic_uint64 generation[NUM_WORKER_SIGNALS];
	JobWorkerSlot job[MAX_JOB_WORKERS];
	/* The write-back worker (writeback_worker.c). */
	pid_t		writeback_pid;
	Latch	   *writeback_latch;
	/* The write-back whose user code runs now, and whether it overran. */
	volatile bool writeback_running_set;
	pg_uuid_t	writeback_running;
	/* Orphans of a crash run one at a time across the workers (crashguard.c). */
	bool		suspects_waiting;
	pid_t		suspect_holder;
} DbWorkers;

/* The roles of a per-database worker (bgw_extra). */
typedef enum DbWorkerRole
{
	ROLE_JOB,
	ROLE_WRITEBACK
} DbWorkerRole;

/* What the launcher hands a per-database worker (bgw_extra). */
typedef struct DbWorkerArgs
{
	Oid			dboid;
	int			index;			/* a job worker's, in its set */
	char		datname[NAMEDATALEN];
} DbWorkerArgs;

extern int	docextract_workers;
extern char *docextract_databases;
extern char *docextract_database;	/* deprecated alias of docextract.databases */

/* Set in a per-database worker: its database's set and its index in it. */
extern DbWorkers *MyDbWorkers;
extern int	MyJobWorkerIndex;

extern Size launcher_shmem_size(void);
extern void launcher_shmem_init(bool crash_restart);
extern void launcher_register(void);
extern void launcher_define_settings(void);
extern int	launcher_job_workers(void);
extern bool launcher_database_listed(const char *datname);
extern void launcher_notify_extension(Oid dboid, bool created);
extern void launcher_notify_databases(void);
extern bool launcher_step_aside(Oid dboid);
extern void launcher_step_aside_end(void);
extern bool launcher_has_shmem(void);
extern DbWorkers *launcher_set_at(int index);
extern void launcher_wake(void);
extern uint64 launcher_extension_events(void);
extern uint64 launcher_extension_events_seen;	/* a worker's, before it looked */

extern DbWorkers *workerset_find(Oid dboid);
extern const char *workerset_connect(Datum main_arg, DbWorkerRole role);
extern void workerset_report_extension(bool present);
extern void workerset_idle(bool wants_work, int inflight);
extern void workerset_wake_sibling(void);
extern void workerset_wake_all(void);
extern void docextract_wake_worker_at_commit(void);
extern void docextract_signal_at_commit(WorkerSignal signal);
extern uint64 docextract_signal_generation(WorkerSignal signal);
extern void writeback_wake_at_commit(void);

extern void dbhooks_install(void);
extern void docextract_warn_unserved(void);

/* pages.c: options.pages --------------------------------------------------- */

extern int32 *pages_parse(const char *spec, int page_count, int *n);
extern void document_select_pages(DocumentInput *doc, const int32 *pages, int n);

/* media.c: the document as the provider can take it ------------------------ */

extern void document_prepare_media(DocumentInput *doc, const char *provider, bool send_file);

/* citations.c: where on the page each value was found ---------------------- */

extern json_object *citations_build(json_object *answer, json_object *data, const Template *t,
									const pg_uuid_t *extraction, Oid owner);

/* inflight.c: the worker's own limits: requests, descriptors, memory ------- */

extern int	docextract_max_inflight_memory;	/* kB */
extern void inflight_define_settings(void);
extern int64 inflight_memory_budget(void);
extern Size inflight_shmem_size(void);
extern void inflight_shmem_init(void);
extern void inflight_worker_exit(void);
extern int	inflight_claim_room(int jobs, int all);
extern void inflight_claimed(int requests, int room);
extern int	inflight_admit(ClaimedJob *jobs, int n, int max);
extern bool inflight_memory_freed(void);
extern int	inflight_waiting_jobs(void);

/* steplock.c: the workers step aside for DDL on the extension's tables ----- */

extern bool steplock_begin(void);
extern bool steplock_absent(void);
extern long steplock_retry_ms(void);
extern void steplock_wait(void);

/* transient.c: errors that retry a job's step rather than fail the job ----- */

extern bool error_is_transient(int sqlerrcode);
extern void step_note_error(int sqlerrcode);
extern const char *step_note_aside(void);
extern bool step_transient(void);
extern bool step_stepped_aside(void);
extern bool transient_retry(pg_uuid_t *id, const char *err);
extern void transient_requeue(pg_uuid_t *id, const char *message);

/* trigger_rows.c, documents.c, pdf.c: per-row errors of the trigger form -- */

/* docextract.trigger_errors */
typedef enum
{
	TRIGGER_ERRORS_RECORD,
	TRIGGER_ERRORS_RAISE
} TriggerErrorsMode;
extern int	docextract_trigger_errors;
extern void trigger_rows_define_settings(void);

extern char *pdf_problem(const char *data, size_t len, const char *filename, char **text,
						 int *pages);
extern char *document_problem(const char *filename, const char *data, size_t len,
							  const char **type, int *pages, char **text);
extern Datum document_store(const char *filename, const char *type, bytea *content,
							int pages, const char *text);
extern Datum document_store_rejected(const char *filename, const char *type, bytea *content,
									 const char *rejection);

/* Where a trigger-form row's status and result go back to. */
typedef struct RowTarget
{
	Oid			table;
	Datum		key;			/* text[] of the primary key, or 0 */
	const char *result_col;		/* may be NULL */
	const char *status_col;		/* may be NULL */
} RowTarget;

extern char *trigger_row_template_problem(const char *arg, Datum *template_id);
extern char *trigger_row_refusal(int pages, const char **status);
extern Datum trigger_row_record(Datum document, Datum template_id, const char *status,
								const char *reason, const RowTarget *target);

/* stats.c: worker_stats' counters, folded by the worker ------------------ */

extern int	stats_fold(void);

/* classify_candidates.c: the templates a role may classify among --------- */

/* At most this many candidates are offered (own first, then system ones). */
#define CLASSIFY_MAX_CANDIDATES 50
extern char *classify_candidates(Oid role, int *n, char **prompt);

/* classify.c: template_id NULL, the template chosen by the model ---------- */

typedef struct ClassifyCandidates
{
	int			n;
	char	  **ids;			/* uuid texts */
	char	  **names;
	char	  **labels;			/* "<n>. <name>", what the model answers */
} ClassifyCandidates;

typedef struct ClassifyChoice
{
	int			index;			/* into the candidates; -1: none fits */
	bool		has_confidence;
	double		confidence;
	char	   *why;			/* why none fits */
} ClassifyChoice;

extern double docextract_classify_min_confidence;
extern void classify_define_settings(void);
extern void classify_parse_candidates(const char *json, ClassifyCandidates *c);
extern void classify_template(const ClassifyCandidates *c, const char *prompt, Template *t);
extern void classify_read_answer(json_object *answer, const ClassifyCandidates *c,
								 ClassifyChoice *out);
extern char *classify_failure_message(const ClassifyCandidates *c, const char *why);
extern bool classify_record_choice(pg_uuid_t *id, const ClassifyCandidates *c,
								   const ClassifyChoice *ch, int64 in_tokens, int64 out_tokens);
extern void classify_await_review(pg_uuid_t *id, const ClassifyCandidates *c,
								  const ClassifyChoice *ch, int64 in_tokens, int64 out_tokens);
extern bool classify_pick(Datum id, Oid caller, Datum corrections);
extern bool classify_trigger_arg(const char *arg);
extern Datum classify_or_extract(Datum document, Datum template_id, Datum options);
extern bool job_continues(Job *job);	/* job.c: a classified job sent its extraction */

/* split.c, split_ranges.c: options.split, a file of several documents --- */

/* Entries of a split answer read at most; sub-documents made at most. */
#define SPLIT_MAX_ENTRIES 1000
#define SPLIT_MAX_DOCUMENTS 100

typedef struct SplitRange
{
	int			page_start;		/* 1-based, inclusive */
	int			page_end;
	char	   *template_name;	/* the model's choice, or NULL */
} SplitRange;

extern SplitRange *split_ranges_repair(json_object *answer, int page_count, int *n);
extern bool split_requested(const char *options);
extern void split_check_submit(Datum document, bool with_pages);
extern void split_request_template(Template *out, pg_uuid_t *id, const ClassifyCandidates *c,
								   Oid owner);
extern void split_store(pg_uuid_t *id, json_object *answer, const ClassifyCandidates *c);
extern int	classify_candidate_index(const ClassifyCandidates *c, const char *s);	/* classify.c */

#endif							/* DOCEXTRACT_H */
