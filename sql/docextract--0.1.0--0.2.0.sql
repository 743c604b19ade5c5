-- docextract 0.1.0 -> 0.2.0.  Each change to sql/docextract.sql since 0.1.0
-- has its step here; TAP test 013_upgrade checks that an upgraded schema and
-- a fresh 0.2.0 install have the same catalog.
\echo Use "ALTER EXTENSION docextract UPDATE TO '0.2.0'" to load this file. \quit

-- Write-backs of the trigger form leave the worker's transactions: each
-- status change queues one (writeback_due), the write-back worker does it.
ALTER TABLE docextract.extractions ADD COLUMN writeback_due timestamptz;
CREATE INDEX extractions_writeback_due ON docextract.extractions (writeback_due)
    WHERE writeback_due IS NOT NULL;
DROP TRIGGER extractions_write_back ON docextract.extractions;
CREATE TRIGGER extractions_write_back
    BEFORE UPDATE OF status ON docextract.extractions
    FOR EACH ROW WHEN (NEW.target_table IS NOT NULL)
    EXECUTE FUNCTION docextract.write_back();
CREATE FUNCTION docextract.run_write_backs()
RETURNS integer LANGUAGE C AS 'MODULE_PATHNAME', 'docextract_run_write_backs';
REVOKE ALL ON FUNCTION docextract.run_write_backs() FROM PUBLIC;
