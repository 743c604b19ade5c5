/*
 * util.h: small helpers any file may use.
 */
#ifndef DOCEXTRACT_UTIL_H
#define DOCEXTRACT_UTIL_H

#include "postgres.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

/* A uuid Datum as text, for messages. */
static inline char *
uuid_text(Datum id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, id));
}

#endif							/* DOCEXTRACT_UTIL_H */
