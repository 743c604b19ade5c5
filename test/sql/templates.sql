-- Templates: validated, versioned, owned.
\set invoice_schema '{"general_part": {"invoice_number": {"name": "Invoice Number", "field_type": "general", "format_type": "text", "position": 1}, "invoice_date": {"name": "Invoice Date", "format_type": "date", "position": 2}, "currency": {"name": "Currency", "format_type": "multiple_choice", "format_options": ["EUR", "USD"], "position": 3}, "paid": {"name": "Paid", "format_type": "boolean", "position": 4}, "total": {"name": "Total", "prompt": "Grand total incl. tax", "format_type": "number", "position": 5, "is_editable": true, "qbo_mapping": "TotalAmt"}}, "table_part": {"description": {"name": "Description", "field_type": "table", "format_type": "text", "position": 1}, "amount": {"name": "Amount", "field_type": "table", "format_type": "number", "position": 2}}}'
\set rules '{"rules": [{"rule_name": "has number", "rule_type": "required", "targets": ["general_part.invoice_number"]}, {"rule_name": "lines add up", "rule_type": "compare_totals", "config": {"set_1": ["table_part.amount"], "set_2": ["general_part.total"], "tolerance": "0.01", "alternatives": [{"set_2": ["general_part.total"], "label": "again"}]}}]}'

SET ROLE regress_alice;
SELECT docextract.create_template('invoice', :'invoice_schema',
       '{"global_instructions": "Be exact.", "general_prompt": "Header fields.", "table_prompt": "Line items."}',
       :'rules', 'Invoices') AS invoice_v1 \gset
SELECT name, version, is_active, parent_id IS NULL AS first, group_id = id AS own_group,
       owner, description FROM docextract.templates;
-- the JSON Schema the model is asked to follow
SELECT jsonb_pretty(docextract.template_json_schema(schema_definition))
  FROM docextract.templates WHERE id = :'invoice_v1';

-- a second template of the same name by the same role is refused
SELECT docextract.create_template('invoice', :'invoice_schema');

-- update_template makes version 2, keeps prompts and rules when not given
SELECT docextract.update_template(:'invoice_v1',
       jsonb_set(:'invoice_schema'::jsonb, '{general_part,due_date}',
                 '{"name": "Due Date", "format_type": "date", "position": 6}')) AS invoice_v2 \gset
SELECT version, is_active, parent_id = :'invoice_v1' AS parent_is_v1,
       prompt_set->>'table_prompt' AS table_prompt,
       jsonb_array_length(validation_rules->'rules') AS rules,
       schema_definition->'general_part' ? 'due_date' AS has_due_date
  FROM docextract.templates ORDER BY version;
-- an old version cannot be updated
SELECT docextract.update_template(:'invoice_v1', :'invoice_schema');
RESET ROLE;

-- another role neither sees nor updates it
SET ROLE regress_bob;
SELECT count(*) FROM docextract.templates;
SELECT sqlstate_of(format('SELECT docextract.update_template(%L, %L)', id, :'invoice_schema'))
  FROM (VALUES (:'invoice_v2'), ('00000000-0000-0000-0000-000000000000')) AS t(id);
RESET ROLE;

-- invalid templates: the error names the key; nothing is stored
SELECT count(*) AS templates_before FROM docextract.templates \gset
SELECT docextract.create_template('bad', NULL);
SELECT docextract.create_template(NULL, '{"general_part": {"a": {"name": "A", "format_type": "text"}}}');
SELECT docextract.create_template('bad', '[]');
SELECT docextract.create_template('bad', '{}');
SELECT docextract.create_template('bad', '{"general_part": {}, "table_part": null}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}}, "lines": {}}');
SELECT docextract.create_template('bad', '{"general_part": {"total": {"name": "Total", "format_type": "money"}}}');
SELECT docextract.create_template('bad', '{"general_part": {"total": {"name": "Total"}}}');
SELECT docextract.create_template('bad', '{"general_part": {"kind": {"name": "Kind", "format_type": "multiple_choice"}}}');
SELECT docextract.create_template('bad', '{"general_part": {"kind": {"name": "Kind", "format_type": "multiple_choice", "format_options": []}}}');
SELECT docextract.create_template('bad', '{"general_part": {"kind": {"name": "Kind", "format_type": "multiple_choice", "format_options": ["a", 2]}}}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text", "field_type": "header"}}}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text", "position": "first"}}}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text", "formt": 1}}}');
SELECT docextract.create_template('bad', '{"general_part": {"a b": {"name": "A", "format_type": "text"}}}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": 5, "format_type": "text"}}}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}}, "table_part": {}}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}}}', '{"general_promt": "x"}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}}}', NULL,
       '{"rules": [{"rule_name": "r", "rule_type": "required", "targets": ["general_part.b"]}]}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}}}', NULL,
       '{"rules": [{"rule_name": "r", "rule_type": "required", "targets": []}]}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}}}', NULL,
       '{"rules": [{"rule_name": "r", "rule_type": "sum"}]}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}}}', NULL,
       '{"rules": [{"rule_type": "required", "targets": ["general_part.a"]}]}');
SELECT docextract.create_template('bad', '{"general_part": {"a": {"name": "A", "format_type": "text"}, "n": {"name": "N", "format_type": "number"}}}', NULL,
       '{"rules": [{"rule_name": "r", "rule_type": "compare_totals", "config": {"set_1": ["general_part.a"], "set_2": ["general_part.n"]}}]}');
SELECT docextract.create_template('bad', '{"general_part": {"n": {"name": "N", "format_type": "number"}}}', NULL,
       '{"rules": [{"rule_name": "r", "rule_type": "compare_totals", "config": {"set_1": ["general_part.n"]}}]}');
SELECT docextract.create_template('bad', '{"general_part": {"n": {"name": "N", "format_type": "number"}}}', NULL,
       '{"rules": [{"rule_name": "r", "rule_type": "compare_totals", "config": {"set_1": ["general_part.n"], "set_2": ["general_part.n"], "tolerance": -1}}]}');
SELECT docextract.create_template('bad', '{"general_part": {"n": {"name": "N", "format_type": "number"}}}', NULL,
       '{"rules": [{"rule_name": "r", "rule_type": "compare_totals", "config": {"set_1": ["general_part.n"], "set_2": ["general_part.n"], "alternatives": [{"set_2": ["table_part.x"]}]}}]}');
SELECT count(*) = :templates_before AS nothing_stored FROM docextract.templates;
