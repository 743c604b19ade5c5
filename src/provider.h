/*
 * provider.h: model endpoints' wire formats (provider.c, provider_*.c).
 */
#ifndef DOCEXTRACT_PROVIDER_H
#define DOCEXTRACT_PROVIDER_H

#include "prelude.h"
#include "document.h"
#include "template.h"

struct curl_slist;

/* provider_openai.c and friends: wire formats -------------------------------- */

typedef struct ModelConfig
{
	char	   *name;
	char	   *provider;
	char	   *base_url;
	char	   *model;
	char	   *api_key;		/* NULL if none */
	long		timeout_ms;
	bool		send_file;		/* options.document_mode = 'file' */
	bool		has_temperature;
	double		temperature;
	int			max_retries;
	int			retry_backoff_ms;
	double		input_price;	/* per million tokens, 0 if not priced */
	double		output_price;
	bool		priced;
} ModelConfig;

typedef struct ExtractOptions
{
	bool		has_temperature;
	double		temperature;
	bool		has_seed;
	int64		seed;
	bool		has_max_retries;
	int			max_retries;
	bool		per_key_attribution;	/* evidence for every value is asked */
	bool		citations;		/* ... and located on its page (citations.c) */
	bool		auto_approve;
	char	   *additional_instructions;
} ExtractOptions;

typedef struct ProviderReply
{
	json_object *output;		/* the structured answer, owned by caller */
	int64		input_tokens;
	int64		output_tokens;
} ProviderReply;

typedef struct Provider
{
	const char *name;
	/* Fill url, headers and body of a request. */
	void		(*build) (const ModelConfig *m, const Template *t, const DocumentInput *d,
						  const ExtractOptions *o, char **url, struct curl_slist **headers,
						  char **body);
	/* Parse a 2xx body; NULL on success, else a message. */
	char	   *(*parse) (const char *body, size_t len, ProviderReply *reply);
	/* The provider's own error text from a non-2xx body, or NULL. */
	char	   *(*error_text) (const char *body, size_t len);
} Provider;

extern const Provider openai_provider;
extern const Provider gemini_provider;
extern const Provider anthropic_provider;
extern const Provider *provider_lookup(const char *name);
extern char *provider_error_message(const char *body, size_t len);
extern char *document_intro(const DocumentInput *d);
extern struct curl_slist *append_secret_header(struct curl_slist *headers, const char *name,
											   const char *secret);
extern char *request_body(json_object *req);
extern json_object *answer_object(const char *text, char **err);
extern char *redact_secret(const char *text, const char *secret);
extern char *base64_encode(const char *data, size_t len);

/* Retries an extraction may ask for, whatever its options or its model's say. */
#define MAX_RETRIES_CAP 10

#endif							/* DOCEXTRACT_PROVIDER_H */
