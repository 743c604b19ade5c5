/*
 * template.h: templates: parsed form, prompts, coercion, validation, citations.
 */
#ifndef DOCEXTRACT_TEMPLATE_H
#define DOCEXTRACT_TEMPLATE_H

#include "prelude.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/uuid.h"

/* template_parse.c: the parsed, validated form of a template ---------------- */

typedef enum FormatType
{
	FORMAT_TEXT,
	FORMAT_NUMBER,
	FORMAT_DATE,
	FORMAT_BOOLEAN,
	FORMAT_MULTIPLE_CHOICE
} FormatType;

typedef struct TemplateField
{
	char	   *key;
	char	   *name;
	char	   *prompt;			/* may be NULL */
	FormatType	format;
	int			noptions;
	char	  **options;		/* multiple_choice choices */
	int			position;
	bool		editable;		/* is_editable: may approve() correct it? */
	char	   *qbo_mapping;	/* QuickBooks column, for quickbooks_csv; may be NULL */
	int			char_limit;		/* text values longer are cut (charlimit.c); 0: none */
} TemplateField;

typedef struct Template
{
	int			ngeneral;
	TemplateField *general;
	bool		has_table;
	int			ntable;
	TemplateField *table;
	char	   *global_instructions;
	char	   *general_prompt;
	char	   *table_prompt;
} Template;

extern char *template_parse(const char *schema_json, const char *prompt_json,
							const char *rules_json, Template *out);
extern const char *format_type_name(FormatType f);

/* template_cache.c: a process's parsed templates, by row version ------------ */

/*
 * The columns a query selects (templates aliased t), in this order, for
 * template_row_read(): the row version's identity, then its jsonb as stored.
 */
#define TEMPLATE_ROW_COLUMNS \
	"t.id, t.xmin, t.tableoid, t.schema_definition, t.prompt_set, t.validation_rules"

typedef struct TemplateRow
{
	pg_uuid_t	id;
	TransactionId xmin;			/* which version of the row */
	Oid			table;			/* which templates table (the extension recreated?) */
	Datum		schema;			/* jsonb datums, (Datum) 0 if NULL */
	Datum		prompts;
	Datum		rules;
	bool		whole;			/* prompt_set and validation_rules parsed too */
} TemplateRow;

/* A parse's outcome.  Shared: whoever gets one reads it, never changes it. */
typedef struct ParsedTemplate
{
	Template	tmpl;
	const char *rules;			/* validation_rules as JSON text (whole), or NULL */
	const char *err;			/* why it does not parse (tmpl unusable), or NULL */
} ParsedTemplate;

extern void template_row_read(HeapTuple tup, TupleDesc desc, int first_col, bool whole,
							  TemplateRow *row);
extern const ParsedTemplate *template_cache_get(const TemplateRow *row, MemoryContext holder);
extern void template_cache_reset(void);

/* prompt.c: what we ask the model -------------------------------------------- */

typedef enum SchemaDialect
{
	SCHEMA_JSON,				/* JSON Schema: OpenAI (strict), Anthropic tools */
	SCHEMA_OPENAPI				/* Gemini's OpenAPI subset */
} SchemaDialect;

extern json_object *template_schema(const Template *t, SchemaDialect dialect, bool attributions);
extern json_object *template_json_schema(const Template *t, bool attributions);
extern char *template_system_prompt(const Template *t, const char *additional, bool attributions);

/* coerce.c: typing the model's answer --------------------------------------- */

extern json_object *coerce_value(json_object *v, FormatType f,
								 int noptions, char **options);
extern json_object *coerce_output(json_object *output, const Template *t);
extern json_object *coerce_attributions(json_object *output, const Template *t);
extern json_object *coerce_table_attributions(json_object *output, const Template *t);
extern json_object *json_number_from_double(double d);

/* validation.c: a template's rules against typed data ------------------------ */

extern json_object *validation_run(const char *rules_json, json_object *data, bool *all_passed);

/* charlimit.c: a field's char_limit applied to typed data -------------------- */

extern int	charlimit_apply(json_object *data, const Template *t, json_object *validation);

/* templates.c (SQL): a new extraction may not use this template --------- */

extern void report_template_deactivated(const char *name) pg_attribute_noreturn();

/* citations.c: where on the page each value was found ---------------------- */

extern json_object *citations_build(json_object *answer, json_object *data, const Template *t,
									const pg_uuid_t *extraction, Oid owner);

/* Where a validation rule's field path points: a general field, a column. */
#define GENERAL_PATH_PREFIX "general_part."
#define TABLE_PATH_PREFIX "table_part."

/*
 * SQL: may the role (an SQL expression giving its oid) use template t?  A
 * system template; its own; or one of a group it belongs to that cannot
 * log in.  Not any role it is a member of: a login role may have been
 * granted to it for another purpose (or, on older PostgreSQL 15 releases,
 * have granted itself), which would put its templates in its
 * classification.
 */
#define TEMPLATE_USABLE_BY(role) \
	"(t.owner IS NULL OR t.owner::pg_catalog.oid = " role \
	" OR (pg_catalog.pg_has_role(" role ", t.owner::pg_catalog.oid, 'MEMBER')" \
	"     AND NOT (SELECT r.rolcanlogin FROM pg_catalog.pg_roles r WHERE r.oid = t.owner::pg_catalog.oid)))"

#endif							/* DOCEXTRACT_TEMPLATE_H */
