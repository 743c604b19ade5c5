/*
 * answer.c: reading what a model endpoint or a webhook receiver answered.
 *
 * Those bytes come from a server we do not control.  Everything read from
 * them goes through here: the body is parsed only if it is valid UTF-8 JSON
 * (strict, nested at most ANSWER_MAX_DEPTH deep, nothing after it), with no
 * string holding U+0000 (jsonb cannot store it) and no number that is not
 * finite; members are taken only when they have the expected type; and the
 * text quoted in an error message is clipped, valid UTF-8.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "answer.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include <math.h>

/* Our deepest answer is about 8 levels; json-c allocates per level. */
#define ANSWER_MAX_DEPTH 64

int			docextract_max_response_size = 10 * 1024;	/* kB */

static const char *
check_tree(json_object *o)
{
	const char *err = NULL;

	switch (json_object_get_type(o))
	{
		case json_type_string:
			if ((size_t) json_object_get_string_len(o) != strlen(json_object_get_string(o)))
				return "a string contains U+0000 (\\u0000), which cannot be stored";
			return NULL;
		case json_type_double:
			if (!isfinite(json_object_get_double(o)))
				return "a number is not finite (NaN, Infinity or out of range)";
			return NULL;
		case json_type_array:
			for (size_t i = 0; i < json_object_array_length(o) && !err; i++)
				err = check_tree(json_object_array_get_idx(o, i));
			return err;
		case json_type_object:
			{
				struct json_object_iter it;

				json_object_object_foreachC(o, it)
					if ((err = check_tree(it.val)) != NULL)
					return err;
				return NULL;
			}
		default:
			return NULL;
	}
}

/* Why len bytes at data are not one strict JSON text; NULL if they are. */
static char *
parse_strict(const char *data, size_t len, json_object **out)
{
	struct json_tokener *tok = json_tokener_new_ex(ANSWER_MAX_DEPTH);
	enum json_tokener_error e;
	size_t		end;
	char	   *err = NULL;

	if (tok == NULL)
		return pstrdup("out of memory parsing JSON");
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	*out = json_tokener_parse_ex(tok, data, (int) len);
	e = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	while (*out && end < len && strchr(" \t\r\n", data[end]))
		end++;
	if (*out == NULL && e == json_tokener_continue)
		err = pstrdup("the JSON text is truncated");
	else if (*out == NULL && e == json_tokener_error_depth)
		err = psprintf("the JSON text is nested deeper than %d levels", ANSWER_MAX_DEPTH);
	else if (*out == NULL)
		err = pstrdup("");		/* plain bad syntax: the caller's message says it */
	else if (end < len)
		err = psprintf("unexpected data after the JSON text at byte %zu", end);
	if (err)
	{
		json_object_put(*out);
		*out = NULL;
	}
	return err;
}

/*
 * Parse an answer.  NULL and *err set unless it is valid UTF-8, strict
 * JSON, within the depth limit, and holds nothing jsonb cannot store.
 */
json_object *
answer_parse(const char *data, size_t len, char **err)
{
	json_object *o = NULL;
	const char *bad;
	int			valid;

	*err = NULL;
	if (data == NULL || len == 0)
	{
		*err = pstrdup("the body is empty");
		return NULL;
	}
	if (len > (size_t) MaxAllocSize)
	{
		*err = pstrdup("the body is too large");
		return NULL;
	}
	valid = pg_encoding_verifymbstr(PG_UTF8, data, (int) len);
	if (valid < (int) len)
	{
		*err = psprintf(data[valid] == '\0' ? "the body contains a NUL byte at byte %d"
						: "the body is not valid UTF-8 at byte %d", valid);
		return NULL;
	}
	if ((*err = parse_strict(data, len, &o)) != NULL)
		return NULL;
	if ((bad = check_tree(o)) != NULL)
	{
		json_object_put(o);
		*err = pstrdup(bad);
		return NULL;
	}
	return o;
}

/*
 * "what", and why in parentheses when answer_parse() gave a reason beyond
 * plain bad syntax.
 */
char *
answer_failure(const char *what, const char *why)
{
	if (why == NULL || why[0] == '\0')
		return pstrdup(what);
	return psprintf("%s (%s)", what, why);
}

/* obj[key] if obj is an object and the member is of type t; else NULL. */
json_object *
json_member(json_object *obj, const char *key, json_type t)
{
	json_object *v = NULL;

	if (obj == NULL || !json_object_is_type(obj, json_type_object) ||
		!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, t))
		return NULL;
	return v;
}

/* obj[key] as a string, if it is one; else NULL. */
const char *
json_member_string(json_object *obj, const char *key)
{
	json_object *v = json_member(obj, key, json_type_string);

	return v ? json_object_get_string(v) : NULL;
}

/* A token count: obj[key] if it is an integer from 0 to 2^40, else 0. */
int64
json_member_count(json_object *obj, const char *key)
{
	json_object *v = json_member(obj, key, json_type_int);
	int64		n = v ? json_object_get_int64(v) : 0;

	return (n < 0 || n > (INT64CONST(1) << 40)) ? 0 : n;
}

/*
 * At most max bytes of data (len bytes, or up to a NUL if len < 0) as
 * text for a message: valid UTF-8, every invalid byte and control
 * character (but newline and tab) replaced by U+FFFD, cut at a character
 * boundary, "..." when cut.
 */
char *
answer_excerpt(const char *data, ssize_t len, size_t max)
{
	static const char replacement[] = "\xef\xbf\xbd";	/* U+FFFD */
	StringInfoData out;
	size_t		n = data == NULL ? 0 : len < 0 ? strlen(data) : (size_t) len;
	size_t		i = 0;

	initStringInfo(&out);
	while (i < n)
	{
		const unsigned char *c = (const unsigned char *) data + i;
		int			l = pg_utf_mblen(c);
		const char *piece = (const char *) c;
		int			piece_len = l;

		if (l > (int) (n - i) || !pg_utf8_islegal(c, l) ||
			(l == 1 && ((*c < 0x20 && *c != '\n' && *c != '\t') || *c == 0x7f)))
		{
			l = 1;				/* skip one byte, show U+FFFD */
			piece = replacement;
			piece_len = 3;
		}
		if (out.len + piece_len > (int) max)
		{
			appendStringInfoString(&out, "...");
			break;
		}
		appendBinaryStringInfo(&out, piece, piece_len);
		i += l;
	}
	return out.data;
}
