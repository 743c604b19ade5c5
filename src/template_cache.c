/*
 * template_cache.c: a process's parsed templates, by row version.
 *
 * The worker reads a job's template with the job (one query) and used to
 * parse its JSON for every job.  A parse is kept here instead, keyed by the
 * row's id and xmin: a template is never changed once stored (a new
 * version is a new row), and if someone UPDATEs a row in place anyway, the
 * new tuple has a new xmin, so the old parse is never served for it.  The
 * key does not depend on the query's snapshot: the same row version gives
 * the same parse whoever reads it.  A templates table other than the one the
 * cache holds parses of (DROP and CREATE EXTENSION) empties the cache.
 *
 * Memory: a context of the cache's own under TopMemoryContext, one child per
 * parse.  At most TEMPLATE_CACHE_ENTRIES parses and TEMPLATE_CACHE_BYTES in
 * all, the least recently used evicted first; a parse bigger than
 * TEMPLATE_CACHE_ENTRY_BYTES is not kept (it lives in the caller's memory,
 * as before there was a cache).  A caller holds what it got until its
 * holder context goes: an entry evicted meanwhile is freed then.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "template.h"
#include "util.h"

#include "executor/spi.h"
#include "lib/ilist.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#define TEMPLATE_CACHE_ENTRIES 256
#define TEMPLATE_CACHE_BYTES (8 * 1024 * 1024)
#define TEMPLATE_CACHE_ENTRY_BYTES (512 * 1024)

typedef struct CacheKey
{
	pg_uuid_t	id;
	TransactionId xmin;
	bool		whole;
} CacheKey;

typedef struct CacheEntry
{
	ParsedTemplate parsed;		/* first: what callers get points here */
	CacheKey	key;
	MemoryContext cxt;			/* the entry and its parse */
	Size		bytes;
	int			pins;			/* holders not gone yet */
	bool		kept;			/* in the table; false: freed at its last unpin */
	dlist_node	lru;			/* most recently used first */
} CacheEntry;

typedef struct CacheSlot
{
	CacheKey	key;			/* the hash key, first */
	CacheEntry *entry;			/* not in the slot: a slot is reused once removed */
} CacheSlot;

static MemoryContext cache_cxt = NULL;
static HTAB *slots = NULL;
static dlist_head lru = DLIST_STATIC_INIT(lru);
static int	nkept = 0;
static Size bytes_kept = 0;
static Oid	cache_table = InvalidOid;	/* the templates table the parses are of */

static void
cache_init(void)
{
	HASHCTL		ctl;

	cache_cxt = AllocSetContextCreate(TopMemoryContext, "docextract template cache",
									  ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(CacheKey);
	ctl.entrysize = sizeof(CacheSlot);
	ctl.hcxt = cache_cxt;
	slots = hash_create("docextract templates", TEMPLATE_CACHE_ENTRIES, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* The columns of TEMPLATE_ROW_COLUMNS, from first_col on, into *row. */
void
template_row_read(HeapTuple tup, TupleDesc desc, int first_col, bool whole, TemplateRow *row)
{
	Datum	   *jsonb[3] = {&row->schema, &row->prompts, &row->rules};
	bool		isnull;

	memset(row, 0, sizeof(*row));
	row->id = *DatumGetUUIDP(SPI_getbinval(tup, desc, first_col, &isnull));
	row->xmin = DatumGetTransactionId(SPI_getbinval(tup, desc, first_col + 1, &isnull));
	row->table = DatumGetObjectId(SPI_getbinval(tup, desc, first_col + 2, &isnull));
	for (int i = 0; i < 3; i++)
	{
		*jsonb[i] = SPI_getbinval(tup, desc, first_col + 3 + i, &isnull);
		if (isnull)
			*jsonb[i] = (Datum) 0;
	}
	row->whole = whole;
}

static void
unpin(void *arg)
{
	CacheEntry *e = arg;

	if (--e->pins == 0 && !e->kept)
		MemoryContextDelete(e->cxt);
}

/* e stays until holder is reset or deleted. */
static void
pin(CacheEntry *e, MemoryContext holder)
{
	MemoryContextCallback *cb = MemoryContextAlloc(holder, sizeof(MemoryContextCallback));

	cb->func = unpin;
	cb->arg = e;
	MemoryContextRegisterResetCallback(holder, cb);
	e->pins++;
}

static void
evict(CacheEntry *e)
{
	hash_search(slots, &e->key, HASH_REMOVE, NULL);
	dlist_delete(&e->lru);
	nkept--;
	bytes_kept -= e->bytes;
	e->kept = false;
	if (e->pins == 0)
		MemoryContextDelete(e->cxt);
}

/* Every parse forgotten; those still held are freed when their holders go. */
void
template_cache_reset(void)
{
	while (!dlist_is_empty(&lru))
		evict(dlist_container(CacheEntry, lru, dlist_tail_node(&lru)));
	cache_table = InvalidOid;
}

/* e into the table, the least recently used out to make room. */
static void
keep(CacheEntry *e)
{
	bool		found;

	while (!dlist_is_empty(&lru) &&
		   (nkept >= TEMPLATE_CACHE_ENTRIES || bytes_kept + e->bytes > TEMPLATE_CACHE_BYTES))
		evict(dlist_container(CacheEntry, lru, dlist_tail_node(&lru)));
	/* The slot first: if that fails, e is still the holder's to free. */
	((CacheSlot *) hash_search(slots, &e->key, HASH_ENTER, &found))->entry = e;
	MemoryContextSetParent(e->cxt, cache_cxt);
	dlist_push_head(&lru, &e->lru);
	nkept++;
	bytes_kept += e->bytes;
	e->kept = true;
}

/* A jsonb datum as JSON text, in the current context; NULL for (Datum) 0. */
static char *
jsonb_text(Datum d)
{
	Jsonb	   *jb;

	if (d == (Datum) 0)
		return NULL;
	jb = DatumGetJsonbP(d);
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/*
 * Parse row into an entry of its own, a child of holder until kept: an
 * error on the way leaves nothing behind once the holder goes.
 */
static CacheEntry *
parse_row(const TemplateRow *row, const CacheKey *key, MemoryContext holder)
{
	MemoryContext cxt = AllocSetContextCreate(holder, "docextract template", ALLOCSET_SMALL_SIZES);
	MemoryContext texts = AllocSetContextCreate(holder, "docextract template text",
												ALLOCSET_DEFAULT_SIZES);
	MemoryContext prev = MemoryContextSwitchTo(texts);
	char	   *schema = jsonb_text(row->schema);
	char	   *prompts = row->whole ? jsonb_text(row->prompts) : NULL;
	char	   *rules = row->whole ? jsonb_text(row->rules) : NULL;
	CacheEntry *e;

	MemoryContextSwitchTo(cxt);
	e = palloc0(sizeof(CacheEntry));
	e->cxt = cxt;
	e->key = *key;
	e->parsed.err = template_parse(schema, prompts, rules, &e->parsed.tmpl);
	e->parsed.rules = rules ? pstrdup(rules) : NULL;
	MemoryContextSwitchTo(prev);
	MemoryContextDelete(texts);
	e->bytes = MemoryContextMemAllocated(cxt, true);
	ereport(DEBUG1,
			(errmsg_internal("docextract: template %s parsed", uuid_text(UUIDPGetDatum(&row->id)))));
	return e;
}

/*
 * The parse of row, from the cache or made now.  It stays valid while
 * holder lives; nobody may change or free it.
 */
const ParsedTemplate *
template_cache_get(const TemplateRow *row, MemoryContext holder)
{
	CacheKey	key;
	CacheSlot  *slot;
	CacheEntry *e;

	if (cache_cxt == NULL)
		cache_init();
	if (row->table != cache_table)
	{
		template_cache_reset();
		cache_table = row->table;
	}
	memset(&key, 0, sizeof(key));	/* the padding is hashed too */
	key.id = row->id;
	key.xmin = row->xmin;
	key.whole = row->whole;
	if ((slot = hash_search(slots, &key, HASH_FIND, NULL)) != NULL)
	{
		e = slot->entry;
		dlist_move_head(&lru, &e->lru);
		pin(e, holder);
		return &e->parsed;
	}
	e = parse_row(row, &key, holder);
	if (e->bytes <= TEMPLATE_CACHE_ENTRY_BYTES)
	{
		keep(e);
		pin(e, holder);
	}
	return &e->parsed;
}
