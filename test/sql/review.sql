-- Validation rules, review (approve) and system templates.
SET docextract.credits = 'track';
SET ROLE regress_alice;
SELECT docextract.create_template('checked invoice', '{
  "general_part": {
    "invoice_number": {"name": "Invoice Number", "format_type": "text"},
    "subtotal": {"name": "Subtotal", "format_type": "number"},
    "tax": {"name": "Tax", "format_type": "number"},
    "total": {"name": "Total", "format_type": "number"},
    "customer_id": {"name": "Customer", "format_type": "text", "is_editable": false}
  },
  "table_part": {
    "description": {"name": "Description", "format_type": "text"},
    "amount": {"name": "Amount", "format_type": "number"}
  }}', NULL, '{"rules": [
    {"rule_name": "has number and lines", "rule_type": "required",
     "targets": ["general_part.invoice_number", "table_part.amount"]},
    {"rule_name": "total adds up", "rule_type": "compare_totals",
     "config": {"set_1": ["general_part.subtotal", "general_part.tax"],
                "set_2": ["general_part.total"], "tolerance": 0.01}},
    {"rule_name": "lines add up", "rule_type": "compare_totals",
     "config": {"set_1": ["table_part.amount"], "set_2": ["general_part.subtotal"],
                "tolerance": "0",
                "alternatives": [{"set_2": ["general_part.total"], "label": "vs total"}]}}
  ]}') AS ct \gset
RESET ROLE;

CREATE FUNCTION public.verdict(tid uuid, data jsonb) RETURNS TABLE (rule text, passed boolean, details jsonb)
LANGUAGE sql AS $$
  SELECT v->>'rule_name', (v->>'passed')::boolean, v->'details'
    FROM jsonb_array_elements(docextract.validate_data(tid, data)) v
$$;

-- everything passes
SELECT * FROM verdict(:'ct', '{"general": {"invoice_number": "A-1", "subtotal": 100.1, "tax": 19.02, "total": 119.12},
  "table": [{"description": "x", "amount": 60.05}, {"description": "y", "amount": 40.05}]}');
-- tolerance edges: 0.01 off passes, 0.011 off fails
SELECT rule, passed, details->'difference' AS difference FROM verdict(:'ct',
  '{"general": {"invoice_number": "A-1", "subtotal": 100, "tax": 19, "total": 119.01}, "table": []}')
 WHERE rule = 'total adds up';
SELECT rule, passed, details->'difference' AS difference FROM verdict(:'ct',
  '{"general": {"invoice_number": "A-1", "subtotal": 100, "tax": 19, "total": 119.011}, "table": []}')
 WHERE rule = 'total adds up';
-- a null field: required fails and names it; a sum cannot use it
SELECT * FROM verdict(:'ct', '{"general": {"invoice_number": " ", "subtotal": 100, "tax": null, "total": 100},
  "table": [{"description": "x", "amount": 100}]}');
-- no line items: required on a column fails; the column sums to 0
SELECT * FROM verdict(:'ct', '{"general": {"invoice_number": "A-2", "subtotal": 0, "tax": 0, "total": 0}, "table": []}');
-- a line without an amount fails required; the alternative (vs total) passes the lines rule
SELECT * FROM verdict(:'ct', '{"general": {"invoice_number": "A-3", "subtotal": 90, "tax": 10, "total": 100},
  "table": [{"description": "x", "amount": 100}, {"description": "y", "amount": null}]}');
-- neither the primary nor the alternative
SELECT rule, passed, details FROM verdict(:'ct', '{"general": {"invoice_number": "A-4", "subtotal": 90, "tax": 10, "total": 100},
  "table": [{"description": "x", "amount": 5}]}') WHERE rule = 'lines add up';
SELECT sqlstate_of(format('SELECT docextract.validate_data(%L, %L)', :'ct', '[]'));
SELECT sqlstate_of(format('SELECT docextract.validate_data(%L, %L)', '00000000-0000-0000-0000-000000000000', '{}'));

-- approve: only what awaits approval
SET ROLE regress_alice;
SELECT id AS did FROM docextract.documents WHERE filename = 'invoice.pdf' \gset
SELECT docextract.extract_document(:'did', :'ct', '{"auto_approve": false}') AS e \gset
SELECT sqlstate_of(format('SELECT docextract.approve(%L)', :'e'));
RESET ROLE;
-- the worker's part, played by hand: an answer whose total does not add up
UPDATE docextract.extractions SET status = 'processing' WHERE id = :'e';
INSERT INTO docextract.results (extraction_id, document_id, template_id, owner, data, validation)
SELECT id, document_id, template_id, owner,
       '{"general": {"invoice_number": "A-9", "subtotal": 100, "tax": 19, "total": 199, "customer_id": "C1"},
         "table": [{"description": "x", "amount": 100}]}',
       docextract.validate_data(template_id, '{"general": {"invoice_number": "A-9", "subtotal": 100, "tax": 19, "total": 199, "customer_id": "C1"},
         "table": [{"description": "x", "amount": 100}]}')
  FROM docextract.extractions WHERE id = :'e';
UPDATE docextract.extractions SET status = 'awaiting_approval' WHERE id = :'e';

SET ROLE regress_bob;
-- another role cannot see it, let alone approve it
SELECT sqlstate_of(format('SELECT docextract.approve(%L)', :'e'));
RESET ROLE;
SET ROLE regress_alice;
-- bad corrections: each named, nothing changed
SELECT sqlstate_of(format('SELECT docextract.approve(%L, %L)', :'e', c))
  FROM unnest(ARRAY['{"general": {"customer_id": "C2"}}', '{"general": {"nope": 1}}',
                    '{"general": {"total": "lots"}}', '{"lines": []}', '{"table": {}}',
                    '{"table": [{"amount": 1, "colour": "red"}]}', '[]']) c;
SELECT status FROM docextract.extractions WHERE id = :'e';
-- corrections typed like the model's values, rules re-run, approved
SELECT r->'status' AS status, r->'data'->'general' AS general,
       jsonb_path_query_array(r->'validation', '$[*].passed') AS passed, r->'corrections' AS corrections
  FROM docextract.approve(:'e', '{"general": {"total": "119.00"}}') r;
SELECT status, approved_by, approved_at IS NOT NULL AS approved_at_set, completed_at IS NOT NULL AS completed
  FROM docextract.extractions WHERE id = :'e';
SELECT sqlstate_of(format('SELECT docextract.approve(%L)', :'e'));
RESET ROLE;

-- system templates: visible to every role, changed only by the extension owner
SELECT docextract.create_system_template('receipt', '{"general_part": {"total": {"name": "Total", "format_type": "number"}}}') AS st \gset
SET ROLE regress_bob;
SELECT name, owner, version FROM docextract.templates WHERE id = :'st';
SELECT sqlstate_of(format('SELECT docextract.update_template(%L, %L)', :'st', '{"general_part": {"t": {"name": "T", "format_type": "number"}}}'));
SELECT sqlstate_of($$SELECT docextract.create_system_template('mine', '{"general_part": {"t": {"name": "T", "format_type": "number"}}}')$$);
RESET ROLE;
SELECT docextract.update_template(:'st', '{"general_part": {"total": {"name": "Total", "format_type": "number"}, "date": {"name": "Date", "format_type": "date"}}}') AS st2 \gset
SELECT name, owner, version, parent_id = :'st' AS parent_ok, is_active FROM docextract.templates
 WHERE group_id = (SELECT group_id FROM docextract.templates WHERE id = :'st') ORDER BY version;
