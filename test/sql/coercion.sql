-- Typing model output: what the worker does to every value it gets back.
SELECT v AS input, docextract.coerce_value(v, 'number') AS number
  FROM unnest(ARRAY['1234.5', '"1,234.50"', '"1.234,50"', '"EUR 1 469,06"', '"$11.34"',
                    '"(12.00)"', '"-3"', '"12.5%"', '"1,5"', '"1,234"', '"1,234,567"',
                    '"1.234.567"', '"2.5e3"', '"12 345.6"', '"n/a"', '""', 'null', 'true',
                    '"\u221242"', '0.1', '"0.1"', '123456789012.34'
                   ]::jsonb[]) v;
SELECT v AS input, docextract.coerce_value(v, 'date') AS date
  FROM unnest(ARRAY['"2026-03-14"', '"2026/3/4"', '"20260314"', '"14.03.2026"', '"03/14/2026"',
                    '"14/03/2026"', '"3/4/26"', '"March 14, 2026"', '"14 Mar 2026"',
                    '"Mar 14 2026"', '"14-Mar-2026"', '"2026-Mar-14"', '"2026-03-14T10:20:00Z"',
                    '"2026-02-30"', '"2024-02-29"', '"2023-02-29"', '"yesterday"', '"13/13/2026"',
                    '20260314', 'null'
                   ]::jsonb[]) v;
SELECT v AS input, docextract.coerce_value(v, 'boolean') AS boolean
  FROM unnest(ARRAY['true', 'false', '"yes"', '"No"', '" Y "', '"1"', '0', '1', '2', '"checked"',
                    '"maybe"', 'null'
                   ]::jsonb[]) v;
SELECT v AS input, docextract.coerce_value(v, 'multiple_choice', ARRAY['EUR', 'USD', 'Net 30']) AS choice
  FROM unnest(ARRAY['"EUR"', '"usd"', '" net 30 "', '"GBP"', '["EUR"]', '1', 'null']::jsonb[]) v;
SELECT v AS input, docextract.coerce_value(v, 'text') AS text
  FROM unnest(ARRAY['"  ACME Ltd. "', '""', '"null"', '42', 'true', '{"a": 1}', 'null']::jsonb[]) v;
SELECT docextract.coerce_value('"x"', 'money');
