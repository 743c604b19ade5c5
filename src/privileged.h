/*
 * privileged.h: acting as the extension owner; the schema the library runs against.
 */
#ifndef DOCEXTRACT_PRIVILEGED_H
#define DOCEXTRACT_PRIVILEGED_H

#include "postgres.h"

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
extern void check_found_visible(const char *what, Datum id, Oid caller, bool null_owner_ok);
extern void check_visible(const char *what, const char *sql, Datum id, Oid caller,
						  bool null_owner_ok);

/* version.c: the schema the library runs against --------------------------- */

extern bool docextract_extension_row(Oid *owner, char **version);
extern char *docextract_installed_version(void);
extern bool docextract_schema_ready(void);

#endif							/* DOCEXTRACT_PRIVILEGED_H */
