/*
 * launcher.h: the launcher's shared state, for launcher.c (what backends
 * and workers call) and launcher_loop.c (the launcher process).
 */
#ifndef DOCEXTRACT_LAUNCHER_H
#define DOCEXTRACT_LAUNCHER_H

#include "workerset.h"

/* Extension events a hook may post before the launcher reads them. */
#define MAX_EVENTS 64
/* Backends that may hold a database alone at once. */
#define MAX_BLOCKS 32
/* Databases probed for the extension at once. */
#define PROBES_AT_ONCE 2
/* A worker that stopped by itself is started again this much later. */
#define RESTART_DELAY_MS 1000
/* Longest a backend waits for a database's workers to stop. */
#define STEP_ASIDE_WAIT_MS 30000

typedef struct ExtensionEvent
{
	Oid			dboid;
	bool		created;
} ExtensionEvent;

typedef struct Block
{
	Oid			dboid;
	pid_t		pid;			/* the backend; 0: a free entry */
	bool		acked;			/* the launcher stopped the database's workers */
} Block;

typedef struct LauncherShared
{
	slock_t		mutex;
	Latch	   *latch;
	bool		crash_restart;	/* shared memory was set up again after a crash */
	bool		rescan;			/* pg_database or the settings changed */
	pg_atomic_uint64 extension_events;
	int			nevents;
	bool		events_lost;	/* the ring was full: probe every database again */
	ExtensionEvent events[MAX_EVENTS];
	Block		blocks[MAX_BLOCKS];
	int			nsets;
	DbWorkers	sets[FLEXIBLE_ARRAY_MEMBER];
} LauncherShared;

extern LauncherShared *launcher;

#endif							/* DOCEXTRACT_LAUNCHER_H */
