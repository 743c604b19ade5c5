-- docextract 0.1.0 -> 0.2.0.  Each change to sql/docextract.sql since 0.1.0
-- has its step here; TAP test 013_upgrade checks that an upgraded schema and
-- a fresh 0.2.0 install have the same catalog.
\echo Use "ALTER EXTENSION docextract UPDATE TO '0.2.0'" to load this file. \quit

-- Hardening (issue 11): credit_balance(NULL) is NULL, not 0.
ALTER FUNCTION docextract.credit_balance(name) STRICT;

-- Every function of the extension searches pg_catalog, its own schema, and
-- pg_temp last: listed last, so that no role's temporary types or relations
-- can stand in for the extension's (unlisted, pg_temp is searched first for
-- those), and without public or "$user", where other roles may create
-- functions and operators that match a call better than pg_catalog's.
-- Whoever runs them, superusers and the worker included, they never resolve
-- a name to a user's object.  Keep this last: CREATE OR REPLACE
-- FUNCTION above may have replaced a function's SET clauses.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'docextract'::pg_catalog.regnamespace AND p.prokind = 'f'
              ORDER BY p.oid LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION docextract.%I(%s) SET search_path = pg_catalog, docextract, pg_temp',
                                  f.proname, f.args);
    END LOOP;
END
$$;
