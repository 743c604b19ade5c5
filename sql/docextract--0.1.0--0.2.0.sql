-- docextract 0.1.0 -> 0.2.0.  Each change to sql/docextract.sql since 0.1.0
-- has its step here; TAP test 013_upgrade checks that an upgraded schema and
-- a fresh 0.2.0 install have the same catalog.
\echo Use "ALTER EXTENSION docextract UPDATE TO '0.2.0'" to load this file. \quit

-- Crash-loop guard: how often the worker stopped while an extraction was in flight.
ALTER TABLE docextract.extractions ADD COLUMN crashes integer NOT NULL DEFAULT 0;
