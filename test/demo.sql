-- The demo's SQL: run by test/demo.sh with psql variables base_url, model,
-- api_key (may be empty) and dir (where the sample files are).
CREATE EXTENSION docextract;

SELECT docextract.add_model('default', 'openai', :'base_url', :'model',
                            nullif(:'api_key', ''), '{"timeout_ms": 60000}') AS model \gset

SELECT docextract.create_template('invoice', '{
  "general_part": {
    "invoice_number": {"name": "Invoice Number", "format_type": "text", "position": 1},
    "invoice_date":   {"name": "Invoice Date", "format_type": "date", "position": 2},
    "due_date":       {"name": "Due Date", "format_type": "date", "position": 3},
    "vendor_name":    {"name": "Vendor Name", "format_type": "text", "position": 4},
    "currency":       {"name": "Currency", "format_type": "multiple_choice",
                       "format_options": ["EUR", "USD", "GBP"], "position": 5},
    "paid":           {"name": "Paid", "format_type": "boolean", "position": 6},
    "subtotal":       {"name": "Subtotal", "format_type": "number", "position": 7},
    "total_amount":   {"name": "Total Amount", "format_type": "number", "position": 8,
                       "prompt": "The grand total including tax"}
  },
  "table_part": {
    "description": {"name": "Description", "format_type": "text", "position": 1},
    "quantity":    {"name": "Quantity", "format_type": "number", "position": 2},
    "unit_price":  {"name": "Unit Price", "format_type": "number", "position": 3},
    "amount":      {"name": "Amount", "format_type": "number", "position": 4}
  }}',
  '{"global_instructions": "You read invoices and receipts.",
    "general_prompt": "Extract the header fields.",
    "table_prompt": "Extract every line item, in order."}') AS template_id \gset

CREATE TEMP TABLE demo AS
SELECT f AS filename,
       docextract.add_document(f, pg_read_binary_file(:'dir' || '/' || f)) AS document_id
  FROM unnest(ARRAY['invoice.pdf', 'receipt.pdf', 'receipt.png']) f;

\echo
\echo Documents (type detected from the bytes, pages counted by poppler):
SELECT d.filename, d.content_type, d.page_count, d.size_bytes, left(d.sha256, 16) || '…' AS sha256
  FROM demo JOIN docextract.documents d ON d.id = demo.document_id;

-- This session listens; the worker's events arrive as it commits them.
LISTEN docextract;
ALTER TABLE demo ADD COLUMN extraction_id uuid;
-- One credit per page, charged when an extraction completes.
SELECT docextract.grant_credits(current_user, 100, 'demo') AS credits_granted \gset
UPDATE demo SET extraction_id = docextract.extract_document(document_id, :'template_id');

-- Wait (at most 2 minutes) until every extraction has ended.
DO $$
BEGIN
    FOR i IN 1..1200 LOOP
        EXIT WHEN NOT EXISTS (SELECT 1 FROM demo JOIN docextract.extractions e ON e.id = demo.extraction_id
                              WHERE e.status NOT IN ('completed', 'failed', 'cancelled'));
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
\echo
\echo Events received on channel docextract (above), then the typed results:
\echo
\pset format aligned
SELECT demo.filename, e.status, e.attempts,
       round(extract(epoch FROM e.completed_at - e.started_at) * 1000) AS ms,
       e.error_message
  FROM demo JOIN docextract.extractions e ON e.id = demo.extraction_id ORDER BY demo.filename;

SELECT demo.filename, f.key AS field, f.value
  FROM demo, docextract.get_result(demo.extraction_id) r,
       jsonb_each(r->'data'->'general') f
 ORDER BY demo.filename, f.key;

SELECT demo.filename, i AS line, row->>'description' AS description, row->'quantity' AS quantity,
       row->'unit_price' AS unit_price, row->'amount' AS amount
  FROM demo, docextract.get_result(demo.extraction_id) r,
       jsonb_array_elements(r->'data'->'table') WITH ORDINALITY AS t(row, i)
 ORDER BY demo.filename, i;

\echo Credits: 100 granted, one per page charged:
SELECT docextract.credit_balance() AS credits_left;
\echo One whole result, as get_result returns it:
SELECT jsonb_pretty(docextract.get_result(extraction_id)) FROM demo WHERE filename = 'invoice.pdf';
