/*
 * export.c: docextract.export(extraction_ids, format).
 *
 * Reads the results as the caller (row-level security applies), then writes
 * json, csv (RFC 4180, one row per line item, general fields repeated), xlsx
 * (libxlsxwriter, typed cells) or quickbooks_csv (the fields that carry a
 * qbo_mapping, under that name).  Extractions of several versions of one
 * template are projected onto the latest version's fields: a field the older
 * version lacked is empty, one the newer version dropped is left out.
 */
#include "postgres.h"

#include "prelude.h"		/* first: see the note on json_object */
#include "spi_checked.h"
#include "template.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"

#include <xlsxwriter.h>
#include <ctype.h>
#include <sys/stat.h>
#include <unistd.h>

PG_FUNCTION_INFO_V1(docextract_export);

typedef enum ExportFormat
{
	EXPORT_JSON,
	EXPORT_CSV,
	EXPORT_XLSX,
	EXPORT_QUICKBOOKS
} ExportFormat;

/* One column of a flat export: a general field or a line-item column. */
typedef struct Column
{
	const TemplateField *field;
	bool		in_table;
	const char *header;
} Column;

/* The extractions to export, in the order asked, and the columns. */
typedef struct ExportSet
{
	int			n;
	char	  **ids;
	char	  **documents;
	json_object **data;
	Template	tmpl;			/* the latest version of their template */
	int			ncolumns;
	Column	   *columns;
} ExportSet;

/* The format names, one source for parsing and for the hint. */
static const char *const format_names[] = {
	[EXPORT_JSON] = "json",
	[EXPORT_CSV] = "csv",
	[EXPORT_XLSX] = "xlsx",
	[EXPORT_QUICKBOOKS] = "quickbooks_csv"
};

static ExportFormat
parse_format(const char *name)
{
	StringInfoData known;

	for (int f = 0; f < (int) lengthof(format_names); f++)
		if (strcmp(name, format_names[f]) == 0)
			return (ExportFormat) f;
	initStringInfo(&known);
	for (int f = 0; f < (int) lengthof(format_names); f++)
		appendStringInfo(&known, "%s%s", f == 0 ? "" : f == (int) lengthof(format_names) - 1 ? " and " : ", ",
						 format_names[f]);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown export format \"%s\"", name),
			 errhint("Formats are %s.", known.data)));
	return EXPORT_JSON;
}

static void
export_error(const char *id, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("cannot export extraction %s: %s", id, what)));
}

/*
 * Check each requested extraction; returns the template group they share.
 * What it keeps is allocated in keep_cxt, which outlives the SPI call.
 */
static char *
load_rows(Datum ids, ExportSet *set, MemoryContext keep_cxt)
{
	char	   *group = NULL;
	MemoryContext spi_cxt;

	spi_execute_with_args("SELECT u.id::text, e.id IS NOT NULL, e.status, r.data::text,"
						  "       e.document_id::text, t.group_id::text"
						  "  FROM unnest($1::uuid[]) WITH ORDINALITY u(id, n)"
						  "  LEFT JOIN docextract.extractions e ON e.id = u.id"
						  "  LEFT JOIN docextract.results r ON r.extraction_id = e.id"
						  "  LEFT JOIN docextract.templates t ON t.id = e.template_id"
						  " ORDER BY u.n", 1, (Oid[]) {UUIDARRAYOID}, &ids, NULL, true, 0);
	set->n = (int) SPI_processed;
	spi_cxt = MemoryContextSwitchTo(keep_cxt);
	if (set->n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("export needs at least one extraction id")));
	set->ids = palloc(sizeof(char *) * set->n);
	set->documents = palloc(sizeof(char *) * set->n);
	set->data = palloc0(sizeof(json_object *) * set->n);
	for (int i = 0; i < set->n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *id = SPI_getvalue(tup, desc, 1);
		char	   *status = SPI_getvalue(tup, desc, 3);
		char	   *g = SPI_getvalue(tup, desc, 6);

		if (id == NULL || strcmp(SPI_getvalue(tup, desc, 2), "t") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("extraction %s does not exist", id ? id : "NULL")));
		if (strcmp(status, "completed") != 0 || SPI_getvalue(tup, desc, 4) == NULL)
			export_error(id, psprintf("it is %s, not completed", status));
		if (g == NULL)
			export_error(id, "its template is not visible");
		if (group && strcmp(group, g) != 0)
			export_error(id, "its template is not a version of the others' (one template per export)");
		group = g;
		set->ids[i] = id;
		set->documents[i] = SPI_getvalue(tup, desc, 5);
		set->data[i] = json_tokener_parse(SPI_getvalue(tup, desc, 4));
	}
	MemoryContextSwitchTo(spi_cxt);
	return group;
}

/* The columns: every field of the latest version, or those with a qbo_mapping. */
static void
choose_columns(ExportSet *set, ExportFormat format)
{
	Template   *t = &set->tmpl;
	int			max = t->ngeneral + t->ntable;

	set->columns = palloc(sizeof(Column) * Max(max, 1));
	set->ncolumns = 0;
	for (int i = 0; i < max; i++)
	{
		bool		in_table = i >= t->ngeneral;
		const TemplateField *f = in_table ? &t->table[i - t->ngeneral] : &t->general[i];

		if (format == EXPORT_QUICKBOOKS && f->qbo_mapping == NULL)
			continue;
		set->columns[set->ncolumns++] = (Column) {
			f, in_table, format == EXPORT_QUICKBOOKS ? f->qbo_mapping : f->key
		};
	}
	if (format == EXPORT_QUICKBOOKS && set->ncolumns == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot export as %s: no field of the template has a qbo_mapping",
						format_names[EXPORT_QUICKBOOKS]),
				 errhint("Give fields a \"qbo_mapping\" (the QuickBooks column, e.g. \"InvoiceNo\") with update_template().")));
}

static void
load_set(Datum ids, ExportFormat format, ExportSet *set)
{
	MemoryContext keep_cxt = CurrentMemoryContext;
	char	   *group;
	char	   *err;
	char	   *schema;

	spi_connect();
	group = load_rows(ids, set, keep_cxt);
	spi_execute_with_args("SELECT schema_definition::text FROM docextract.templates"
						  " WHERE group_id = $1::uuid ORDER BY version DESC LIMIT 1",
						  1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(group)},
						  NULL, true, 1);
	MemoryContextSwitchTo(keep_cxt);
	schema = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	err = template_parse(schema, NULL, NULL, &set->tmpl);
	if (err)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("template no longer valid: %s", err)));
	choose_columns(set, format);
	spi_finish();
}

/* -- values ---------------------------------------------------------------- */

/* A typed value as text: NULL for null, MM/DD/YYYY dates for QuickBooks. */
static const char *
value_text(json_object *v, FormatType f, bool quickbooks)
{
	const char *s;

	if (v == NULL || json_object_is_type(v, json_type_null))
		return NULL;
	s = json_object_is_type(v, json_type_string) ? json_object_get_string(v)
		: json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
	if (quickbooks && f == FORMAT_DATE && strlen(s) == 10)
		return psprintf("%.2s/%.2s/%.4s", s + 5, s + 8, s);
	return s;
}

static json_object *
cell(ExportSet *set, int row, json_object *item, Column *c)
{
	json_object *general;
	json_object *v = NULL;

	if (c->in_table)
		return item ? (json_object_object_get_ex(item, c->field->key, &v) ? v : NULL) : NULL;
	if (json_object_object_get_ex(set->data[row], "general", &general))
		json_object_object_get_ex(general, c->field->key, &v);
	return v;
}

/* Line items of row, as an array (an extraction without any gives none). */
static json_object *
items_of(ExportSet *set, int row)
{
	json_object *table;

	return json_object_object_get_ex(set->data[row], "table", &table) &&
		json_object_is_type(table, json_type_array) ? table : NULL;
}

/* Calls emit(row, item) once per line item, or once with NULL if none. */
typedef void (*EmitFn) (void *arg, ExportSet *set, int row, json_object *item);

static void
for_each_line(ExportSet *set, EmitFn emit, void *arg)
{
	for (int row = 0; row < set->n; row++)
	{
		json_object *items = items_of(set, row);
		size_t		n = items ? json_object_array_length(items) : 0;

		if (n == 0)
			emit(arg, set, row, NULL);
		for (size_t i = 0; i < n; i++)
			emit(arg, set, row, json_object_array_get_idx(items, i));
	}
}

/* -- csv ------------------------------------------------------------------- */

/* A signed plain number ("-12.5", "+3", "-1e-3"): no spreadsheet runs it as a formula. */
static bool
is_signed_number(const char *v)
{
	char	   *end;

	if ((v[0] != '-' && v[0] != '+') || !(isdigit((unsigned char) v[1]) || v[1] == '.'))
		return false;
	(void) strtod(v, &end);
	return *end == '\0';
}

/*
 * A cell a spreadsheet would run as a formula (=, +, -, @, tab or CR first;
 * OWASP's CSV injection guidance) gets a leading single quote: the values
 * come from documents and models, which an attacker can write.
 */
static bool
needs_neutralising(const char *v)
{
	return v[0] != '\0' && strchr("=+-@\t\r", v[0]) != NULL && !is_signed_number(v);
}

/*
 * RFC 4180: quote a field holding a comma, quote, CR or LF; double quotes.
 * A formula-like value is neutralised first.
 */
static void
csv_field(StringInfo out, const char *v, bool first)
{
	if (!first)
		appendStringInfoChar(out, ',');
	if (v == NULL)
		return;
	if (needs_neutralising(v))
		v = psprintf("'%s", v);
	if (strpbrk(v, ",\"\r\n") == NULL)
	{
		appendStringInfoString(out, v);
		return;
	}
	appendStringInfoChar(out, '"');
	for (const char *p = v; *p; p++)
	{
		if (*p == '"')
			appendStringInfoChar(out, '"');
		appendStringInfoChar(out, *p);
	}
	appendStringInfoChar(out, '"');
}

typedef struct CsvOut
{
	StringInfoData buf;
	bool		quickbooks;
} CsvOut;

static void
csv_line(void *arg, ExportSet *set, int row, json_object *item)
{
	CsvOut	   *o = arg;

	if (!o->quickbooks)
	{
		csv_field(&o->buf, set->ids[row], true);
		csv_field(&o->buf, set->documents[row], false);
	}
	for (int c = 0; c < set->ncolumns; c++)
		csv_field(&o->buf, value_text(cell(set, row, item, &set->columns[c]),
									  set->columns[c].field->format, o->quickbooks),
				  o->quickbooks && c == 0);
	appendStringInfoString(&o->buf, "\r\n");
}

static bytea *
export_csv(ExportSet *set, bool quickbooks)
{
	CsvOut		o;

	initStringInfo(&o.buf);
	o.quickbooks = quickbooks;
	if (!quickbooks)
		appendStringInfoString(&o.buf, "extraction_id,document_id");
	for (int c = 0; c < set->ncolumns; c++)
		csv_field(&o.buf, set->columns[c].header, quickbooks && c == 0);
	appendStringInfoString(&o.buf, "\r\n");
	for_each_line(set, csv_line, &o);
	return (bytea *) cstring_to_text_with_len(o.buf.data, o.buf.len);
}

/* -- xlsx ------------------------------------------------------------------ */

typedef struct XlsxOut
{
	lxw_worksheet *sheet;
	lxw_format *date;
	int			line;
} XlsxOut;

static void
xlsx_cell(XlsxOut *o, int col, json_object *v, FormatType f)
{
	const char *s = value_text(v, f, false);
	int			y,
				m,
				d;

	if (s == NULL)
		return;
	if (f == FORMAT_NUMBER && !json_object_is_type(v, json_type_string))
		worksheet_write_number(o->sheet, o->line, col, json_object_get_double(v), NULL);
	else if (f == FORMAT_BOOLEAN && json_object_is_type(v, json_type_boolean))
		worksheet_write_boolean(o->sheet, o->line, col, json_object_get_boolean(v), NULL);
	else if (f == FORMAT_DATE && sscanf(s, "%4d-%2d-%2d", &y, &m, &d) == 3)
	{
		lxw_datetime dt = {y, m, d, 0, 0, 0};

		worksheet_write_datetime(o->sheet, o->line, col, &dt, o->date);
	}
	else
		worksheet_write_string(o->sheet, o->line, col, s, NULL);	/* text, never a formula */
}

static void
xlsx_line(void *arg, ExportSet *set, int row, json_object *item)
{
	XlsxOut    *o = arg;

	o->line++;
	worksheet_write_string(o->sheet, o->line, 0, set->ids[row], NULL);
	worksheet_write_string(o->sheet, o->line, 1, set->documents[row], NULL);
	for (int c = 0; c < set->ncolumns; c++)
		xlsx_cell(o, c + 2, cell(set, row, item, &set->columns[c]), set->columns[c].field->format);
}

/* A file of its own in the server's temporary directory, read back, removed. */
static bytea *
read_and_remove(const char *path)
{
	struct stat st;
	FILE	   *f;
	bytea	   *out;

	if (stat(path, &st) != 0 || (f = AllocateFile(path, PG_BINARY_R)) == NULL)
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not read \"%s\": %m", path)));
	out = palloc(VARHDRSZ + st.st_size);
	SET_VARSIZE(out, VARHDRSZ + st.st_size);
	if (fread(VARDATA(out), 1, st.st_size, f) != (size_t) st.st_size)
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not read \"%s\": %m", path)));
	FreeFile(f);
	unlink(path);
	return out;
}

static void
xlsx_write(ExportSet *set, const char *path, char *tmpdir)
{
	lxw_workbook_options opts = {.constant_memory = 0, .tmpdir = tmpdir};
	lxw_workbook *wb = workbook_new_opt(path, &opts);
	lxw_format *bold;
	XlsxOut		o = {0};
	lxw_error	rc;

	if (wb == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not create workbook \"%s\"", path)));
	o.sheet = workbook_add_worksheet(wb, "extractions");
	bold = workbook_add_format(wb);
	format_set_bold(bold);
	o.date = workbook_add_format(wb);
	format_set_num_format(o.date, "yyyy-mm-dd");
	worksheet_write_string(o.sheet, 0, 0, "extraction_id", bold);
	worksheet_write_string(o.sheet, 0, 1, "document_id", bold);
	for (int c = 0; c < set->ncolumns; c++)
		worksheet_write_string(o.sheet, 0, c + 2, set->columns[c].header, bold);
	for_each_line(set, xlsx_line, &o);
	if ((rc = workbook_close(wb)) != LXW_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not write workbook: %s", lxw_strerror(rc))));
}

static bytea *
export_xlsx(ExportSet *set)
{
	static int	counter = 0;
	char	   *dir = psprintf("base/%s", PG_TEMP_FILES_DIR);
	char	   *path;
	bytea	   *out;

	(void) MakePGDirectory(dir);
	path = psprintf("%s/docextract_export_%d_%d.xlsx", dir, MyProcPid, counter++);
	PG_TRY();
	{
		xlsx_write(set, path, dir);
		out = read_and_remove(path);
	}
	PG_CATCH();
	{
		unlink(path);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return out;
}

/* -- the SQL function ------------------------------------------------------ */

static bytea *
export_json(Datum ids)
{
	bool		isnull;
	bytea	   *out;

	spi_connect();
	spi_execute_with_args("SELECT jsonb_pretty(jsonb_agg(docextract.get_result(u.id) ORDER BY u.n))"
						  "  FROM unnest($1::uuid[]) WITH ORDINALITY u(id, n)",
						  1, (Oid[]) {UUIDARRAYOID}, &ids, NULL, true, 1);
	out = (bytea *) DatumGetTextP(SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0],
																   SPI_tuptable->tupdesc, 1,
																   &isnull), false, -1));
	spi_finish();
	return out;
}

Datum
docextract_export(PG_FUNCTION_ARGS)
{
	ExportFormat format;
	ExportSet	set;
	bytea	   *out;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("export needs at least one extraction id")));
	format = parse_format(PG_ARGISNULL(1) ? "json" : text_to_cstring(PG_GETARG_TEXT_PP(1)));
	/* Every id is checked, whatever the format. */
	load_set(PG_GETARG_DATUM(0), format, &set);
	if (format == EXPORT_JSON)
		out = export_json(PG_GETARG_DATUM(0));
	else if (format == EXPORT_XLSX)
		out = export_xlsx(&set);
	else
		out = export_csv(&set, format == EXPORT_QUICKBOOKS);
	for (int i = 0; i < set.n; i++)
		json_object_put(set.data[i]);
	PG_RETURN_BYTEA_P(out);
}
