/*
 * coerce.c: typing what the model answered.
 *
 * Models return "1,234.50" for numbers and "March 5, 2024" for dates however
 * firmly they are asked not to.  Every value is coerced to its field's
 * format_type; what cannot be read as that type becomes null rather than
 * a wrong value.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "template.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "util.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include <math.h>


PG_FUNCTION_INFO_V1(docextract_coerce_value);

/* A JSON number that prints as a person would write it (json-c prints %.17g). */
json_object *
json_number_from_double(double d)
{
	char		buf[64];

	if (isnan(d) || isinf(d))
		return NULL;
	if (d == floor(d) && fabs(d) < 9007199254740992.0)
		return json_object_new_int64((int64_t) d);
	snprintf(buf, sizeof(buf), "%.15g", d);
	if (strtod(buf, NULL) != d)
		snprintf(buf, sizeof(buf), "%.17g", d);
	return json_object_new_double_s(d, buf);
}

/*
 * "1,234.50", "1.234,50", "$ 1 234", "(12.00)", "12.5%", "-3" -> number.
 * The last of '.' and ',' is the decimal mark when both appear; a lone ','
 * followed by exactly three digits is a thousands separator.
 */
static bool
parse_number(const char *s, double *out)
{
	char		digits[128];
	int			n = 0;
	int			ndot = 0,
				ncomma = 0;
	int			last_dot = -1,
				last_comma = -1;
	bool		negative = false;
	bool		seen_digit = false;
	char		decimal;
	char	   *end;

	for (const char *c = s; *c; c++)
	{
		if (isdigit((unsigned char) *c))
			seen_digit = true;
		else if (*c == '-' || *c == '(' || after_prefix(c, "\xe2\x88\x92"))	/* U+2212 */
			negative = true;
		else if (*c == '.' || *c == ',')
		{
			if (*c == '.')
				ndot++, last_dot = n;
			else
				ncomma++, last_comma = n;
		}
		else if (isalpha((unsigned char) *c) && seen_digit &&
				 (*c == 'e' || *c == 'E') && isdigit((unsigned char) c[1]))
		{
			/* scientific notation: hand the whole thing to strtod */
			*out = strtod(s, &end);
			return end != s;
		}
		else
			continue;
		if (n >= (int) sizeof(digits) - 1)
			return false;
		digits[n++] = *c;
	}
	digits[n] = '\0';
	if (!seen_digit)
		return false;

	if (ndot && ncomma)
		decimal = last_dot > last_comma ? '.' : ',';
	else if (ncomma == 1)
		decimal = (n - last_comma - 1 == 3) ? 0 : ',';
	else if (ndot == 1)
		decimal = '.';
	else
		decimal = 0;			/* several of one mark: thousands */

	{
		char		clean[128];
		int			m = 0;

		for (int i = 0; i < n; i++)
		{
			if (isdigit((unsigned char) digits[i]))
				clean[m++] = digits[i];
			else if (digits[i] == decimal)
				clean[m++] = '.';
		}
		clean[m] = '\0';
		*out = strtod(clean, &end);
		if (end == clean)
			return false;
	}
	if (negative)
		*out = -*out;
	return true;
}

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
"jul", "aug", "sep", "oct", "nov", "dec"};

static int
days_in_month(int y, int m)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return days[m - 1];
}

static bool
valid_date(int y, int m, int d)
{
	return y >= 1 && y <= 9999 && m >= 1 && m <= 12 && d >= 1 && d <= days_in_month(y, m);
}

/* Split into numbers and words; month words become 101..112. */
static int
date_tokens(const char *s, int *tok, int *width, char *seps, int max)
{
	int			n = 0;

	for (const char *c = s; *c && n < max;)
	{
		if (isdigit((unsigned char) *c))
		{
			const char *start = c;

			tok[n] = 0;
			while (isdigit((unsigned char) *c))
				tok[n] = tok[n] * 10 + (*c++ - '0');
			width[n] = (int) (c - start);
			seps[n++] = *c;
		}
		else if (isalpha((unsigned char) *c))
		{
			char		word[4] = {0};
			int			len = 0;

			while (isalpha((unsigned char) *c))
			{
				if (len < 3)
					word[len] = tolower((unsigned char) *c);
				len++, c++;
			}
			for (int m = 0; m < 12; m++)
				if (len >= 3 && strcmp(word, month_names[m]) == 0)
				{
					tok[n] = 101 + m;
					width[n] = 0;
					seps[n++] = *c;
				}
			if (len == 1 && n > 0 && (word[0] == 't'))
				break;			/* ISO 8601 "T" before the time */
		}
		else
			c++;
	}
	return n;
}

static int
full_year(int y, int width)
{
	if (width <= 2)
		return y < 70 ? 2000 + y : 1900 + y;
	return y;
}

/*
 * Dates: 2024-03-05, 2024/3/5, 20240305, 05.03.2024 (day first), 3/5/2024
 * (month first unless the first part is over 12), "March 5, 2024",
 * "5 Mar 2024", with or without a time after.
 */
static bool
parse_date(const char *s, int *y, int *m, int *d)
{
	int			tok[8],
				w[8];
	char		sep[8];
	int			n = date_tokens(s, tok, w, sep, 8);
	int			month_at = -1;

	for (int i = 0; i < n; i++)
		if (tok[i] > 100 && w[i] == 0)
			month_at = i;
	if (n == 1 && w[0] == 8)
		return *y = tok[0] / 10000, *m = tok[0] / 100 % 100, *d = tok[0] % 100,
			valid_date(*y, *m, *d);
	if (n < 3)
		return false;
	if (month_at >= 0)
	{
		int			a = month_at == 0 ? 1 : 0;
		int			b = month_at == 2 ? 1 : 2;

		*m = tok[month_at] - 100;
		if (month_at == 1 && w[0] == 4)	/* 2024-Mar-05 */
			*y = tok[0], *d = tok[2];
		else if (w[a] <= 2 && w[b] >= 2)
			*d = tok[a], *y = full_year(tok[b], w[b]);
		else
			return false;
		return valid_date(*y, *m, *d);
	}
	if (w[0] == 4)
		*y = tok[0], *m = tok[1], *d = tok[2];
	else if (sep[0] == '.' || tok[0] > 12)
		*d = tok[0], *m = tok[1], *y = full_year(tok[2], w[2]);
	else
		*m = tok[0], *d = tok[1], *y = full_year(tok[2], w[2]);
	return valid_date(*y, *m, *d);
}

static json_object *
coerce_boolean(json_object *v)
{
	static const char *const yes[] = {"true", "yes", "y", "1", "x", "checked", "on", NULL};
	static const char *const no[] = {"false", "no", "n", "0", "unchecked", "off", "none", NULL};
	char		buf[16];
	int			len = 0;

	switch (json_object_get_type(v))
	{
		case json_type_boolean:
			return json_object_new_boolean(json_object_get_boolean(v));
		case json_type_int:
			if (json_object_get_int64(v) == 0 || json_object_get_int64(v) == 1)
				return json_object_new_boolean(json_object_get_int64(v) == 1);
			return NULL;
		case json_type_string:
			for (const char *c = json_object_get_string(v); *c && len < 15; c++)
				if (!isspace((unsigned char) *c))
					buf[len++] = tolower((unsigned char) *c);
			buf[len] = '\0';
			for (int i = 0; yes[i]; i++)
				if (strcmp(buf, yes[i]) == 0)
					return json_object_new_boolean(1);
			for (int i = 0; no[i]; i++)
				if (strcmp(buf, no[i]) == 0)
					return json_object_new_boolean(0);
			return NULL;
		default:
			return NULL;
	}
}

/* Trimmed copy of a string; palloc'd. */
static char *
trimmed(const char *s)
{
	const char *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		end--;
	return pnstrdup(s, end - s);
}

static json_object *
coerce_choice(json_object *v, int noptions, char **options)
{
	char	   *s;

	if (!json_object_is_type(v, json_type_string))
		return NULL;
	s = trimmed(json_object_get_string(v));
	for (int i = 0; i < noptions; i++)
		if (strcmp(s, options[i]) == 0)
			return json_object_new_string(options[i]);
	for (int i = 0; i < noptions; i++)
		if (pg_strcasecmp(s, options[i]) == 0)
			return json_object_new_string(options[i]);
	return NULL;
}

static json_object *
coerce_text(json_object *v)
{
	char	   *s;

	if (json_object_is_type(v, json_type_string))
	{
		s = trimmed(json_object_get_string(v));
		if (s[0] == '\0' || pg_strcasecmp(s, "null") == 0)
			return NULL;
		return json_object_new_string(s);
	}
	/* numbers, booleans, objects: their JSON text */
	return json_object_new_string(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
}

/* A new json-c value of the field's type, or NULL for JSON null. */
json_object *
coerce_value(json_object *v, FormatType f, int noptions, char **options)
{
	double		d;
	int			y,
				m,
				day;

	if (v == NULL || json_object_is_type(v, json_type_null))
		return NULL;
	switch (f)
	{
		case FORMAT_TEXT:
			return coerce_text(v);
		case FORMAT_NUMBER:
			if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double))
				return json_number_from_double(json_object_get_double(v));
			if (json_object_is_type(v, json_type_string) &&
				parse_number(json_object_get_string(v), &d))
				return json_number_from_double(d);
			return NULL;
		case FORMAT_DATE:
			if (json_object_is_type(v, json_type_string) &&
				parse_date(json_object_get_string(v), &y, &m, &day))
			{
				char		buf[16];

				snprintf(buf, sizeof(buf), "%04d-%02d-%02d", y, m, day);
				return json_object_new_string(buf);
			}
			return NULL;
		case FORMAT_BOOLEAN:
			return coerce_boolean(v);
		case FORMAT_MULTIPLE_CHOICE:
			return coerce_choice(v, noptions, options);
	}
	return NULL;
}

static json_object *
coerce_object(json_object *in, const TemplateField *fields, int n)
{
	json_object *out = json_object_new_object();

	for (int i = 0; i < n; i++)
	{
		json_object *v = NULL;

		if (in && json_object_is_type(in, json_type_object))
			json_object_object_get_ex(in, fields[i].key, &v);
		json_object_object_add(out, fields[i].key,
							   coerce_value(v, fields[i].format, fields[i].noptions,
											fields[i].options));
	}
	return out;
}

/*
 * The model's whole answer -> {"general": {...}, "table": [...]}, with every
 * template field present (null when missing) and nothing else.
 */
json_object *
coerce_output(json_object *output, const Template *t)
{
	json_object *result = json_object_new_object();
	json_object *general = NULL;
	json_object *rows = NULL;
	json_object *table = json_object_new_array();

	if (output && json_object_is_type(output, json_type_object))
	{
		json_object_object_get_ex(output, "general", &general);
		json_object_object_get_ex(output, "table", &rows);
	}
	json_object_object_add(result, "general", coerce_object(general, t->general, t->ngeneral));
	if (t->has_table && rows && json_object_is_type(rows, json_type_array))
		for (size_t i = 0; i < json_object_array_length(rows); i++)
			json_object_array_add(table, coerce_object(json_object_array_get_idx(rows, i),
													   t->table, t->ntable));
	json_object_object_add(result, "table", table);
	return result;
}

/* One field's attribution: confidence clamped to 0..1, quote text, page >= 1. */
static json_object *
coerce_attribution(json_object *a)
{
	json_object *out = json_object_new_object();
	json_object *ev = json_object_new_object();
	json_object *v = NULL,
			   *e = NULL;
	double		conf;

	if (a && json_object_object_get_ex(a, "confidence", &v) &&
		(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)))
	{
		conf = json_object_get_double(v);
		json_object_object_add(out, "confidence", json_number_from_double(Max(0.0, Min(1.0, conf))));
	}
	else
		json_object_object_add(out, "confidence", NULL);
	if (a)
		json_object_object_get_ex(a, "evidence", &e);
	v = NULL;
	if (e)
		json_object_object_get_ex(e, "quote", &v);
	json_object_object_add(ev, "quote", coerce_value(v, FORMAT_TEXT, 0, NULL));
	v = NULL;
	if (e && json_object_object_get_ex(e, "page", &v) && json_object_is_type(v, json_type_int) &&
		json_object_get_int64(v) >= 1)
		json_object_object_add(ev, "page", json_object_new_int64(json_object_get_int64(v)));
	else
		json_object_object_add(ev, "page", NULL);
	json_object_object_add(out, "evidence", ev);
	return out;
}

/* {"<field>": attribution, ...} for these fields, from in (any JSON, or NULL). */
static json_object *
coerce_attribution_object(json_object *in, const TemplateField *fields, int n)
{
	json_object *out = json_object_new_object();

	for (int i = 0; i < n; i++)
	{
		json_object *a = NULL;

		if (in && json_object_is_type(in, json_type_object))
			json_object_object_get_ex(in, fields[i].key, &a);
		json_object_object_add(out, fields[i].key,
							   coerce_attribution(a && json_object_is_type(a, json_type_object) ? a : NULL));
	}
	return out;
}

/* {"<general field>": {"confidence", "evidence": {"quote", "page"}}} from the answer. */
json_object *
coerce_attributions(json_object *output, const Template *t)
{
	json_object *in = NULL;

	if (output && json_object_is_type(output, json_type_object))
		json_object_object_get_ex(output, "attributions", &in);
	return coerce_attribution_object(in, t->general, t->ngeneral);
}

/* [{"<column>": attribution, ...}, ...] per line item, from "table_attributions". */
json_object *
coerce_table_attributions(json_object *output, const Template *t)
{
	json_object *in = NULL;
	json_object *rows = NULL;
	json_object *out = json_object_new_array();

	if (output && json_object_is_type(output, json_type_object))
	{
		json_object_object_get_ex(output, "table", &rows);
		json_object_object_get_ex(output, "table_attributions", &in);
	}
	if (!rows || !json_object_is_type(rows, json_type_array))
		return out;
	for (size_t r = 0; r < json_object_array_length(rows); r++)
		json_object_array_add(out, coerce_attribution_object(
								  in && json_object_is_type(in, json_type_array) &&
								  r < json_object_array_length(in)
								  ? json_object_array_get_idx(in, r) : NULL,
								  t->table, t->ntable));
	return out;
}

Datum
docextract_coerce_value(PG_FUNCTION_ARGS)
{
	static const char *const names[] = {"text", "number", "date", "boolean", "multiple_choice"};
	Jsonb	   *value;
	char	   *format;
	json_object *in;
	json_object *out;
	char	  **options = NULL;
	int			noptions = 0;
	int			f = -1;
	char	   *json_text;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	value = PG_GETARG_JSONB_P(0);
	format = text_to_cstring(PG_GETARG_TEXT_PP(1));
	for (int i = 0; i < (int) lengthof(names); i++)
		if (strcmp(format, names[i]) == 0)
			f = i;
	if (f < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown format_type \"%s\"", format)));
	if (!PG_ARGISNULL(2))
	{
		Datum	   *elems;
		bool	   *nulls;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &noptions);
		options = palloc(sizeof(char *) * Max(noptions, 1));
		for (int i = 0; i < noptions; i++)
			options[i] = nulls[i] ? "" : TextDatumGetCString(elems[i]);
	}
	in = json_tokener_parse(JsonbToCString(NULL, &value->root, VARSIZE(value)));
	out = coerce_value(in, (FormatType) f, noptions, options);
	json_text = pstrdup(out ? json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN) : "null");
	json_object_put(in);
	json_object_put(out);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json_text)));
}
