/*
 * sync.c: extract_sync(), the caller's side.
 *
 * The model's work must be paid for whatever the caller's transaction does
 * afterwards, so nothing of it happens in that transaction: the document,
 * the template id and the options go through dynamic shared memory to a
 * background worker started for this call (sync_worker.c), which connects to
 * this database as the caller, stores the document and the extraction,
 * sends the requests and stores the answer (with its charge) in
 * transactions of its own.  The caller waits on its latch for the answer on
 * a shm_mq, so statement_timeout and pg_cancel_backend() end the wait at
 * once; leaving tells the worker (the segment's detach callback), which then
 * drops the request and cancels the extraction unless the model answered.
 */
#include "postgres.h"

#include "options.h"

#include "settings.h"
#include "sync.h"

#include "catalog/pg_type.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/shm_toc.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(docextract_extract_sync);

const char *const sync_setting_names[SYNC_NUM_SETTINGS] = {
	"docextract.credits", "docextract.max_active_per_role", "docextract.max_document_size"
};

/*
 * The caller stopped waiting (an error, a cancel, its exit): tell the
 * worker.  A worker still submitting may be waiting on a lock (the role's
 * credit row): cancel that, so that nothing is stored for a call that ended.
 */
static void
caller_detached(dsm_segment *seg, Datum arg)
{
	SyncTask   *task = (SyncTask *) DatumGetPointer(arg);
	shm_mq	   *mq = shm_toc_lookup(shm_toc_attach(SYNC_TOC_MAGIC, dsm_segment_address(seg)),
									SYNC_KEY_QUEUE, false);
	PGPROC	   *worker = shm_mq_get_sender(mq);
	pid_t		submitting = (pid_t) pg_atomic_read_u32(&task->worker_pid);

	pg_atomic_write_u32(&task->caller_gone, 1);
	if (submitting != 0)
		(void) kill(submitting, SIGINT);
	if (worker)
		SetLatch(&worker->procLatch);
}

static void
fill_task(SyncTask *task, Datum template_id)
{
	memset(task, 0, sizeof(*task));
	task->dboid = MyDatabaseId;
	task->login_role = GetAuthenticatedUserId();
	GetUserIdAndSecContext(&task->role, &task->sec_context);
	/* NULL (0): classify. */
	task->classify = template_id == (Datum) 0;
	if (template_id)
		memcpy(&task->template_id, DatumGetUUIDP(template_id), sizeof(pg_uuid_t));
	for (int i = 0; i < SYNC_NUM_SETTINGS; i++)
		strlcpy(task->settings[i], GetConfigOption(sync_setting_names[i], false, false),
				SYNC_SETTING_LEN);
	pg_atomic_init_u32(&task->caller_gone, 0);
	pg_atomic_init_u32(&task->worker_pid, 0);
}

/* The segment holding the task, the bytes, the options and the reply queue. */
static dsm_segment *
make_segment(bytea *content, Datum template_id, Jsonb *options, shm_mq **mq)
{
	shm_toc_estimator e;
	dsm_segment *seg;
	shm_toc    *toc;
	void	   *p;

	shm_toc_initialize_estimator(&e);
	shm_toc_estimate_chunk(&e, sizeof(SyncTask));
	shm_toc_estimate_chunk(&e, VARSIZE(content));
	shm_toc_estimate_chunk(&e, VARSIZE(options));
	shm_toc_estimate_chunk(&e, SYNC_QUEUE_SIZE);
	shm_toc_estimate_keys(&e, 4);
	seg = dsm_create(shm_toc_estimate(&e), 0);
	toc = shm_toc_create(SYNC_TOC_MAGIC, dsm_segment_address(seg), shm_toc_estimate(&e));

	p = shm_toc_allocate(toc, sizeof(SyncTask));
	fill_task(p, template_id);
	shm_toc_insert(toc, SYNC_KEY_TASK, p);
	on_dsm_detach(seg, caller_detached, PointerGetDatum(p));
	p = shm_toc_allocate(toc, VARSIZE(content));
	memcpy(p, content, VARSIZE(content));
	shm_toc_insert(toc, SYNC_KEY_CONTENT, p);
	p = shm_toc_allocate(toc, VARSIZE(options));
	memcpy(p, options, VARSIZE(options));
	shm_toc_insert(toc, SYNC_KEY_OPTIONS, p);
	*mq = shm_mq_create(shm_toc_allocate(toc, SYNC_QUEUE_SIZE), SYNC_QUEUE_SIZE);
	shm_toc_insert(toc, SYNC_KEY_QUEUE, *mq);
	shm_mq_set_receiver(*mq, MyProc);
	return seg;
}

static BackgroundWorkerHandle *
start_worker(dsm_segment *seg)
{
	BackgroundWorker w;
	BackgroundWorkerHandle *handle;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_ConsistentState;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "docextract");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "docextract_sync_worker_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "docextract sync worker for PID %d", MyProcPid);
	snprintf(w.bgw_type, BGW_MAXLEN, "docextract sync worker");
	w.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
	w.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&w, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("extract_sync could not start its background worker: all background worker slots are in use"),
				 errhint("Raise max_worker_processes, or use extract_document().")));
	return handle;
}

/*
 * Is the worker waiting for a lock this transaction holds (the caller's
 * credit row, locked by an extract_document earlier in it)?  Then it would
 * wait for us while we wait for it: say so instead.
 */
static void
check_not_blocking(BackgroundWorkerHandle *handle)
{
	pid_t		pid;
	ArrayType  *blockers;
	Datum	   *pids;
	int			n;

	if (GetBackgroundWorkerPid(handle, &pid) != BGWH_STARTED)
		return;
	blockers = DatumGetArrayTypeP(DirectFunctionCall1(pg_blocking_pids, Int32GetDatum(pid)));
	deconstruct_array(blockers, INT4OID, sizeof(int32), true, TYPALIGN_INT, &pids, NULL, &n);
	for (int i = 0; i < n; i++)
		if (DatumGetInt32(pids[i]) == MyProcPid)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
					 errmsg("extract_sync would wait for a lock held by its own transaction"),
					 errdetail("extract_sync stores its extraction in a transaction of its own, and this transaction holds a lock it needs (an extract_document or grant_credits earlier in it locks the role's credit account)."),
					 errhint("Commit first, or call extract_sync in a transaction of its own.")));
}

/* An error or notice the worker sent: raise or emit it here, as it was. */
static void
relay_message(char type, const char *data, Size len)
{
	StringInfoData msg;
	ErrorData	edata;

	if (type != 'E' && type != 'N')
		elog(ERROR, "unexpected message type 0x%02x from the extract_sync worker", type);
	initStringInfo(&msg);
	appendBinaryStringInfo(&msg, data, len);
	pq_parse_errornotice(&msg, &edata);
	edata.elevel = type == 'E' ? ERROR : Min(edata.elevel, WARNING);
	ThrowErrorData(&edata);
}

/* Wait, interruptibly, for get_result()'s text; raise what the worker raised. */
static char *
await_result(shm_mq_handle *mqh, BackgroundWorkerHandle *handle)
{
	for (;;)
	{
		Size		len;
		void	   *data;
		shm_mq_result r = shm_mq_receive(mqh, &len, &data, true);

		if (r == SHM_MQ_SUCCESS && len > 0 && ((char *) data)[0] == SYNC_MSG_RESULT)
			return pnstrdup((char *) data + 1, len - 1);
		if (r == SHM_MQ_SUCCESS)
		{
			relay_message(len > 0 ? ((char *) data)[0] : 0, (char *) data + 1, len > 0 ? len - 1 : 0);
			continue;
		}
		if (r == SHM_MQ_DETACHED)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("the extract_sync worker stopped without an answer"),
					 errhint("The server log says why.")));
		if (WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, DeadlockTimeout,
					  PG_WAIT_EXTENSION) & WL_TIMEOUT)
			check_not_blocking(handle);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

Datum
docextract_extract_sync(PG_FUNCTION_ARGS)
{
	bytea	   *content;
	Jsonb	   *options;
	dsm_segment *seg;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	BackgroundWorkerHandle *handle;
	char	   *result;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("extract_sync needs the document's content")));
	PreventCommandIfReadOnly("extract_sync()");
	content = PG_GETARG_BYTEA_P(0);
	if ((int64) VARSIZE(content) - VARHDRSZ > (int64) docextract_max_document_size * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"document\" is %zu bytes, more than docextract.max_document_size (%lld bytes)",
						(size_t) (VARSIZE(content) - VARHDRSZ),
						(long long) docextract_max_document_size * 1024)));
	options = PG_ARGISNULL(2) ? DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")))
		: PG_GETARG_JSONB_P(2);

	/* A split's sub-documents are extracted by the job workers, later. */
	if (DatumGetBool(DirectFunctionCall2(jsonb_exists, PointerGetDatum(options),
										 CStringGetTextDatum(EXTRACT_OPT_SPLIT))))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("option \"split\" is not available in extract_sync"),
				 errhint("Use docextract.add_document() and docextract.extract_document() with \"split\".")));
	seg = make_segment(content, PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1), options, &mq);
	mqh = shm_mq_attach(mq, seg, NULL);
	handle = start_worker(seg);
	shm_mq_set_handle(mqh, handle);
	result = await_result(mqh, handle);
	dsm_detach(seg);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(result)));
}
