-- Models: validated on the way in; API keys readable by the owner only.

\set SHOW_CONTEXT never

-- Test helper: run a statement, return its SQLSTATE and message (ids masked).
CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>', 'g');
END $$;

SELECT docextract.add_model('default', 'openai', 'http://127.0.0.1:9/v1/', 'test-model',
                            'sk-regress-secret-key', '{"timeout_ms": 1000, "max_concurrency": 4}');
SELECT name, provider, base_url, model, options FROM docextract.models;
-- replacing a model keeps one row and one key
SELECT docextract.add_model('default', 'openai', 'http://127.0.0.1:9/v1', 'test-model',
                            'sk-regress-secret-key', '{"timeout_ms": 1000, "document_mode": "text"}');
SELECT count(*) AS models, (SELECT count(*) FROM docextract.model_keys) AS keys
  FROM docextract.models;
-- the three providers
SELECT docextract.add_model('flash', 'gemini', 'https://generativelanguage.googleapis.com/v1beta',
                            'gemini-2.5-flash', 'env:GEMINI_API_KEY');
SELECT docextract.add_model('claude', 'anthropic', 'https://api.anthropic.com/v1',
                            'claude-sonnet-4-5', 'env:ANTHROPIC_API_KEY', '{"max_concurrency": 8}');
SELECT docextract.add_model('x', 'openai', 'http://h/v1', 'm', 'env:not a name');
SELECT name, provider, base_url, model, options FROM docextract.models ORDER BY name;

-- bad input: a clear error, nothing stored
\set VERBOSITY default
SELECT docextract.add_model('x', 'mistral', 'http://h/v1', 'm');
SELECT docextract.add_model('x', 'openai', 'ftp://h/v1', 'm');
SELECT docextract.add_model('x', 'openai', 'http://h/v1', '');
SELECT docextract.add_model('', 'openai', 'http://h/v1', 'm');
SELECT docextract.add_model('x', 'openai', 'http://h/v1', 'm', NULL, '{"timeout_ms": 0}');
SELECT docextract.add_model('x', 'openai', 'http://h/v1', 'm', NULL, '{"temperature": 3}');
SELECT docextract.add_model('x', 'openai', 'http://h/v1', 'm', NULL, '{"document_mode": "ocr"}');
SELECT docextract.add_model('x', 'openai', 'http://h/v1', 'm', NULL, '{"timeoutms": 10}');
SELECT docextract.add_model('x', 'openai', 'http://h/v1', 'm', NULL, '[1]');
SELECT count(*) FROM docextract.models WHERE name = 'x';

-- ordinary roles see models but never a key, and cannot add models
CREATE ROLE regress_alice;
CREATE ROLE regress_bob;
CREATE ROLE regress_team;
GRANT regress_team TO regress_alice;
SET ROLE regress_alice;
SELECT name, model FROM docextract.models ORDER BY name;
SELECT * FROM docextract.model_keys;
SELECT docextract.add_model('mine', 'openai', 'http://h/v1', 'm', 'k');
SELECT count(*) FROM information_schema.columns
 WHERE table_schema = 'docextract' AND column_name ILIKE '%key%';
RESET ROLE;
