/*
 * util.h: small helpers any file may use.
 */
#ifndef DOCEXTRACT_UTIL_H
#define DOCEXTRACT_UTIL_H

#include "postgres.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

/* A new id, ascending with time (ids.c). */
extern Datum new_time_ordered_uuid(void);

/* A uuid Datum as text, for messages. */
static inline char *
uuid_text(Datum id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, id));
}

/* s past prefix, or NULL when s does not begin with it. */
static inline const char *
after_prefix(const char *s, const char *prefix)
{
	size_t		n = strlen(prefix);

	return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* Do the bytes at p begin with string literal lit ("" lit: literals only)? */
#define BYTES_START_WITH(p, lit) (memcmp((p), "" lit, sizeof(lit) - 1) == 0)

#endif							/* DOCEXTRACT_UTIL_H */
