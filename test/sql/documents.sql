-- Documents: real type from the bytes, pages counted by poppler, sha256 stored.
\getenv abs_srcdir PG_ABS_SRCDIR
\set invoice_pdf :abs_srcdir '/fixtures/invoice.pdf'
\set two_pages_pdf :abs_srcdir '/fixtures/two-pages.pdf'
\set receipt_png :abs_srcdir '/fixtures/receipt.png'
SELECT pg_read_binary_file(:'invoice_pdf') AS invoice_bytes,
       pg_read_binary_file(:'two_pages_pdf') AS two_pages_bytes,
       pg_read_binary_file(:'receipt_png') AS png_bytes \gset

SET ROLE regress_alice;
SELECT docextract.add_document('invoice.pdf', :'invoice_bytes') AS invoice_doc \gset
-- the name says PDF, the bytes say PNG: the bytes win
SELECT docextract.add_document('scan.pdf', :'png_bytes') AS png_doc \gset
SELECT docextract.add_document('statement.pdf', :'two_pages_bytes') AS two_pages_doc \gset
-- JPEG, HEIC and HEIF are recognised by their magic numbers
SELECT docextract.add_document('photo.jpg', '\xffd8ffe000104a46494600010100000100010000ffd9'::bytea) AS jpeg_doc \gset
SELECT docextract.add_document('photo.heic', '\x00000018667479706865696300000000686569636d696631'::bytea) AS heic_doc \gset
SELECT docextract.add_document('photo.heif', '\x00000018667479706d69663100000000000000006d696631'::bytea) AS heif_doc \gset
SELECT docextract.add_document('photo2.heic', '\x0000001c667479706d696631000000006d6966316865696300000000'::bytea) AS heic2_doc \gset
SELECT filename, content_type, size_bytes, page_count, owner,
       sha256 = encode(sha256(content), 'hex') AS sha256_ok, parent_id
  FROM docextract.documents ORDER BY created_at, filename;
RESET ROLE;

-- another role sees none of them
SET ROLE regress_bob;
SELECT count(*) FROM docextract.documents;
-- and cannot write to the table directly
INSERT INTO docextract.documents (filename, content_type, size_bytes, sha256, page_count, owner)
VALUES ('x', 'application/pdf', 1, 'x', 1, 'regress_bob');
UPDATE docextract.documents SET filename = 'stolen';
RESET ROLE;

-- bad input: SQLSTATE 22023, a message that says why, nothing stored
SELECT count(*) AS docs_before FROM docextract.documents \gset
SELECT docextract.add_document('notes.txt', 'hello, world');
SELECT sqlstate_of(format('SELECT docextract.add_document(%L, %L::bytea)', name, bytes))
  FROM (VALUES ('notes.txt', 'hello, world'::bytea),
               ('empty.pdf', ''::bytea),
               ('null.pdf', NULL),
               (NULL, :'invoice_bytes'::bytea),
               ('', :'invoice_bytes'::bytea),
               ('damaged.pdf', '%PDF-1.4 this is not really a PDF'::bytea),
               ('truncated.pdf', substring(:'invoice_bytes'::bytea from 1 for 300)),
               ('avif.heic', '\x0000001c6674797061766966000000006d69663161766966'::bytea),
               ('tiny.heic', '\x0000000866747970'::bytea)) AS bad(name, bytes);
SET docextract.max_document_size = '1kB';
SELECT sqlstate_of(format('SELECT docextract.add_document(%L, %L::bytea)', 'big.pdf', :'invoice_bytes'));
RESET docextract.max_document_size;
SET ROLE regress_alice;
SET docextract.max_document_size = '1MB';
RESET ROLE;
SELECT count(*) = :docs_before AS nothing_stored FROM docextract.documents;

-- the text the openai provider sends by default
SELECT docextract.pdf_text(:'invoice_bytes');
SELECT length(docextract.pdf_text(:'two_pages_bytes')) - length(replace(docextract.pdf_text(:'two_pages_bytes'), chr(12), '')) AS form_feeds;
