-- Extractions: enqueue in the caller's transaction (no worker runs here).
SET ROLE regress_alice;
SELECT id AS tid FROM docextract.templates WHERE is_active AND name = 'invoice' \gset
SELECT id AS did FROM docextract.documents WHERE filename = 'invoice.pdf' \gset
SELECT id AS png FROM docextract.documents WHERE filename = 'scan.pdf' \gset

SELECT docextract.extract_document(:'did', :'tid') AS e1 \gset
SELECT status, model_name, attempts, owner, options FROM docextract.extractions;
SELECT s - 'extraction_id' - 'document_id' - 'template_id' - 'created_at' AS status,
       s->>'extraction_id' = :'e1' AS id_ok, s->>'template_id' = :'tid' AS template_ok
  FROM docextract.extraction_status(:'e1') s;
SELECT r - 'extraction_id' - 'document_id' - 'template_id' AS result
  FROM docextract.get_result(:'e1') r;

-- the same document, template and options again: the same extraction
SELECT docextract.extract_document(:'did', :'tid') = :'e1' AS same_id;
SELECT docextract.extract_document(:'did', :'tid', '{}') = :'e1' AS same_id;
-- force makes a new one; other options make a new one
SELECT docextract.extract_document(:'did', :'tid', '{"force": true}') = :'e1' AS same_id;
SELECT docextract.extract_document(:'did', :'tid', '{"temperature": 0.2, "seed": 7}') AS e2 \gset
SELECT docextract.extract_document(:'did', :'tid', '{"seed": 7, "temperature": 0.2}') = :'e2' AS same_id;
SELECT count(*) FROM docextract.extractions;

-- a rolled-back transaction enqueues nothing
BEGIN;
SELECT docextract.extract_document(:'png', :'tid') IS NOT NULL AS enqueued;
SELECT count(*) FROM docextract.extractions WHERE document_id = :'png';
ROLLBACK;
SELECT count(*) FROM docextract.extractions WHERE document_id = :'png';

-- cancel: true once, then false
SELECT docextract.cancel_extraction(:'e2');
SELECT docextract.cancel_extraction(:'e2');
SELECT status, completed_at IS NOT NULL AS ended FROM docextract.extractions WHERE id = :'e2';
-- a cancelled extraction does not count as a duplicate
SELECT docextract.extract_document(:'did', :'tid', '{"temperature": 0.2, "seed": 7}') = :'e2' AS same_id;

-- bad input: clear errors, nothing queued
SELECT count(*) AS before FROM docextract.extractions \gset
SELECT sqlstate_of(format('SELECT docextract.extract_document(%L, %L, %L)', d, t, o))
  FROM (VALUES (NULL, :'tid', '{}'),
               ('00000000-0000-0000-0000-000000000000', :'tid', '{}'),
               (:'did', '00000000-0000-0000-0000-000000000000', '{}'),
               (:'did', :'tid', '{"model": "nope"}'),
               (:'did', :'tid', '{"colour": "red"}'),
               (:'did', :'tid', '{"temperature": "hot"}'),
               (:'did', :'tid', '{"temperature": 2.5}'),
               (:'did', :'tid', '{"seed": 1.5}'),
               (:'did', :'tid', '{"max_retries": -1}'),
               (:'did', :'tid', '{"per_key_attribution": "yes"}'),
               (:'did', :'tid', '[]'),
               (:'did', :'tid', '{"split": "yes"}'),
               (:'did', :'tid', '{"auto_approve": "no"}')) AS bad(d, t, o);
-- one shown in full, with its hint
SELECT docextract.extract_document(:'did', :'tid', '{"model": "nope"}');
SELECT sqlstate_of('SELECT docextract.extraction_status(''00000000-0000-0000-0000-000000000000'')'),
       sqlstate_of('SELECT docextract.get_result(''00000000-0000-0000-0000-000000000000'')'),
       sqlstate_of('SELECT docextract.cancel_extraction(''00000000-0000-0000-0000-000000000000'')');
SELECT count(*) = :before AS nothing_queued FROM docextract.extractions;
RESET ROLE;

-- another role cannot see, use or cancel alice's work
SET ROLE regress_bob;
SELECT count(*) FROM docextract.extractions;
SELECT sqlstate_of(format('SELECT docextract.extract_document(%L, %L)', :'did', :'tid')),
       sqlstate_of(format('SELECT docextract.extraction_status(%L)', :'e1')),
       sqlstate_of(format('SELECT docextract.get_result(%L)', :'e1')),
       sqlstate_of(format('SELECT docextract.cancel_extraction(%L)', :'e1'));
UPDATE docextract.extractions SET status = 'completed';
SELECT count(*) FROM docextract.results;
RESET ROLE;
SELECT status FROM docextract.extractions WHERE id = :'e1';

-- a member of a group role sees what the group owns
ALTER TABLE docextract.documents DISABLE TRIGGER ALL;
UPDATE docextract.documents SET owner = 'regress_team' WHERE id = :'png';
ALTER TABLE docextract.documents ENABLE TRIGGER ALL;
SET ROLE regress_alice;
SELECT filename FROM docextract.documents WHERE owner = 'regress_team'::regrole;
SELECT docextract.extract_document(:'png', :'tid') IS NOT NULL AS member_can_extract;
RESET ROLE;
SET ROLE regress_bob;
SELECT count(*) FROM docextract.documents WHERE owner = 'regress_team'::regrole;
RESET ROLE;

-- status changes are announced by one trigger; event names follow statuses
SELECT docextract.event_name(NULL, 'pending'), docextract.event_name('pending', 'processing'),
       docextract.event_name('processing', 'completed'), docextract.event_name('processing', 'failed'),
       docextract.event_name('awaiting_approval', 'completed'), docextract.event_name('processing', 'pending');
