/*
 * prelude.h: PostgreSQL's and json-c's headers in the one order that works.
 *
 * json-c names its type json_object, PostgreSQL declares a SQL function of
 * that name in fmgrprotos.h.  PostgreSQL's declaration is included here
 * under another name, before json-c's.  So every file that uses json-c (or
 * a header that includes this one) includes this header right after
 * postgres.h, before any header that may pull fmgrprotos.h in.  This is the
 * only place with the workaround (test/check_layout.sh checks it).
 */
#ifndef DOCEXTRACT_PRELUDE_H
#define DOCEXTRACT_PRELUDE_H

#include "postgres.h"

#define json_object pg_sql_json_object
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#undef json_object
#include <json-c/json.h>

#endif							/* DOCEXTRACT_PRELUDE_H */
