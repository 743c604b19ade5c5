-- docextract 0.1.0 -> 0.2.0.  Each change to sql/docextract.sql since 0.1.0
-- has its step here; TAP test 013_upgrade checks that an upgraded schema and
-- a fresh 0.2.0 install have the same catalog.
\echo Use "ALTER EXTENSION docextract UPDATE TO '0.2.0'" to load this file. \quit

-- Status changes commit even when a listener pins the NOTIFY queue (issue 11).
CREATE OR REPLACE FUNCTION docextract.announce_status() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    event text;
    event_id bigint;
    payload json;
BEGIN
    IF TG_OP = 'INSERT' THEN
        event := docextract.event_name(NULL, NEW.status);
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        event := docextract.event_name(OLD.status, NEW.status);
    ELSIF NEW.status = 'processing'
          AND NEW.completion_percentage > OLD.completion_percentage THEN
        -- One request of a multi-request extraction is done.
        event := 'extraction.progress';
    ELSE
        RETURN NULL;
    END IF;
    event_id := nextval('docextract.events_id_seq');
    payload := json_build_object(
        'event', event,
        'extraction_id', NEW.id,
        'document_id', NEW.document_id,
        'status', NEW.status,
        'template_id', NEW.template_id,
        'attempts', NEW.attempts,
        'completion_percentage', NEW.completion_percentage,
        'event_id', event_id,
        'created_at', clock_timestamp());
    INSERT INTO docextract.events (id, event, extraction_id, owner, payload)
    VALUES (event_id, event, NEW.id, NEW.owner, payload);
    -- A listener that keeps a transaction open pins the NOTIFY queue; once
    -- full, NOTIFY would fail this commit.  The event stays in the outbox.
    IF pg_catalog.pg_notification_queue_usage() <= coalesce(NULLIF(
           pg_catalog.current_setting('docextract.notify_queue_limit', true), '')::float8, 0.9) THEN
        PERFORM pg_catalog.pg_notify('docextract', payload::text);
    ELSE
        RAISE WARNING 'docextract: % of extraction % not sent by NOTIFY: the notification queue is % full',
                      event, NEW.id, pg_catalog.to_char(100 * pg_catalog.pg_notification_queue_usage(), 'FM990.0%')
            USING DETAIL = 'Above docextract.notify_queue_limit.  The event is in docextract.events (id ' || event_id || ').',
                  HINT = 'A session that LISTENs on docextract and keeps a transaction open stops the queue from emptying: end it.';
    END IF;
    INSERT INTO docextract.webhook_deliveries (webhook_id, event_id, owner)
    SELECT w.id, event_id, w.owner FROM docextract.webhooks w
     WHERE w.enabled AND (w.events IS NULL OR event = ANY (w.events))
       AND pg_has_role(w.owner, NEW.owner, 'MEMBER');
    IF FOUND THEN
        PERFORM docextract.deliveries_queued();
    END IF;
    RETURN NULL;
END
$$;

-- The webhook egress policy, checked without connecting (issue 11).
CREATE FUNCTION docextract.egress_allowed(address inet, for_superuser boolean DEFAULT false)
RETURNS boolean LANGUAGE C STRICT STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'docextract_egress_allowed';
GRANT EXECUTE ON FUNCTION docextract.egress_allowed(inet, boolean) TO PUBLIC;
