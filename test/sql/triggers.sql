-- The trigger form: one extraction per inserted row, and the write-back of
-- status and data to that row, as the inserting role.  No worker runs here:
-- the superuser makes the status changes the worker would.
SET docextract.credits = 'track';
\getenv abs_srcdir PG_ABS_SRCDIR
\set invoice_pdf :abs_srcdir '/fixtures/invoice.pdf'
SELECT pg_read_binary_file(:'invoice_pdf') AS pdf \gset
GRANT CREATE, USAGE ON SCHEMA public TO regress_alice, regress_bob;

SET ROLE regress_alice;
SELECT docextract.create_template('trigger invoice', '{"general_part": {
  "invoice_number": {"name": "Invoice Number", "format_type": "text"}}}') AS tid \gset
CREATE TABLE public.inbox (id int PRIMARY KEY, pdf bytea, note text, extracted jsonb, state text);
CREATE TRIGGER inbox_extract AFTER INSERT ON public.inbox FOR EACH ROW
  EXECUTE FUNCTION docextract.extract_document('trigger invoice', 'pdf', 'extracted', 'state');

-- a row becomes a document and an extraction of the named template
INSERT INTO public.inbox (id, pdf) VALUES (1, :'pdf'), (2, :'pdf');
SELECT d.filename, d.page_count, x.status, x.template_id = :'tid' AS right_template,
       x.target_table, x.target_pk, x.target_result_column, x.target_status_column
  FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
 WHERE x.target_table = 'public.inbox'::regclass ORDER BY d.filename;
-- the status column mirrors the status from the start, once the write-back
-- worker (here: run_write_backs(), superuser only) has written it
SELECT count(*) AS queued FROM docextract.extractions WHERE writeback_due IS NOT NULL;
SELECT id, state, extracted FROM public.inbox ORDER BY id;
SELECT sqlstate_of($$SELECT docextract.run_write_backs()$$);
RESET ROLE;
SELECT docextract.run_write_backs() AS written;
SET ROLE regress_alice;
SELECT id, state, extracted FROM public.inbox ORDER BY id;
-- a NULL content is nothing to extract
INSERT INTO public.inbox (id, pdf) VALUES (3, NULL);
SELECT count(*) AS extractions FROM docextract.extractions WHERE target_table = 'public.inbox'::regclass;
-- a rolled-back insert enqueues nothing
BEGIN;
INSERT INTO public.inbox (id, pdf) VALUES (4, :'pdf');
ROLLBACK;
SELECT count(*) AS extractions FROM docextract.extractions WHERE target_table = 'public.inbox'::regclass;
-- bad content does not fail the insert: the row's extraction is recorded
-- failed, with why, holding no credits; the bytes are kept only as a record
-- (name, size, hash, rejection), without content or pages
INSERT INTO public.inbox (id, pdf) VALUES (5, 'not a pdf');
SELECT d.filename, d.content_type, d.size_bytes, d.content IS NULL AS no_bytes, d.page_count,
       d.rejection, x.status, x.error_message, x.credits_reserved, x.template_id = :'tid' AS right_template,
       x.completed_at IS NOT NULL AS ended, x.writeback_due IS NOT NULL AS write_back_due
  FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
 WHERE d.filename = 'inbox/5';
SELECT x.id AS e5, x.document_id AS d5 FROM docextract.extractions x
  JOIN docextract.documents d ON d.id = x.document_id WHERE d.filename = 'inbox/5' \gset
SELECT e.event, e.payload->>'status' AS status FROM docextract.events e WHERE e.extraction_id = :'e5';
SELECT docextract.extraction_status(:'e5') - '{extraction_id,document_id,template_id,created_at,completed_at}'::text[];
SELECT docextract.get_result(:'e5') - '{extraction_id,document_id,template_id}'::text[];
-- nothing extracts from the rejected record
SELECT sqlstate_of(format('SELECT docextract.extract_document(%L, %L)', :'d5', :'tid'));
-- docextract.trigger_errors = 'raise': the document's error fails the
-- insert, nothing is stored
SET docextract.trigger_errors = 'raise';
SELECT sqlstate_of($$INSERT INTO public.inbox (id, pdf) VALUES (7, 'not a pdf')$$);
RESET docextract.trigger_errors;
SELECT count(*) AS rows FROM public.inbox;
RESET ROLE;

-- the worker's steps: processing, then completed with a result
SELECT x.id AS e1 FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
 WHERE d.filename = 'inbox/1' \gset
SELECT x.id AS e2 FROM docextract.extractions x JOIN docextract.documents d ON d.id = x.document_id
 WHERE d.filename = 'inbox/2' \gset
UPDATE docextract.extractions SET status = 'processing' WHERE id IN (:'e1', :'e2');
SELECT docextract.run_write_backs() AS written;
SELECT id, state, extracted FROM public.inbox ORDER BY id;
BEGIN;
INSERT INTO docextract.results (extraction_id, document_id, template_id, owner, data)
  SELECT id, document_id, template_id, owner, '{"general": {"invoice_number": "INV-1"}, "table": []}'
    FROM docextract.extractions WHERE id = :'e1';
UPDATE docextract.extractions SET status = 'completed' WHERE id = :'e1';
UPDATE docextract.extractions SET status = 'failed', error_message = 'boom' WHERE id = :'e2';
COMMIT;
SELECT docextract.run_write_backs() AS written;
SELECT id, state, extracted FROM public.inbox ORDER BY id;
SELECT writeback_error FROM docextract.extractions WHERE id IN (:'e1', :'e2');

-- a row deleted before completion is not an error
DELETE FROM public.inbox WHERE id = 2;
UPDATE docextract.extractions SET status = 'processing' WHERE id = :'e2';
SELECT docextract.run_write_backs() AS written;
SELECT writeback_error FROM docextract.extractions WHERE id = :'e2';

-- the write-back acts as the inserting role: bob may insert, not update.
-- The template is looked up by name among those the inserting role may use.
SET ROLE regress_alice;
GRANT SELECT, INSERT ON public.inbox TO regress_bob;
RESET ROLE;
SET ROLE regress_bob;
SELECT docextract.create_template('trigger invoice', '{"general_part": {
  "invoice_number": {"name": "Invoice Number", "format_type": "text"}}}') IS NOT NULL AS bob_template;
SET client_min_messages = error;  -- the WARNING names a random extraction id
INSERT INTO public.inbox (id, pdf) VALUES (6, :'pdf');
RESET ROLE;
SELECT docextract.run_write_backs() AS written;
SET ROLE regress_bob;
RESET client_min_messages;
SELECT x.owner, x.template_id = :'tid' AS alices_template FROM docextract.extractions x
  JOIN docextract.documents d ON d.id = x.document_id WHERE d.filename = 'inbox/6';
RESET ROLE;
SELECT x.id AS e6, x.writeback_error FROM docextract.extractions x
  JOIN docextract.documents d ON d.id = x.document_id WHERE d.filename = 'inbox/6' \gset
SELECT :'writeback_error' AS writeback_error;
SELECT id, state FROM public.inbox WHERE id = 6;

-- a status change while the write-back waits: coalesced, the latest is written
BEGIN;
UPDATE docextract.extractions SET status = 'pending' WHERE id = :'e2';
UPDATE docextract.extractions SET status = 'cancelled' WHERE id = :'e2';
COMMIT;
INSERT INTO public.inbox (id, state) VALUES (2, 'old');
SELECT docextract.run_write_backs() AS written;
SELECT id, state FROM public.inbox WHERE id = 2;
DELETE FROM public.inbox WHERE id = 2;

-- a composite primary key: only the row inserted is written back
SET ROLE regress_alice;
CREATE TABLE public.ledger (tenant text, n int, pdf bytea, out jsonb, PRIMARY KEY (tenant, n));
CREATE TRIGGER ledger_extract AFTER INSERT ON public.ledger FOR EACH ROW
  EXECUTE FUNCTION docextract.extract_document('trigger invoice', 'pdf', 'out');
INSERT INTO public.ledger VALUES ('a', 1, :'pdf'), ('b', 1, :'pdf');
RESET ROLE;
SELECT x.id AS el, x.target_pk FROM docextract.extractions x
  JOIN docextract.documents d ON d.id = x.document_id WHERE d.filename = 'ledger/b,1' \gset
SELECT :'target_pk' AS target_pk;
BEGIN;
UPDATE docextract.extractions SET status = 'processing' WHERE id = :'el';
INSERT INTO docextract.results (extraction_id, document_id, template_id, owner, data)
  SELECT id, document_id, template_id, owner, '{"general": {"invoice_number": "B-1"}, "table": []}'
    FROM docextract.extractions WHERE id = :'el';
UPDATE docextract.extractions SET status = 'completed' WHERE id = :'el';
COMMIT;
SELECT docextract.run_write_backs() AS written;
SELECT tenant, n, out FROM public.ledger ORDER BY tenant;
-- the key changed shape since the insert: nothing written, and why
ALTER TABLE public.ledger DROP CONSTRAINT ledger_pkey, ADD PRIMARY KEY (tenant);
SELECT x.id AS ea FROM docextract.extractions x
  JOIN docextract.documents d ON d.id = x.document_id WHERE d.filename = 'ledger/a,1' \gset
SET client_min_messages = error;
UPDATE docextract.extractions SET status = 'failed' WHERE id = :'ea';
SELECT docextract.run_write_backs() AS written;
RESET client_min_messages;
SELECT writeback_error FROM docextract.extractions WHERE id = :'ea';
SELECT tenant, n, out FROM public.ledger ORDER BY tenant;
DROP TABLE public.ledger;

-- every misconfiguration: a clear error at the first insert, nothing stored
SET ROLE regress_alice;
CREATE TABLE public.bad (id serial PRIMARY KEY, pdf bytea, doc text, out jsonb, out_text text, st int);
CREATE TABLE public.nokey (pdf bytea, out jsonb);
CREATE FUNCTION public.try(trigger_args text, tbl text DEFAULT 'bad', timing text DEFAULT 'AFTER INSERT',
                           level text DEFAULT 'ROW') RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE format('CREATE TRIGGER t %s ON public.%I FOR EACH %s EXECUTE FUNCTION docextract.extract_document(%s)',
                 timing, tbl, level, trigger_args);
  BEGIN
    EXECUTE format('INSERT INTO public.%I (pdf) SELECT pdf FROM public.fixture', tbl);
    r := 'no error';
  EXCEPTION WHEN OTHERS THEN r := SQLSTATE || ': ' || SQLERRM;
  END;
  EXECUTE format('DROP TRIGGER t ON public.%I', tbl);
  RETURN r;
END $$;
CREATE TABLE public.fixture AS SELECT :'pdf'::bytea AS pdf;
-- a template the inserting role cannot use: each row's extraction is
-- recorded failed; under 'raise' the insert fails
SELECT try($$'no such template', 'pdf'$$);
SELECT x.status, x.error_message FROM docextract.extractions x
  JOIN docextract.documents d ON d.id = x.document_id WHERE d.filename ~ '^bad/';
SET docextract.trigger_errors = 'raise';
SELECT try($$'no such template', 'pdf'$$);
RESET docextract.trigger_errors;
SELECT try($$'trigger invoice', 'nope'$$);
SELECT try($$'trigger invoice', 'doc'$$);
SELECT try($$'trigger invoice', 'pdf', 'out_text'$$);
SELECT try($$'trigger invoice', 'pdf', 'out', 'st'$$);
SELECT try($$'trigger invoice', 'pdf', 'out', 'nope'$$);
SELECT try($$'trigger invoice'$$);
SELECT try($$'trigger invoice', 'pdf', 'out', 'out_text', 'extra'$$);
SELECT try($$'trigger invoice', 'pdf', 'out'$$, 'nokey');
SELECT try($$'trigger invoice', 'pdf'$$, 'nokey');
SELECT try($$'trigger invoice', 'pdf'$$, 'bad', 'BEFORE INSERT');
SELECT try($$'trigger invoice', 'pdf'$$, 'bad', 'AFTER INSERT', 'STATEMENT');
-- by id works too
SELECT try(format('%L, %L', :'tid', 'pdf'));
SELECT docextract.extract_document();
SELECT count(*) AS bad_rows FROM public.bad;
RESET ROLE;
DROP TABLE public.inbox, public.bad, public.nokey, public.fixture;
DROP FUNCTION public.try(text, text, text, text);
