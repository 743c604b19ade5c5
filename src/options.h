/*
 * options.h: the options docextract accepts, one source for each list: a
 * model's options (add_model) and an extraction's (extract_document,
 * extract_sync).  Each name is a macro used wherever the option is read,
 * and each table (options.c) gives every name its type, which validation
 * checks; the hints that list the options are built from the tables.
 */
#ifndef OPTIONS_H
#define OPTIONS_H

#include <stdbool.h>

struct json_object;

/* A model's options (docextract.models.options). */
#define MODEL_OPT_TIMEOUT_MS "timeout_ms"
#define MODEL_OPT_MAX_CONCURRENCY "max_concurrency"
#define MODEL_OPT_REQUESTS_PER_MINUTE "requests_per_minute"
#define MODEL_OPT_TEMPERATURE "temperature"
#define MODEL_OPT_MAX_RETRIES "max_retries"
#define MODEL_OPT_RETRY_BACKOFF_MS "retry_backoff_ms"
#define MODEL_OPT_DOCUMENT_MODE "document_mode"
#define MODEL_OPT_PARALLEL_PARTS "parallel_parts"
#define MODEL_OPT_INPUT_PRICE "input_price_per_million"
#define MODEL_OPT_OUTPUT_PRICE "output_price_per_million"

/* document_mode's values. */
#define DOCUMENT_MODE_TEXT "text"
#define DOCUMENT_MODE_FILE "file"

/* An extraction's options (docextract.extractions.options). */
#define EXTRACT_OPT_MODEL "model"
#define EXTRACT_OPT_TEMPERATURE "temperature"
#define EXTRACT_OPT_SEED "seed"
#define EXTRACT_OPT_MAX_RETRIES "max_retries"
#define EXTRACT_OPT_ADDITIONAL_INSTRUCTIONS "additional_instructions"
#define EXTRACT_OPT_PER_KEY_ATTRIBUTION "per_key_attribution"
#define EXTRACT_OPT_CITATIONS "citations"
#define EXTRACT_OPT_PARALLEL_PARTS "parallel_parts"
#define EXTRACT_OPT_AUTO_APPROVE "auto_approve"
#define EXTRACT_OPT_ZERO_RETENTION "zero_retention"
#define EXTRACT_OPT_FORCE "force"
#define EXTRACT_OPT_PAGES "pages"
#define EXTRACT_OPT_SPLIT "split"

/* What a value must be. */
typedef enum OptionType
{
	OPTION_BOOLEAN,				/* true or false */
	OPTION_STRING,				/* any string */
	OPTION_INTEGER,				/* any integer */
	OPTION_POSITIVE,			/* an integer >= 1 */
	OPTION_NON_NEGATIVE,		/* an integer >= 0 */
	OPTION_RETRIES,				/* an integer from 0 to MAX_RETRIES_CAP */
	OPTION_TEMPERATURE,			/* a number from 0 to 2 */
	OPTION_PRICE,				/* a number >= 0 */
	OPTION_DOCUMENT_MODE		/* DOCUMENT_MODE_TEXT or DOCUMENT_MODE_FILE */
} OptionType;

typedef struct OptionSpec
{
	const char *name;			/* NULL ends a table */
	OptionType	type;
} OptionSpec;

extern const OptionSpec model_options[];
extern const OptionSpec extraction_options[];

extern const OptionSpec *option_find(const OptionSpec *table, const char *name);
extern bool option_value_ok(const OptionSpec *spec, struct json_object *value);
extern const char *option_expected(const OptionSpec *spec);
extern char *option_names(const OptionSpec *table);

#endif							/* OPTIONS_H */
