/*
 * credits.h: credits at submit (reserve.c) and what the current
 * transaction holds of a role's credit slots (credit_state.c).
 */
#ifndef DOCEXTRACT_CREDITS_H
#define DOCEXTRACT_CREDITS_H

#include "postgres.h"

/* credit_state.c */
extern bool credit_slot_cached(void);
extern void credit_slot_remember_state(const char *state);

/* reserve.c */
extern int16 reserve_at_submit(Oid owner, int32 pages, Datum id);

#endif							/* DOCEXTRACT_CREDITS_H */
