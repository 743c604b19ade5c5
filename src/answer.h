/*
 * answer.h: reading untrusted answers (model endpoints, webhook receivers).
 */
#ifndef DOCEXTRACT_ANSWER_H
#define DOCEXTRACT_ANSWER_H

#include "prelude.h"

/* answer.c: reading untrusted answers (model endpoints, webhook receivers) -- */

extern int	docextract_max_response_size;	/* kB */
extern json_object *answer_parse(const char *data, size_t len, char **err);
extern char *answer_failure(const char *what, const char *why);
extern json_object *json_member(json_object *obj, const char *key, json_type t);
extern const char *json_member_string(json_object *obj, const char *key);
extern int64 json_member_count(json_object *obj, const char *key);
extern char *answer_excerpt(const char *data, ssize_t len, size_t max);

/* How much of an answer's text an error message quotes, in bytes. */
#define ANSWER_TEXT_MAX 300

#endif							/* DOCEXTRACT_ANSWER_H */
