-- Credits: reserve at submit, charge on completion, release on failure or
-- cancel; enforce refuses what the balance cannot cover.  No worker runs
-- here, so the superuser plays it with the status changes it makes.
LOAD 'docextract';  -- so that its settings are defined, not placeholders
SET docextract.credits = 'enforce';
-- start from zero: end what the earlier files queued (in track mode), releasing its credits
UPDATE docextract.extractions SET status = 'cancelled' WHERE status = 'pending';
\getenv abs_srcdir PG_ABS_SRCDIR
\set invoice_pdf :abs_srcdir '/fixtures/invoice.pdf'
\set two_pages_pdf :abs_srcdir '/fixtures/two-pages.pdf'
SELECT pg_read_binary_file(:'invoice_pdf') AS invoice_bytes,
       pg_read_binary_file(:'two_pages_pdf') AS two_pages_bytes \gset
SELECT id AS tid FROM docextract.templates WHERE is_active AND name = 'invoice' \gset
SELECT id AS did FROM docextract.documents WHERE filename = 'invoice.pdf' \gset
SELECT id AS two FROM docextract.documents WHERE filename = 'statement.pdf' \gset
-- a system template, usable by every role
SELECT docextract.create_system_template('credit test', schema_definition) AS sys
  FROM docextract.templates WHERE id = :'tid' \gset

-- an ordinary role cannot grant itself credits, nor change the mode
SET ROLE regress_alice;
SELECT sqlstate_of($$SELECT docextract.grant_credits('regress_alice', 100)$$);
SELECT sqlstate_of($$SET docextract.credits = 'track'$$);
SELECT docextract.credit_balance();
-- no credits: refused with 53000, pages and balance named, nothing queued
SELECT count(*) AS before FROM docextract.extractions \gset
SELECT sqlstate_of(format('SELECT docextract.extract_document(%L, %L, %L)', :'two', :'tid', '{"force": true}'));
SELECT count(*) = :before AS nothing_queued FROM docextract.extractions;
RESET ROLE;

-- grants
SELECT docextract.grant_credits('regress_alice', 3, 'trial');
SELECT docextract.grant_credits('regress_team', 10);
SELECT sqlstate_of($$SELECT docextract.grant_credits('regress_nobody', 5)$$);
SELECT sqlstate_of($$SELECT docextract.grant_credits('regress_alice', 0)$$);
SELECT sqlstate_of($$SELECT docextract.grant_credits('regress_alice', -4)$$);
SELECT docextract.credit_balance('regress_alice') AS alice, docextract.credit_balance('regress_team') AS team;

SET ROLE regress_alice;
-- 2 pages of 3 credits: reserved at once
SELECT docextract.extract_document(:'two', :'tid', '{"force": true}') AS e1 \gset
SELECT docextract.credit_balance();
SELECT status, credits_reserved, credits_used FROM docextract.extractions WHERE id = :'e1';
-- 1 credit left, 2 pages asked: refused, with the numbers
SELECT sqlstate_of(format('SELECT docextract.extract_document(%L, %L, %L)', :'two', :'tid', '{"force": true, "seed": 1}'));
-- 1 page fits
SELECT docextract.extract_document(:'did', :'tid', '{"force": true}') AS e2 \gset
SELECT docextract.credit_balance();
-- alice sees her group's balance and ledger, not bob's
SELECT docextract.credit_balance('regress_team');
SELECT sqlstate_of($$SELECT docextract.credit_balance('regress_bob')$$);
-- cancel returns the credits
SELECT docextract.cancel_extraction(:'e2');
SELECT docextract.credit_balance();
-- a second cancel returns nothing more
SELECT docextract.cancel_extraction(:'e2');
SELECT docextract.credit_balance();
RESET ROLE;

-- completion charges (the worker's status change), exactly once
UPDATE docextract.extractions SET status = 'processing' WHERE id = :'e1';
UPDATE docextract.extractions SET status = 'completed' WHERE id = :'e1';
UPDATE docextract.extractions SET status = 'processing' WHERE id = :'e1';
UPDATE docextract.extractions SET status = 'completed' WHERE id = :'e1';
SELECT status, credits_reserved, credits_used FROM docextract.extractions WHERE id = :'e1';
SELECT docextract.credit_balance('regress_alice');
SELECT balance, reserved FROM docextract.credit_accounts WHERE role = 'regress_alice'::regrole;

-- a failure releases
SET ROLE regress_alice;
SELECT docextract.extract_document(:'did', :'tid', '{"force": true, "seed": 2}') AS e3 \gset
RESET ROLE;
UPDATE docextract.extractions SET status = 'failed' WHERE id = :'e3';
SELECT docextract.credit_balance('regress_alice');

-- the ledger: who, how many, which extraction, why; alice sees only hers (and her group's)
SET ROLE regress_alice;
SELECT role, kind, credits, available_after,
       CASE extraction_id WHEN :'e1' THEN 'e1' WHEN :'e2' THEN 'e2' WHEN :'e3' THEN 'e3' END AS extraction,
       reason
  FROM docextract.credit_ledger
 WHERE extraction_id IN (:'e1', :'e2', :'e3') OR kind = 'grant' ORDER BY id;
RESET ROLE;
SET ROLE regress_bob;
SELECT count(*) AS bob_sees FROM docextract.credit_ledger;
SELECT count(*) AS bob_sees FROM docextract.credit_accounts;
RESET ROLE;

-- a group role's submit is charged to the group (SET ROLE names it)
SET ROLE regress_alice;
SET ROLE regress_team;
SELECT docextract.add_document('team.pdf', :'invoice_bytes') AS team_doc \gset
SELECT docextract.extract_document(:'team_doc', :'sys') AS e4 \gset
SELECT owner, credits_reserved FROM docextract.extractions WHERE id = :'e4';
SELECT docextract.credit_balance() AS team_balance;
RESET ROLE;

-- track: records, never refuses (balance may go below zero)
SET docextract.credits = 'track';
SET ROLE regress_bob;
SELECT docextract.add_document('bob.pdf', :'two_pages_bytes') AS bob_doc \gset
SELECT docextract.extract_document(:'bob_doc', :'sys') IS NOT NULL AS queued;
SELECT docextract.credit_balance();
RESET ROLE;

-- max_active_per_role: queued and running extractions per role (still in track mode)
SET docextract.max_active_per_role = 1;
SET ROLE regress_bob;
SELECT sqlstate_of(format('SELECT docextract.extract_document(%L, %L, %L)', :'bob_doc', :'sys', '{"force": true}'));
RESET ROLE;
SET docextract.max_active_per_role = 2;
SET ROLE regress_bob;
SELECT docextract.extract_document(:'bob_doc', :'sys', '{"force": true}') IS NOT NULL AS second_fits;
SELECT sqlstate_of(format('SELECT docextract.extract_document(%L, %L, %L)', :'bob_doc', :'sys', '{"force": true}'));
RESET ROLE;
SET docextract.max_active_per_role = 0;
SET docextract.credits = 'enforce';
