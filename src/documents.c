/*
 * documents.c: taking documents in.
 *
 * The type comes from the bytes, never from the name; PDFs must open in
 * poppler; pages are counted here because pages are what credits measure.
 */
#include "postgres.h"

#include "document.h"
#include "parser.h"
#include "privileged.h"
#include "settings.h"
#include "spi_checked.h"
#include "statuses.h"
#include "util.h"
#include "workerset.h"

#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/uuid.h"


PG_FUNCTION_INFO_V1(docextract_add_document);
PG_FUNCTION_INFO_V1(docextract_delete_documents);

/* ISO base media brands (bytes 8..11 of an ftyp box) that mean HEIC or HEIF. */
static const char *const heic_brands[] = {"heic", "heix", "hevc", "hevx", "heim", "heis", NULL};
static const char *const heif_brands[] = {"mif1", "msf1", "heif", NULL};

static bool
brand_in(const unsigned char *brand, const char *const *list)
{
	for (int i = 0; list[i]; i++)
		if (memcmp(brand, list[i], 4) == 0)
			return true;
	return false;
}

/* HEIC/HEIF: an ftyp box first; the major brand, or a compatible one, decides. */
static const char *
detect_heif(const unsigned char *d, size_t len)
{
	uint32		box;

	if (len < 16 || !BYTES_START_WITH(d + 4, "ftyp"))
		return NULL;
	box = ((uint32) d[0] << 24) | ((uint32) d[1] << 16) | ((uint32) d[2] << 8) | d[3];
	if (box < 16)
		return NULL;
	box = Min(box, len);
	if (brand_in(d + 8, heic_brands))
		return CONTENT_TYPE_HEIC;
	if (!brand_in(d + 8, heif_brands))
		return NULL;
	/* Compatible brands follow the minor version, from offset 16. */
	for (uint32 off = 16; off + 4 <= box; off += 4)
		if (brand_in(d + off, heic_brands))
			return CONTENT_TYPE_HEIC;
	return CONTENT_TYPE_HEIF;
}

const char *
detect_content_type(const unsigned char *d, size_t len)
{
	static const unsigned char png[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};

	/* PDF readers accept the header anywhere in the first 1024 bytes. */
	for (size_t i = 0; i + strlen("%PDF-") <= len && i < 1024; i++)
		if (BYTES_START_WITH(d + i, "%PDF-"))
			return CONTENT_TYPE_PDF;
	if (len >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff)
		return CONTENT_TYPE_JPEG;
	if (len >= 8 && memcmp(d, png, 8) == 0)
		return CONTENT_TYPE_PNG;
	return detect_heif(d, len);
}

static char *
sha256_hex(const char *data, size_t len)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char	   *hex = palloc(PG_SHA256_DIGEST_LENGTH * 2 + 1);

	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) data, len) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute SHA-256: %s", pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
	hex_encode((const char *) digest, sizeof(digest), hex);
	hex[PG_SHA256_DIGEST_LENGTH * 2] = '\0';
	return hex;
}

static char *
first_bytes_hex(const unsigned char *d, size_t len)
{
	size_t		n = Min(len, 8);
	char	   *hex = palloc(n * 2 + 1);

	hex_encode((const char *) d, n, hex);
	hex[n * 2] = '\0';
	return hex;
}

/* Not empty, not over docextract.max_document_size, or raise 22023. */
void
check_document_size(const char *filename, size_t len)
{
	int64		max_bytes = (int64) docextract_max_document_size * 1024;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"%s\" is empty", filename)));
	if ((int64) len > max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"%s\" is %zu bytes, more than docextract.max_document_size (%lld bytes)",
						filename, len, (long long) max_bytes)));
}

/*
 * Check the bytes; return the content type, set *pages, and for a PDF *text,
 * or raise 22023.
 */
static const char *
check_document(const char *filename, const char *data, size_t len, int *pages, char **text)
{
	const char *type;

	check_document_size(filename, len);
	type = detect_content_type((const unsigned char *) data, len);
	if (type == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"%s\" is not a PDF, JPEG, PNG, HEIC or HEIF file",
						filename),
				 errdetail("Its first bytes are 0x%s.",
						   first_bytes_hex((const unsigned char *) data, len))));
	*text = NULL;
	*pages = strcmp(type, CONTENT_TYPE_PDF) == 0 ? pdf_inspect(data, len, filename, text) : 1;
	return type;
}

static Datum
insert_document(const char *filename, const char *type, bytea *content,
				const char *sha, int pages, const char *doc_text, Oid owner)
{
	Oid			types[7] = {TEXTOID, TEXTOID, BYTEAOID, TEXTOID, INT4OID, OIDOID, TEXTOID};
	Datum		values[7];
	Privileged	priv;
	bool		isnull;
	Datum		id;

	values[0] = CStringGetTextDatum(filename);
	values[1] = CStringGetTextDatum(type);
	values[2] = PointerGetDatum(content);
	values[3] = CStringGetTextDatum(sha);
	values[4] = Int32GetDatum(pages);
	values[5] = ObjectIdGetDatum(owner);
	values[6] = doc_text ? CStringGetTextDatum(doc_text) : (Datum) 0;

	spi_connect();
	privileged_begin(&priv);
	if (spi_execute_with_args(
			"INSERT INTO docextract.documents"
			" (filename, content_type, size_bytes, content, sha256, page_count, owner, text)"
			" VALUES ($1, $2, length($3), $3, $4, $5, $6::regrole, $7) RETURNING id",
			7, types, values, doc_text ? "       " : "      n", false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store document \"%s\"", filename);
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	id = SPI_datumTransfer(id, false, UUID_LEN);
	privileged_end(&priv);
	spi_finish();
	return id;
}

/*
 * check_document() without raising, for the trigger form: NULL when the
 * bytes are a document we take (*type, *pages, *text set), else why not.
 */
char *
document_problem(const char *filename, const char *data, size_t len,
				 const char **type, int *pages, char **text)
{
	int64		max_bytes = (int64) docextract_max_document_size * 1024;

	*type = NULL;
	*text = NULL;
	*pages = 1;
	if (len == 0)
		return psprintf("document \"%s\" is empty", filename);
	if ((int64) len > max_bytes)
		return psprintf("document \"%s\" is %zu bytes, more than docextract.max_document_size (%lld bytes)",
						filename, len, (long long) max_bytes);
	*type = detect_content_type((const unsigned char *) data, len);
	if (*type == NULL)
		return psprintf("document \"%s\" is not a PDF, JPEG, PNG, HEIC or HEIF file (its first bytes are 0x%s)",
						filename, first_bytes_hex((const unsigned char *) data, len));
	if (strcmp(*type, CONTENT_TYPE_PDF) == 0)
		return pdf_problem(data, len, filename, text, pages);
	return NULL;
}

/* Store a document document_problem() accepted, owned by the current user. */
Datum
document_store(const char *filename, const char *type, bytea *content, int pages,
			   const char *text)
{
	return insert_document(filename, type, content,
						   sha256_hex(VARDATA(content), VARSIZE(content) - VARHDRSZ),
						   pages, text, GetUserId());
}

/*
 * Keep a record of bytes that are not a document: their name, size, hash
 * and the rejection, never the bytes (nothing may read them later).
 */
Datum
document_store_rejected(const char *filename, const char *type, bytea *content,
						const char *rejection)
{
	Oid			owner = GetUserId();	/* before acting as the extension owner */
	Privileged	priv;
	bool		isnull;
	Datum		id;
	size_t		len = VARSIZE(content) - VARHDRSZ;

	spi_connect();
	privileged_begin(&priv);
	if (spi_execute_with_args("INSERT INTO docextract.documents"
							  " (filename, content_type, size_bytes, sha256, owner, rejection)"
							  " VALUES ($1, $2, $3, $4, $5::regrole, $6) RETURNING id",
							  6, (Oid[]) {TEXTOID, TEXTOID, INT8OID, TEXTOID, OIDOID, TEXTOID},
							  (Datum[]) {CStringGetTextDatum(filename),
								  CStringGetTextDatum(type ? type : "application/octet-stream"),
								  Int64GetDatum((int64) len),
								  CStringGetTextDatum(sha256_hex(VARDATA(content), len)),
								  ObjectIdGetDatum(owner), CStringGetTextDatum(rejection)},
							  NULL, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record rejected document \"%s\"", filename);
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	id = SPI_datumTransfer(id, false, UUID_LEN);
	privileged_end(&priv);
	spi_finish();
	return id;
}

/*
 * Store a document for the current user: checked (type, size, pages) and
 * parsed first; a bad one raises 22023 and nothing is stored.
 * add_document() and extract_sync's worker both store through here.
 */
Datum
document_add(const char *filename, bytea *content)
{
	const char *type;
	int			pages;
	char	   *doc_text;

	type = check_document(filename, VARDATA(content), VARSIZE(content) - VARHDRSZ, &pages, &doc_text);
	return insert_document(filename, type, content,
						   sha256_hex(VARDATA(content), VARSIZE(content) - VARHDRSZ),
						   pages, doc_text, GetUserId());
}

Datum
docextract_add_document(PG_FUNCTION_ARGS)
{
	char	   *filename;

	if (PG_ARGISNULL(0) || VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(0)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("add_document needs a filename")));
	filename = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("document \"%s\" has no content (NULL)", filename)));
	PG_RETURN_DATUM(document_add(filename, PG_GETARG_BYTEA_P(1)));
}

/*
 * delete_documents(ids): each must be the caller's (or its groups'); with
 * their sub-documents, active extractions are cancelled (credits return,
 * events go out), results removed, bytes and text dropped, deleted_at set.
 */
Datum
docextract_delete_documents(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Datum		ids;
	Privileged	priv;
	int			deleted;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delete_documents needs an array of document ids")));
	ids = PG_GETARG_DATUM(0);
	spi_connect();
	privileged_begin(&priv);
	spi_execute_with_args("SELECT u.id FROM unnest($1::uuid[]) u(id)"
						  "  LEFT JOIN docextract.documents d ON d.id = u.id"
						  " WHERE d.id IS NULL OR NOT pg_has_role($2, d.owner, 'MEMBER') LIMIT 1",
						  2, (Oid[]) {UUIDARRAYOID, OIDOID}, (Datum[]) {ids, ObjectIdGetDatum(caller)},
						  NULL, false, 1);
	if (SPI_processed == 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("document %s does not exist",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))));
	spi_execute_with_args("WITH RECURSIVE doc(id) AS ("
						  "   SELECT unnest($1::uuid[])"
						  "   UNION SELECT d.id FROM docextract.documents d JOIN doc ON d.parent_id = doc.id),"
						  " cancelled AS (UPDATE docextract.extractions e"
						  "   SET status = 'cancelled', completed_at = clock_timestamp(),"
						  "       error_message = 'its document was deleted'"
						  "   WHERE e.document_id IN (SELECT id FROM doc)"
						  "     AND e.status IN " STATUSES_CANCELLABLE
						  "   RETURNING e.id),"	/* data-modifying CTEs run whether read or not */
						  " results AS (DELETE FROM docextract.results r"
						  "   WHERE r.document_id IN (SELECT id FROM doc) RETURNING r.extraction_id)"
						  " UPDATE docextract.documents d SET content = NULL, text = NULL, deleted_at = now()"
						  "  WHERE d.id IN (SELECT id FROM doc) AND d.deleted_at IS NULL",
						  1, (Oid[]) {UUIDARRAYOID}, &ids, NULL, false, 0);
	deleted = (int) SPI_processed;
	privileged_end(&priv);
	spi_finish();
	if (deleted > 0)
		docextract_signal_at_commit(SIGNAL_CANCEL);	/* the worker drops what is in flight */
	PG_RETURN_INT32(deleted);
}
