/*
 * ratelimit.c: the per-model limits (max_concurrency, requests_per_minute),
 * in shared memory, keyed by database and model name, so that they hold
 * across every process that sends model requests: the job workers and
 * extract_sync's workers.
 *
 * Reserve, then claim: a process reserves a model's room under the lock
 * (requests in flight and sends in the last minute both count the
 * reservation), claims, gives back what it did not use, and gives a slot
 * back as each request ends.  A process's reservations are also counted in
 * its own memory and given back when it exits; a crash reinitialises
 * shared memory, so no count outlives the process that held it.
 *
 * A process refused room is remembered in the slot, and its latch set by
 * the next release there: a job worker or an extract_sync call waiting
 * for a slot another process held looks again at once.
 *
 * The minute is kept as 61 one-second buckets of sends: a send counts from
 * its second until 60 to 61 seconds later, never less than a minute.
 */
#include "postgres.h"

#include "ratelimit.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define RL_SLOTS 1024
#define RL_BUCKETS 61
#define RL_WAITERS 16
#define RL_TRANCHE "docextract ratelimit"

typedef struct RlSlot
{
	Oid			dboid;			/* InvalidOid: free */
	char		model[MODEL_NAME_LEN];
	int			in_flight;		/* requests reserved or in flight, every process */
	int			rpm;			/* the limit last seen, for ratelimit_next_free */
	int64		bucket_sec[RL_BUCKETS];
	int			bucket_n[RL_BUCKETS];
	/* Processes refused room since the last release: woken by the next. */
	int			nwaiters;
	int			waiters[RL_WAITERS];	/* pgprocno */
} RlSlot;

typedef struct RlShared
{
	LWLock	   *lock;
	int			high;			/* slots at and above this were never used */
	RlSlot		slots[RL_SLOTS];
} RlShared;

static RlShared *rl = NULL;

/* This process's share of each slot's in_flight, given back at exit. */
static int *held = NULL;
static bool exit_hook_set = false;

Size
ratelimit_shmem_size(void)
{
	return MAXALIGN(sizeof(RlShared));
}

void
ratelimit_shmem_request(void)
{
	RequestAddinShmemSpace(ratelimit_shmem_size());
	RequestNamedLWLockTranche(RL_TRANCHE, 1);
}

/* In the postmaster (and again after a crash), under AddinShmemInitLock. */
void
ratelimit_shmem_startup(void)
{
	bool		found;

	rl = ShmemInitStruct("docextract ratelimit", sizeof(RlShared), &found);
	if (!found)
	{
		memset(rl->slots, 0, sizeof(rl->slots));
		rl->high = 0;
		rl->lock = &(GetNamedLWLockTranche(RL_TRANCHE))->lock;
	}
}

/* Sends in the last minute (lock held). */
static int
window_count(RlSlot *s, int64 now_sec)
{
	int			n = 0;

	for (int i = 0; i < RL_BUCKETS; i++)
		if (s->bucket_sec[i] > now_sec - RL_BUCKETS)
			n += s->bucket_n[i];
	return n;
}

static void
window_add(RlSlot *s, int64 now_sec, int n)
{
	int			i = (int) (now_sec % RL_BUCKETS);

	if (s->bucket_sec[i] != now_sec)
	{
		s->bucket_sec[i] = now_sec;
		s->bucket_n[i] = 0;
	}
	s->bucket_n[i] += n;
}

/* Take back n sends that never went: from the latest seconds (lock held). */
static void
window_take_back(RlSlot *s, int64 now_sec, int n)
{
	for (int64 sec = now_sec; n > 0 && sec > now_sec - RL_BUCKETS; sec--)
	{
		int			i = (int) (sec % RL_BUCKETS);
		int			d;

		if (s->bucket_sec[i] != sec)
			continue;
		d = Min(n, s->bucket_n[i]);
		s->bucket_n[i] -= d;
		n -= d;
	}
}

/*
 * The slot of this database's model (lock held exclusively); a new one if
 * needed, reusing one that holds nothing; -1 if every slot is busy.
 */
static int
slot_for(const char *model, int64 now_sec)
{
	int			free_slot = -1;

	for (int i = 0; i < rl->high; i++)
		if (rl->slots[i].dboid == MyDatabaseId && strcmp(rl->slots[i].model, model) == 0)
			return i;
	for (int i = 0; i < RL_SLOTS && free_slot < 0; i++)
	{
		RlSlot	   *s = &rl->slots[i];

		if (s->dboid == InvalidOid || (s->in_flight == 0 && window_count(s, now_sec) == 0))
			free_slot = i;
	}
	if (free_slot < 0)
		return -1;
	memset(&rl->slots[free_slot], 0, sizeof(RlSlot));
	rl->high = Max(rl->high, free_slot + 1);
	rl->slots[free_slot].dboid = MyDatabaseId;
	strlcpy(rl->slots[free_slot].model, model, MODEL_NAME_LEN);
	return free_slot;
}

/* Remember this process as waiting for room in s (lock held). */
static void
add_waiter(RlSlot *s)
{
	for (int i = 0; i < s->nwaiters; i++)
		if (s->waiters[i] == MyProc->pgprocno)
			return;
	if (s->nwaiters < RL_WAITERS)
		s->waiters[s->nwaiters++] = MyProc->pgprocno;
}

/* Wake the processes waiting for room in s (lock held: setting a latch is quick). */
static void
wake_waiters(RlSlot *s)
{
	for (int i = 0; i < s->nwaiters; i++)
		SetLatch(&ProcGlobal->allProcs[s->waiters[i]].procLatch);
	s->nwaiters = 0;
}

/* At exit: what this process still holds goes back. */
static void
ratelimit_exit(int code, Datum arg)
{
	LWLockAcquire(rl->lock, LW_EXCLUSIVE);
	for (int i = 0; i < RL_SLOTS; i++)
		if (held[i] > 0)
		{
			rl->slots[i].in_flight = Max(rl->slots[i].in_flight - held[i], 0);
			wake_waiters(&rl->slots[i]);
		}
	LWLockRelease(rl->lock);
	memset(held, 0, sizeof(int) * RL_SLOTS);
}

static void
track_process(void)
{
	if (held == NULL)
		held = MemoryContextAllocZero(TopMemoryContext, sizeof(int) * RL_SLOTS);
	if (!exit_hook_set)
	{
		before_shmem_exit(ratelimit_exit, (Datum) 0);
		exit_hook_set = true;
	}
}

/*
 * Reserve up to want requests of model, as its max_concurrency and
 * requests_per_minute (each 0: no limit) leave room for; at least min of
 * them or none.  force: take want whatever the limits (a crash's suspect,
 * run alone).  Returns how many were reserved.
 */
int
ratelimit_reserve(const char *model, int max_concurrency, int rpm, int want, int min,
				  bool force)
{
	int64		now_sec = GetCurrentTimestamp() / USECS_PER_SEC;
	int			room = want;
	RlSlot	   *s;
	int			i;

	/* Not preloaded: no shared memory and no job worker; extract_sync alone, unlimited. */
	if (rl == NULL)
		return want;
	track_process();
	LWLockAcquire(rl->lock, LW_EXCLUSIVE);
	i = slot_for(model, now_sec);
	if (i < 0)
	{
		/* Released first: this may run outside a transaction (extract_sync's worker). */
		LWLockRelease(rl->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("docextract: more than %d models have requests in flight or sent in the last minute",
						RL_SLOTS)));
	}
	s = &rl->slots[i];
	s->rpm = rpm;
	if (!force && max_concurrency > 0)
		room = Min(room, max_concurrency - s->in_flight);
	if (!force && rpm > 0)
		room = Min(room, rpm - window_count(s, now_sec));
	if (room < Max(min, 1))
		room = 0;
	if (room == 0 && want > 0)
		add_waiter(s);			/* a partial grant looks again when its requests end */
	s->in_flight += room;
	window_add(s, now_sec, room);
	held[i] += room;
	LWLockRelease(rl->lock);
	return room;
}

/*
 * Give back n requests of model: ended ones (sent: they stay in the
 * minute's count) or reserved and never sent.
 */
void
ratelimit_release(const char *model, int n, bool sent)
{
	int64		now_sec = GetCurrentTimestamp() / USECS_PER_SEC;

	if (n <= 0 || rl == NULL || held == NULL)
		return;
	LWLockAcquire(rl->lock, LW_EXCLUSIVE);
	for (int i = 0; i < rl->high; i++)
	{
		RlSlot	   *s = &rl->slots[i];
		int			d;

		if (s->dboid != MyDatabaseId || strcmp(s->model, model) != 0)
			continue;
		d = Min(n, held[i]);
		s->in_flight = Max(s->in_flight - d, 0);
		held[i] -= d;
		if (!sent)
			window_take_back(s, now_sec, d);
		if (d > 0)
			wake_waiters(s);
		break;
	}
	LWLockRelease(rl->lock);
}

/* When the earliest full minute of this database's models frees a slot; 0 if none is full. */
TimestampTz
ratelimit_next_free(TimestampTz now)
{
	int64		now_sec = now / USECS_PER_SEC;
	TimestampTz next = 0;

	if (rl == NULL)
		return 0;
	LWLockAcquire(rl->lock, LW_SHARED);
	for (int i = 0; i < rl->high; i++)
	{
		RlSlot	   *s = &rl->slots[i];
		int64		oldest = PG_INT64_MAX;

		if (s->dboid != MyDatabaseId || s->rpm <= 0 || window_count(s, now_sec) < s->rpm)
			continue;
		for (int b = 0; b < RL_BUCKETS; b++)
			if (s->bucket_sec[b] > now_sec - RL_BUCKETS && s->bucket_n[b] > 0)
				oldest = Min(oldest, s->bucket_sec[b]);
		if (oldest != PG_INT64_MAX &&
			(next == 0 || (oldest + RL_BUCKETS) * USECS_PER_SEC < next))
			next = (oldest + RL_BUCKETS) * USECS_PER_SEC;
	}
	LWLockRelease(rl->lock);
	return next;
}

/* Requests of model reserved or in flight now, every process of this database. */
int
ratelimit_in_flight(const char *model)
{
	int			n = 0;

	if (rl == NULL)
		return 0;
	LWLockAcquire(rl->lock, LW_SHARED);
	for (int i = 0; i < rl->high; i++)
		if (rl->slots[i].dboid == MyDatabaseId && strcmp(rl->slots[i].model, model) == 0)
			n = rl->slots[i].in_flight;
	LWLockRelease(rl->lock);
	return n;
}
