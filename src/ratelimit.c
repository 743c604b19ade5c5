/*
 * ratelimit.c: requests_per_minute, as a sliding 60-second window of send
 * times per model, kept in the worker's memory (one worker sends every
 * queued request, so it sees them all).
 */
#include "postgres.h"

#include "docextract.h"	/* first: see the note on json_object */

#include "nodes/pg_list.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define WINDOW_MS (60 * 1000)

typedef struct ModelWindow
{
	char	   *model;
	int			rpm;			/* 0: no limit */
	int			n;
	int			cap;
	TimestampTz *sent;			/* ascending */
} ModelWindow;

static List *windows = NIL;		/* of ModelWindow *, in TopMemoryContext */

static ModelWindow *
window_for(const char *model)
{
	ListCell   *lc;
	ModelWindow *w;

	foreach(lc, windows)
		if (strcmp(((ModelWindow *) lfirst(lc))->model, model) == 0)
			return lfirst(lc);
	w = MemoryContextAllocZero(TopMemoryContext, sizeof(ModelWindow));
	w->model = MemoryContextStrdup(TopMemoryContext, model);
	windows = lappend(windows, w);	/* caller is in TopMemoryContext */
	return w;
}

static void
prune(ModelWindow *w, TimestampTz now)
{
	int			drop = 0;

	while (drop < w->n && w->sent[drop] <= TimestampTzPlusMilliseconds(now, -WINDOW_MS))
		drop++;
	if (drop > 0)
	{
		memmove(w->sent, w->sent + drop, sizeof(TimestampTz) * (w->n - drop));
		w->n -= drop;
	}
}

/* The models' limits, as read from the models table at each claim. */
void
ratelimit_set(const char *model, int rpm)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	window_for(model)->rpm = rpm;
	MemoryContextSwitchTo(old);
}

void
ratelimit_record(const char *model, TimestampTz at)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	ModelWindow *w = window_for(model);

	if (w->n == w->cap)
	{
		w->cap = Max(16, w->cap * 2);
		w->sent = w->sent ? repalloc(w->sent, sizeof(TimestampTz) * w->cap)
			: palloc(sizeof(TimestampTz) * w->cap);
	}
	w->sent[w->n++] = at;
	MemoryContextSwitchTo(old);
}

/* {"model": requests it may still send this minute, ...} for limited models. */
char *
ratelimit_room_json(TimestampTz now)
{
	StringInfoData s;
	ListCell   *lc;
	bool		first = true;

	initStringInfo(&s);
	appendStringInfoChar(&s, '{');
	foreach(lc, windows)
	{
		ModelWindow *w = lfirst(lc);

		prune(w, now);
		if (w->rpm <= 0)
			continue;
		appendStringInfo(&s, "%s\"", first ? "" : ",");
		for (const char *c = w->model; *c; c++)
		{
			if (*c == '"' || *c == '\\')
				appendStringInfoChar(&s, '\\');
			appendStringInfoChar(&s, *c);
		}
		appendStringInfo(&s, "\":%d", Max(w->rpm - w->n, 0));
		first = false;
	}
	appendStringInfoChar(&s, '}');
	return s.data;
}

/* When the earliest full window frees a slot; 0 if none is full. */
TimestampTz
ratelimit_next_free(TimestampTz now)
{
	ListCell   *lc;
	TimestampTz next = 0;

	foreach(lc, windows)
	{
		ModelWindow *w = lfirst(lc);
		TimestampTz t;

		prune(w, now);
		if (w->rpm <= 0 || w->n < w->rpm)
			continue;
		t = TimestampTzPlusMilliseconds(w->sent[w->n - w->rpm], WINDOW_MS);
		if (next == 0 || t < next)
			next = t;
	}
	return next;
}
