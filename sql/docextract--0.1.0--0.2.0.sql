-- docextract 0.1.0 -> 0.2.0.  Each change to sql/docextract.sql since 0.1.0
-- has its step here; TAP test 013_upgrade checks that an upgraded schema and
-- a fresh 0.2.0 install have the same catalog.
\echo Use "ALTER EXTENSION docextract UPDATE TO '0.2.0'" to load this file. \quit

-- Model work is always paid for: the answer is charged when it is stored,
-- awaiting approval included, so a later cancel releases nothing.
CREATE OR REPLACE FUNCTION docextract.settle_credits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, docextract AS $$
DECLARE
    kind text;
    after bigint;
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status OR OLD.credits_reserved = 0
       OR NEW.status NOT IN ('completed', 'awaiting_approval', 'failed', 'cancelled',
                             'insufficient_credits') THEN
        RETURN NEW;
    END IF;
    kind := CASE WHEN NEW.status IN ('completed', 'awaiting_approval') THEN 'charge' ELSE 'release' END;
    UPDATE docextract.credit_accounts a
       SET reserved = a.reserved - OLD.credits_reserved,
           balance = a.balance - CASE WHEN kind = 'charge' THEN OLD.credits_reserved ELSE 0 END,
           updated_at = now()
     WHERE a.role = OLD.owner
    RETURNING a.balance - a.reserved INTO after;
    INSERT INTO docextract.credit_ledger (role, kind, credits, available_after, extraction_id,
                                          reason, created_by)
    VALUES (OLD.owner, kind, OLD.credits_reserved, after, OLD.id, NEW.status, OLD.owner);
    IF kind = 'charge' THEN
        NEW.credits_used := OLD.credits_reserved;
    END IF;
    NEW.credits_reserved := 0;
    RETURN NEW;
END
$$;
