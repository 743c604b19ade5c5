-- docextract 0.1.0 -> 0.2.0.  Each change to sql/docextract.sql since 0.1.0
-- has its step here; TAP test 013_upgrade checks that an upgraded schema and
-- a fresh 0.2.0 install have the same catalog.
\echo Use "ALTER EXTENSION docextract UPDATE TO '0.2.0'" to load this file. \quit

-- Backups: every table holds user data (no row is shipped by this script),
-- so pg_dump keeps their rows and the sequences' positions.  A restore
-- loads extractions with their state: the INSERT triggers act only on rows
-- docextract itself enqueues (docextract.submitting), so nothing is
-- reserved, charged or announced twice.  (One call per statement: each
-- updates the extension's row.)
SELECT pg_catalog.pg_extension_config_dump('docextract.models', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.model_keys', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.templates', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.documents', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.extractions', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.results', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.credit_accounts', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.credit_ledger', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.credit_ledger_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.events', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.webhooks', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.webhook_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.webhook_deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.webhook_deliveries_id_seq', '');

-- Rows loaded by a restore carry their own reservation and events.
-- Status changes commit even when a listener pins the NOTIFY queue (issue 11).
-- pdf_text runs the parser helper under settings: not IMMUTABLE (no index,
-- no ANALYZE may run it).
ALTER FUNCTION docextract.pdf_text(bytea) STABLE;
-- Hardening (issue 11): credit_balance(NULL) is NULL, not 0.
ALTER FUNCTION docextract.credit_balance(name) STRICT;

-- The webhook egress policy, checked without connecting (issue 11).
CREATE FUNCTION docextract.egress_allowed(address inet, for_superuser boolean DEFAULT false)
RETURNS boolean LANGUAGE C STRICT STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'docextract_egress_allowed';
GRANT EXECUTE ON FUNCTION docextract.egress_allowed(inet, boolean) TO PUBLIC;

-- Crash-loop guard: how often the worker stopped while an extraction was in flight.
ALTER TABLE docextract.extractions ADD COLUMN crashes integer NOT NULL DEFAULT 0;

-- The status sets the install script tests, one definition each (the C
-- code's are in src/statuses.h).  Queued or running: they count against
-- docextract.max_active_per_role.
CREATE FUNCTION docextract.active_statuses() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['pending', 'classifying', 'processing', 'retrying'];
-- The model's work is over: credits settle, zero_retention drops the
-- bytes, the outcome is counted.
CREATE FUNCTION docextract.outcome_statuses() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['completed', 'awaiting_approval', 'failed', 'cancelled', 'insufficient_credits'];
GRANT EXECUTE ON FUNCTION docextract.active_statuses() TO PUBLIC;
GRANT EXECUTE ON FUNCTION docextract.outcome_statuses() TO PUBLIC;

-- Model work is always paid for: the answer is charged when it is stored,
-- awaiting approval included, so a later cancel releases nothing.
-- Write-backs of the trigger form leave the worker's transactions: each
-- status change queues one (writeback_due), the write-back worker does it.
ALTER TABLE docextract.extractions ADD COLUMN writeback_due timestamptz;
ALTER TABLE docextract.extractions ADD COLUMN page_numbers integer[];
ALTER TABLE docextract.results ADD COLUMN table_attributions jsonb;
ALTER TABLE docextract.results ADD COLUMN citations jsonb;
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

-- Deactivate a template (offered to no new extraction) or make this version
-- its group's active one.
CREATE FUNCTION docextract.set_template_active(template_id uuid, active boolean)
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'docextract_set_template_active';
GRANT EXECUTE ON FUNCTION docextract.set_template_active(uuid, boolean) TO PUBLIC;

-- For operators: per model, the max_concurrency it sets, what it gets,
-- which of the worker's limits caps it (NULL: none), and its requests in
-- flight now (shared memory: every process).  Reads only what any
-- role may read (models, settings), so PUBLIC may call it.
CREATE FUNCTION docextract.worker_limits(OUT model_name text, OUT max_concurrency integer,
                                         OUT effective_concurrency integer, OUT capped_by text,
                                         OUT requests_in_flight integer)
RETURNS SETOF record LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'docextract_worker_limits';
GRANT EXECUTE ON FUNCTION docextract.worker_limits() TO PUBLIC;

-- The trigger form records a row it cannot submit (issue 13): a document
-- row for bytes that are not a document (no pages, the rejection says why),
-- an extraction that starts failed or insufficient_credits, announced as
-- such, holding no credits.
ALTER TABLE docextract.documents ALTER COLUMN page_count DROP NOT NULL;
ALTER TABLE docextract.documents ADD COLUMN rejection text;
-- The event a status change announces.  A SQL-standard body (RETURN): its
-- names are bound when it is created, so it needs no search_path and is
-- inlined into announce_status()'s statement instead of being planned and
-- run as a function for every batch (see the end of this script).
CREATE OR REPLACE FUNCTION docextract.event_name(old_status text, new_status text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 'extraction.' || CASE
        -- A row the trigger form could not submit starts failed.
        WHEN old_status IS NULL AND new_status IN ('failed', 'insufficient_credits') THEN new_status
        WHEN old_status IS NULL THEN 'queued'
        WHEN new_status = 'processing' THEN 'started'
        WHEN new_status = 'completed' AND old_status = 'awaiting_approval' THEN 'approved'
        WHEN new_status = 'pending' THEN 'requeued'
        ELSE new_status END;


-- The write-back worker's pick: owners in turn without sorting every due row.
CREATE INDEX extractions_writeback_owner ON docextract.extractions (owner, writeback_due)
    WHERE writeback_due IS NOT NULL;

-- Issue 12: worker_stats reads live rows and counters, not all history.
-- worker_stats' outcomes and usage per model and owner, kept as extractions
-- end so that the view reads no history.  Each ended extraction (and each
-- stored result) inserts a row into model_stat_deltas, in the transaction
-- of that change; the worker folds them into model_stats now and then.
-- Insert-only: no status change ever waits for another's row lock, and the
-- retention cleanup (which leaves these counts alone) touches neither.
CREATE TABLE docextract.model_stats (
    model_name      text NOT NULL,
    owner           regrole NOT NULL,
    completed       bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    cancelled       bigint NOT NULL DEFAULT 0,
    retries         bigint NOT NULL DEFAULT 0,      -- attempts beyond the first
    latency_ms_sum  numeric NOT NULL DEFAULT 0,
    latency_n       bigint NOT NULL DEFAULT 0,
    input_tokens    numeric NOT NULL DEFAULT 0,
    output_tokens   numeric NOT NULL DEFAULT 0,
    cost            numeric,                        -- NULL while no result was priced
    PRIMARY KEY (model_name, owner)
);
CREATE TABLE docextract.model_stat_deltas (
    model_name      text NOT NULL,
    owner           regrole NOT NULL,
    completed       bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    cancelled       bigint NOT NULL DEFAULT 0,
    retries         bigint NOT NULL DEFAULT 0,
    latency_ms_sum  numeric NOT NULL DEFAULT 0,
    latency_n       bigint NOT NULL DEFAULT 0,
    input_tokens    numeric NOT NULL DEFAULT 0,
    output_tokens   numeric NOT NULL DEFAULT 0,
    cost            numeric
);
ALTER TABLE docextract.model_stats ENABLE ROW LEVEL SECURITY;
ALTER TABLE docextract.model_stat_deltas ENABLE ROW LEVEL SECURITY;
CREATE POLICY model_stats_visible ON docextract.model_stats FOR SELECT
    USING (pg_catalog.pg_has_role(current_user, owner, 'MEMBER'));
CREATE POLICY model_stat_deltas_visible ON docextract.model_stat_deltas FOR SELECT
    USING (pg_catalog.pg_has_role(current_user, owner, 'MEMBER'));
REVOKE ALL ON docextract.model_stats, docextract.model_stat_deltas FROM PUBLIC;
GRANT SELECT ON docextract.model_stats, docextract.model_stat_deltas TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('docextract.model_stats', '');
SELECT pg_catalog.pg_extension_config_dump('docextract.model_stat_deltas', '');

-- An extraction ended (or awaits review: its attempts are over).  Its
-- retries are counted once, when its attempts end.  Only status changes
-- count: rows loaded by a restore come with their counts.
CREATE FUNCTION docextract.count_outcome() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, docextract, pg_temp
SET enable_nestloop = off AS $$
BEGIN
    INSERT INTO docextract.model_stat_deltas (model_name, owner, completed, failed, cancelled, retries)
    SELECT n.model_name, n.owner, sum((n.status = 'completed')::integer),
           sum((n.status = 'failed')::integer), sum((n.status = 'cancelled')::integer),
           sum(CASE WHEN o.status = 'awaiting_approval' THEN 0
                    ELSE greatest(n.attempts - 1, 0) END)
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.status IS DISTINCT FROM o.status
       AND n.status = ANY (docextract.outcome_statuses())
     GROUP BY n.model_name, n.owner;
    RETURN NULL;
END
$$;

CREATE TRIGGER extractions_count_outcome
    AFTER UPDATE OF status ON docextract.extractions
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status
                       AND NEW.status = ANY (docextract.outcome_statuses()))
    EXECUTE FUNCTION docextract.count_outcome();

-- For operators: the queue and its outcomes per model.  security_invoker, so
-- each role counts the rows it may see; superusers see everything.  Live
-- rows are read through the queue's partial indexes; outcomes and usage
-- from the counters above (since install: the retention cleanup leaves
-- them alone).
CREATE OR REPLACE VIEW docextract.worker_stats WITH (security_invoker = true) AS
-- What caps each model now (docextract.worker_limits()): NULL when its own limits decide.
SELECT w.*, l.effective_concurrency, l.capped_by FROM (
SELECT s.model_name,
       sum(s.in_flight)::bigint AS in_flight,
       sum(s.queued)::bigint AS queued,
       sum(s.retrying)::bigint AS retrying,
       sum(s.completed)::bigint AS completed,
       sum(s.failed)::bigint AS failed,
       sum(s.cancelled)::bigint AS cancelled,
       sum(s.retries)::bigint AS retries,
       round(sum(s.latency_ms_sum) / nullif(sum(s.latency_n), 0), 1) AS mean_latency_ms,
       sum(s.input_tokens) AS input_tokens,
       sum(s.output_tokens) AS output_tokens,
       sum(s.cost) AS cost
  FROM (SELECT l.model_name,
               count(*) FILTER (WHERE l.status IN ('processing', 'classifying')) AS in_flight,
               count(*) FILTER (WHERE l.status = 'pending') AS queued,
               count(*) FILTER (WHERE l.status = 'retrying') AS retrying,
               0 AS completed, 0 AS failed, 0 AS cancelled,
               sum(greatest(l.attempts - 1, 0)) AS retries,
               0 AS latency_ms_sum, 0 AS latency_n, 0 AS input_tokens, 0 AS output_tokens,
               NULL::numeric AS cost
          FROM (SELECT x.model_name, x.status, x.attempts FROM docextract.extractions x
                 WHERE x.status IN ('pending', 'retrying')
                UNION ALL
                SELECT x.model_name, x.status, x.attempts FROM docextract.extractions x
                 WHERE x.status = 'processing'
                -- A classification request in flight (extractions_classifying).
                UNION ALL
                SELECT x.model_name, x.status, x.attempts FROM docextract.extractions x
                 WHERE x.status = 'classifying') l
         GROUP BY l.model_name
        UNION ALL
        SELECT t.model_name, 0, 0, 0, t.completed, t.failed, t.cancelled, t.retries,
               t.latency_ms_sum, t.latency_n, t.input_tokens, t.output_tokens, t.cost
          FROM docextract.model_stats t
        UNION ALL
        SELECT d.model_name, 0, 0, 0, d.completed, d.failed, d.cancelled, d.retries,
               d.latency_ms_sum, d.latency_n, d.input_tokens, d.output_tokens, d.cost
          FROM docextract.model_stat_deltas d) s
 GROUP BY s.model_name) w
  LEFT JOIN docextract.worker_limits() l USING (model_name);
GRANT SELECT ON docextract.worker_stats TO PUBLIC;
REVOKE ALL ON FUNCTION docextract.count_outcome() FROM PUBLIC;
-- The counts so far, from the rows (once, here).
INSERT INTO docextract.model_stats (model_name, owner, completed, failed, cancelled, retries,
                                    latency_ms_sum, latency_n, input_tokens, output_tokens, cost)
SELECT e.model_name, e.owner,
       count(*) FILTER (WHERE e.status = 'completed'),
       count(*) FILTER (WHERE e.status = 'failed'),
       count(*) FILTER (WHERE e.status = 'cancelled'),
       coalesce(sum(greatest(e.attempts - 1, 0))
                FILTER (WHERE e.status NOT IN ('pending', 'classifying', 'processing', 'retrying')), 0),
       coalesce(sum((r.usage->>'latency_ms')::numeric), 0),
       count(r.usage->>'latency_ms'),
       coalesce(sum((r.usage->>'input_tokens')::numeric), 0),
       coalesce(sum((r.usage->>'output_tokens')::numeric), 0),
       sum((r.usage->>'cost')::numeric)
  FROM docextract.extractions e
  LEFT JOIN docextract.results r ON r.extraction_id = e.id
 GROUP BY e.model_name, e.owner;


-- zero_retention: its statuses are docextract.outcome_statuses().
DROP TRIGGER extractions_zero_retention ON docextract.extractions;
CREATE TRIGGER extractions_zero_retention
    AFTER UPDATE OF status ON docextract.extractions
    FOR EACH ROW WHEN (NEW.status = ANY (docextract.outcome_statuses())
                       AND (NEW.options->>'zero_retention')::boolean)
    EXECUTE FUNCTION docextract.drop_document_bytes();

-- Status changes announced and counted once per statement (transition
-- tables), not once per row; new rows announced by a row trigger of their
-- own, extraction.queued no longer sent by NOTIFY (its outbox row stays);
-- credits settled only by the rows that settle.
DROP TRIGGER extractions_announce ON docextract.extractions;
DROP TRIGGER extractions_count_outcome ON docextract.extractions;
DROP TRIGGER extractions_settle_credits ON docextract.extractions;
CREATE FUNCTION docextract.deliver_events(ids bigint[], events text[], owners regrole[],
                                          extractions uuid[], notified boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
BEGIN
    -- A listener that keeps a transaction open pins the NOTIFY queue; once
    -- full, NOTIFY would fail this commit.  The events stay in the outbox.
    IF NOT notified THEN
        FOR i IN 1 .. pg_catalog.cardinality(ids) LOOP
            RAISE WARNING 'docextract: % of extraction % not sent by NOTIFY: the notification queue is % full',
                          events[i], extractions[i], pg_catalog.to_char(100 * pg_catalog.pg_notification_queue_usage(), 'FM990.0%')
                USING DETAIL = 'Above docextract.notify_queue_limit.  The event is in docextract.events (id ' || ids[i] || ').',
                      HINT = 'A session that LISTENs on docextract and keeps a transaction open stops the queue from emptying: end it.';
        END LOOP;
    END IF;
    INSERT INTO docextract.webhook_deliveries (webhook_id, event_id, owner)
    SELECT w.id, e.id, w.owner
      FROM ROWS FROM (pg_catalog.unnest(ids), pg_catalog.unnest(events), pg_catalog.unnest(owners))
           AS e(id, event, owner), docextract.webhooks w
     WHERE w.enabled AND (w.events IS NULL OR e.event = ANY (w.events))
       AND pg_has_role(w.owner, e.owner, 'MEMBER')
     ORDER BY e.id
    -- A webhook a session is dropping (its row held until that session
    -- ends) gets no delivery: the worker, whose status changes land
    -- here, never waits for a role's open transaction.
       FOR KEY SHARE OF w SKIP LOCKED;
    IF FOUND THEN
        PERFORM docextract.deliveries_queued();
    END IF;
END
$$;
REVOKE ALL ON FUNCTION docextract.deliver_events(bigint[], text[], regrole[], uuid[], boolean) FROM PUBLIC;

CREATE FUNCTION docextract.announce_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    event text;
    event_id bigint;
    payload json;
    notified boolean;
    hooks boolean;
BEGIN
    IF pg_catalog.current_setting('docextract.submitting', true) IS DISTINCT FROM 'on' THEN
        RETURN NULL;    -- loaded with its state (a restore): its events come with it
    END IF;
    event := CASE WHEN NEW.status IN ('failed', 'insufficient_credits') THEN 'extraction.' || NEW.status
                  ELSE 'extraction.queued' END;    -- docextract.event_name(NULL, NEW.status)
    INSERT INTO docextract.events (id, event, extraction_id, owner, payload)
    SELECT n.id, event, NEW.id, NEW.owner, json_build_object(
        'event', event,
        'extraction_id', NEW.id,
        'document_id', NEW.document_id,
        'status', NEW.status,
        'template_id', NEW.template_id,
        'attempts', NEW.attempts,
        'completion_percentage', NEW.completion_percentage,
        'event_id', n.id,
        'created_at', clock_timestamp())
      FROM (SELECT nextval('docextract.events_id_seq') AS id) n
    RETURNING id, events.payload, EXISTS (SELECT 1 FROM docextract.webhooks w WHERE w.enabled)
      INTO event_id, payload, hooks;
    -- extraction.queued: in the outbox only.
    notified := event = 'extraction.queued' OR pg_catalog.pg_notification_queue_usage() <= coalesce(NULLIF(
        pg_catalog.current_setting('docextract.notify_queue_limit', true), '')::float8, 0.9);
    IF notified AND event <> 'extraction.queued' THEN
        PERFORM pg_catalog.pg_notify('docextract', payload::text);
    END IF;
    -- Nothing to warn of and no webhook: no call (it is a submit's cost).
    IF NOT notified OR hooks THEN
        PERFORM docextract.deliver_events(ARRAY[event_id], ARRAY[event], ARRAY[NEW.owner::regrole],
                                          ARRAY[NEW.id], notified);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER extractions_announce
    AFTER UPDATE ON docextract.extractions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docextract.announce_status();
REVOKE ALL ON FUNCTION docextract.announce_insert() FROM PUBLIC;

CREATE TRIGGER extractions_count_outcome
    AFTER UPDATE ON docextract.extractions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docextract.count_outcome();

CREATE TRIGGER extractions_settle_credits
    BEFORE UPDATE OF status ON docextract.extractions
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status AND OLD.credits_reserved <> 0
                       AND NEW.credits_reserved <> 0
                       AND NEW.status = ANY (docextract.outcome_statuses()))
    EXECUTE FUNCTION docextract.settle_credits();

-- Classification (template_id NULL, issue 13): what was offered and chosen;
-- a classification's progress is announced; an extraction that awaits a
-- reviewer's pick of its template is not charged and keeps its bytes.
ALTER TABLE docextract.extractions ADD COLUMN classification jsonb;


-- Issue 13: options.split.  Sub-documents' extractions name their parent,
-- which holds the credits of all and follows them (trigger split_follow).
ALTER TABLE docextract.extractions ADD COLUMN parent_extraction_id uuid;
ALTER TABLE docextract.extractions ADD COLUMN split_count integer;
-- A parent's sub-documents are made once: one per document of its pages.
CREATE UNIQUE INDEX extractions_split_children ON docextract.extractions (parent_extraction_id, document_id)
    WHERE parent_extraction_id IS NOT NULL;
-- A split document's pages a to b are one sub-document, whichever
-- extraction split it.
CREATE UNIQUE INDEX documents_split_range ON docextract.documents (parent_id, page_start, page_end)
    WHERE parent_id IS NOT NULL AND deleted_at IS NULL;

-- A submit's own row announces itself (submit.c); this, the others.
CREATE TRIGGER extractions_announce_insert
    AFTER INSERT ON docextract.extractions
    FOR EACH ROW WHEN (NEW.status <> 'pending' OR NEW.parent_extraction_id IS NOT NULL)
    EXECUTE FUNCTION docextract.announce_insert();

CREATE FUNCTION docextract.split_follow() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    p docextract.extractions;
    total integer;
    ended integer;
    done integer;
    read_pages integer;
    unread text;
    after bigint;
BEGIN
    IF NEW.split_count IS NOT NULL THEN
        IF NEW.status = 'cancelled' THEN
            UPDATE docextract.extractions c SET status = 'cancelled', completed_at = clock_timestamp()
             WHERE c.parent_extraction_id = NEW.id
               AND c.status IN ('pending', 'classifying', 'processing', 'retrying', 'awaiting_approval');
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.status NOT IN ('completed', 'failed', 'cancelled', 'insufficient_credits') THEN
        RETURN NULL;
    END IF;
    -- Found by its id alone, its status tested here: with the status in
    -- the query, the planner may read every job in flight for it instead
    -- (ROW_STATUS_IS, src/statuses.h).
    SELECT * INTO p FROM docextract.extractions x WHERE x.id = NEW.parent_extraction_id FOR UPDATE;
    IF NOT FOUND OR p.status <> 'processing' THEN
        RETURN NULL;
    END IF;
    SELECT count(*),
           count(*) FILTER (WHERE c.status IN ('completed', 'failed', 'cancelled', 'insufficient_credits')),
           count(*) FILTER (WHERE c.status = 'completed'),
           -- Read: completed (its result is stored in the same transaction,
           -- after this status change), or answered before it ended.
           coalesce(sum(d.page_end - d.page_start + 1)
                    FILTER (WHERE c.status = 'completed' OR r.extraction_id IS NOT NULL), 0),
           string_agg(format('pages %s-%s %s', d.page_start, d.page_end, c.status), ', '
                      ORDER BY d.page_start) FILTER (WHERE c.status <> 'completed')
      INTO total, ended, done, read_pages, unread
      FROM docextract.extractions c
      JOIN docextract.documents d ON d.id = c.document_id
      LEFT JOIN docextract.results r ON r.extraction_id = c.id
     WHERE c.parent_extraction_id = p.id;
    IF ended < total THEN
        UPDATE docextract.extractions x
           SET completion_percentage = greatest(x.completion_percentage, 10 + 90 * ended / total)
         WHERE x.id = p.id;
        RETURN NULL;
    END IF;
    -- Pages no answer was stored for are returned; settle_credits charges the rest.
    IF read_pages > 0 AND p.credits_reserved > read_pages THEN
        INSERT INTO docextract.credit_slot_deltas (role, slot, balance_delta, reserved_delta)
        VALUES (p.owner, coalesce(p.credit_slot, 0), 0, -(p.credits_reserved - read_pages));
        after := docextract.credit_available_after(p.owner, p.credits_reserved - read_pages);
        INSERT INTO docextract.credit_ledger (role, kind, credits, available_after, extraction_id,
                                              reason, created_by)
        VALUES (p.owner, 'release', p.credits_reserved - read_pages, after, p.id,
                'sub-documents not read: ' || unread, p.owner);
        -- Apart: settle_credits charges what the row held before its status change.
        UPDATE docextract.extractions x SET credits_reserved = read_pages WHERE x.id = p.id;
    END IF;
    UPDATE docextract.extractions x
       SET status = CASE WHEN read_pages > 0 THEN 'completed' ELSE 'failed' END,
           completion_percentage = CASE WHEN read_pages > 0 THEN 100 ELSE x.completion_percentage END,
           completed_at = clock_timestamp(),
           error_message = CASE WHEN done < total
                                THEN format('%s of %s sub-documents did not complete: %s',
                                            total - done, total, unread) END
     WHERE x.id = p.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER extractions_split_follow
    AFTER UPDATE OF status ON docextract.extractions
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status
                       AND (NEW.parent_extraction_id IS NOT NULL OR NEW.split_count IS NOT NULL))
    EXECUTE FUNCTION docextract.split_follow();

CREATE FUNCTION docextract.split_overall_status(extraction_id uuid)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, docextract, pg_temp AS $$
    SELECT CASE
        WHEN NOT coalesce((e.options->>'split')::boolean, false) THEN NULL
        WHEN e.status IN ('cancelled', 'insufficient_credits') THEN e.status
        WHEN e.split_count IS NULL AND e.status = 'failed' THEN 'failed'
        WHEN e.split_count IS NULL THEN 'splitting'
        WHEN s.active > 0 THEN 'processing'
        WHEN s.review > 0 THEN 'awaiting_approval'
        WHEN s.done = s.total THEN 'completed'
        WHEN s.done > 0 THEN 'partially_completed'
        ELSE 'failed' END
      FROM docextract.extractions e
      LEFT JOIN LATERAL (
          SELECT count(*) AS total,
                 count(*) FILTER (WHERE c.status IN ('pending', 'classifying', 'processing', 'retrying')) AS active,
                 count(*) FILTER (WHERE c.status = 'awaiting_approval') AS review,
                 count(*) FILTER (WHERE c.status = 'completed') AS done
            FROM docextract.extractions c WHERE c.parent_extraction_id = e.id) s ON true
     WHERE e.id = split_overall_status.extraction_id
$$;

REVOKE ALL ON FUNCTION docextract.split_follow() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION docextract.split_overall_status(uuid) TO PUBLIC;

-- A split parent's pages whose sub-documents were read: completed, or
-- answered (a result stored) before they ended otherwise.
CREATE FUNCTION docextract.split_pages_read(parent uuid) RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, docextract, pg_temp
RETURN (SELECT coalesce(sum(d.page_end - d.page_start + 1), 0)::integer
          FROM docextract.extractions c
          JOIN docextract.documents d ON d.id = c.document_id
         WHERE c.parent_extraction_id = parent
           AND (c.status = 'completed'
                OR EXISTS (SELECT 1 FROM docextract.results r WHERE r.extraction_id = c.id)));

REVOKE ALL ON FUNCTION docextract.split_pages_read(uuid) FROM PUBLIC;

-- Issue 12: a role's credit account in eight slots, so that its concurrent
-- submits reserve in different rows instead of committing one after the
-- other; credit_accounts becomes the view that sums them.  The 0.1.0 row
-- is slot 0; its free credits are spread over the eight at the first
-- gather (a grant, or a submit that finds no slot free enough).
ALTER TABLE docextract.credit_accounts RENAME TO credit_slots;
ALTER TABLE docextract.credit_slots RENAME CONSTRAINT credit_accounts_reserved_check TO credit_slots_reserved_check;
ALTER TABLE docextract.credit_slots
    ADD COLUMN slot smallint NOT NULL DEFAULT 0 CHECK (slot >= 0 AND slot < 8),
    DROP CONSTRAINT credit_accounts_pkey,
    ADD PRIMARY KEY (role, slot);
ALTER POLICY credit_accounts_visible ON docextract.credit_slots RENAME TO credit_slots_visible;
INSERT INTO docextract.credit_slots (role, slot, updated_at)
SELECT a.role, g, a.updated_at FROM docextract.credit_slots a, pg_catalog.generate_series(1, 7) g;
ALTER TABLE docextract.extractions ADD COLUMN credit_slot smallint;
-- Settling (the worker's status changes, a cancel) locks no slot: it adds a
-- row here (every extraction adds and removes a few: vacuumed after every
-- thousand dead rows, not a fraction of the table), folded into its slot later (fold_credit_deltas: by the worker on
-- its polls, and by any submit that gathers the role's slots).  A charge
-- leaves the slot's free credits as they are (balance and reserved go down
-- alike); a release adds to them.
CREATE TABLE docextract.credit_slot_deltas (
    role            regrole NOT NULL,
    slot            smallint NOT NULL,
    balance_delta   bigint NOT NULL,
    reserved_delta  bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
CREATE INDEX credit_slot_deltas_slot ON docextract.credit_slot_deltas (role, slot);
-- What the available credits read: releases only (a charge adds nothing).
CREATE INDEX credit_slot_deltas_free ON docextract.credit_slot_deltas (role, slot)
    WHERE balance_delta <> reserved_delta;
ALTER TABLE docextract.credit_slot_deltas ENABLE ROW LEVEL SECURITY;
CREATE POLICY credit_slot_deltas_visible ON docextract.credit_slot_deltas FOR SELECT
    USING (pg_catalog.pg_has_role(current_user, role, 'MEMBER'));
REVOKE ALL ON docextract.credit_slot_deltas FROM PUBLIC;
GRANT SELECT ON docextract.credit_slot_deltas TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('docextract.credit_slot_deltas', '');
-- A role's account as one row: the sum of its slots, read with the
-- reader's rights (so credit_slots' row-level security applies).
CREATE VIEW docextract.credit_accounts WITH (security_invoker = true) AS
SELECT a.role, sum(a.balance)::bigint AS balance, sum(a.reserved)::bigint AS reserved,
       max(a.updated_at) AS updated_at
  FROM (SELECT s.role, s.balance, s.reserved, s.updated_at FROM docextract.credit_slots s
        UNION ALL
        SELECT d.role, d.balance_delta, d.reserved_delta, NULL FROM docextract.credit_slot_deltas d) a
 GROUP BY a.role;
GRANT SELECT ON docextract.credit_accounts TO PUBLIC;
-- Written only through grant_credits and the submit: without this trigger
-- an UPDATE would fail as "not automatically updatable" (55000) before the
-- permission check (42501) that says why.
CREATE FUNCTION docextract.credit_accounts_read_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'docextract.credit_accounts cannot be changed directly'
        USING ERRCODE = '42809', HINT = 'docextract.grant_credits() adds or takes away credits.';
END
$$;
CREATE TRIGGER credit_accounts_read_only
    INSTEAD OF INSERT OR UPDATE OR DELETE ON docextract.credit_accounts
    FOR EACH ROW EXECUTE FUNCTION docextract.credit_accounts_read_only();

-- A role's credits free to reserve: granted, minus charged, minus held.
-- (plpgsql: its plans are kept, where an SQL function's are made per call.)
-- A plain index scan, not a bitmap one: it marks the entries of folded
-- (deleted) deltas dead as it passes them, so the next does not read them
-- again while the table waits for its vacuum.
CREATE FUNCTION docextract.credit_available(r regrole) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, docextract, pg_temp SET enable_bitmapscan = off AS $$
BEGIN
    RETURN (SELECT coalesce(sum(s.balance - s.reserved), 0)::bigint
              FROM docextract.credit_slots s WHERE s.role = r)
         + (SELECT coalesce(sum(d.balance_delta - d.reserved_delta), 0)::bigint
              FROM docextract.credit_slot_deltas d
             WHERE d.role = r AND d.balance_delta <> d.reserved_delta);
END
$$;

-- Fold the settled deltas into their slots, those of role r (every role's
-- when NULL) that no other transaction holds; returns the slots folded.
CREATE FUNCTION docextract.fold_credit_deltas(r regrole DEFAULT NULL) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, docextract, pg_temp AS $$
WITH s AS (
    SELECT c.role, c.slot FROM docextract.credit_slots c
      JOIN (SELECT DISTINCT x.role, x.slot FROM docextract.credit_slot_deltas x
             WHERE r IS NULL OR x.role = r) k ON k.role = c.role AND k.slot = c.slot
       FOR UPDATE OF c SKIP LOCKED),
d AS (
    DELETE FROM docextract.credit_slot_deltas x USING s
     WHERE x.role = s.role AND x.slot = s.slot
    RETURNING x.role, x.slot, x.balance_delta, x.reserved_delta),
u AS (
    UPDATE docextract.credit_slots c
       SET balance = c.balance + t.b, reserved = c.reserved + t.rd, updated_at = now()
      FROM (SELECT d.role, d.slot, sum(d.balance_delta) AS b, sum(d.reserved_delta) AS rd
              FROM d GROUP BY d.role, d.slot) t
     WHERE c.role = t.role AND c.slot = t.slot
    RETURNING 1)
SELECT count(*)::integer FROM u
$$;

-- What this transaction holds of a role's credit slots (src/credit_state.c).
CREATE FUNCTION docextract.credit_slot_held() RETURNS boolean
LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'docextract_credit_slot_held';
CREATE FUNCTION docextract.credit_slot_cache() RETURNS text
LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'docextract_credit_slot_cache';
CREATE FUNCTION docextract.credit_slot_note(state text) RETURNS void
LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'docextract_credit_slot_note';
CREATE FUNCTION docextract.credit_settle_known(r regrole, change bigint) RETURNS bigint
LANGUAGE C VOLATILE STRICT AS 'MODULE_PATHNAME', 'docextract_credit_settle_known';
CREATE FUNCTION docextract.credit_settle_note(r regrole, available bigint) RETURNS bigint
LANGUAGE C VOLATILE STRICT AS 'MODULE_PATHNAME', 'docextract_credit_settle_note';

-- Role r's available credits after a settle moved them by change (its
-- delta, inserted just before), for the ledger: read once a transaction,
-- then moved by each settle (credit_state.c), so an UPDATE that settles n
-- rows sums the role's deltas once, not once per row.
CREATE FUNCTION docextract.credit_available_after(r regrole, change bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
BEGIN
    RETURN coalesce(docextract.credit_settle_known(r, change),
                    docextract.credit_settle_note(r, docextract.credit_available(r)));
END
$$;

-- Slot c of role r, locked by this transaction: what was settled into it
-- since (credit_slot_deltas) folded in; returns its free credits.  Always
-- a row version, even with nothing to fold: a slot a transaction reserves
-- in gets one from it, so that a REPEATABLE READ transaction whose
-- snapshot is older cannot lock it (40001) and read its deltas as its
-- snapshot has them (credits spent twice).
CREATE FUNCTION docextract.credit_slot_fold(r regrole, c smallint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp SET enable_bitmapscan = off AS $$
DECLARE
    free bigint;
BEGIN
    WITH d AS (DELETE FROM docextract.credit_slot_deltas x WHERE x.role = r AND x.slot = c
               RETURNING x.balance_delta, x.reserved_delta),
         t AS (SELECT coalesce(sum(d.balance_delta), 0) AS b,
                      coalesce(sum(d.reserved_delta), 0) AS rd FROM d)
    UPDATE docextract.credit_slots s
       SET balance = s.balance + t.b, reserved = s.reserved + t.rd, updated_at = now()
      FROM t WHERE s.role = r AND s.slot = c
    RETURNING s.balance - s.reserved INTO free;
    RETURN free;
END
$$;

-- The slot of role r this transaction reserves pages in (take: the caller
-- reserves them now), locked until it ends: one with that many free
-- credits (any, unless enforce) that no other transaction holds, so that
-- a role's concurrent submits do not wait for each other; else gathered
-- (credit_gather).  A transaction's first submit usually takes the fast
-- path: its pages reserved in the slot's row itself (field 6 of the cache
-- 'i'), where later ones and the other paths leave the caller a delta to
-- write ('d').  NULL: too few credits.  serialize (a quota to check)
-- gathers, so that the quota's count is made under every slot's lock, one
-- submit after another.  What this transaction holds is remembered in
-- docextract.credit_slot_cache() (role, slot, its free credits, the role's,
-- whether it holds every slot): its next submits read no slot again, so a
-- transaction of many submits (a COPY) costs the same for each.
CREATE FUNCTION docextract.credit_slot_for(r regrole, pages integer, enforce boolean,
                                           serialize boolean DEFAULT false, take boolean DEFAULT true)
RETURNS smallint LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp
SET enable_bitmapscan = off AS $$
DECLARE
    cache text[] := pg_catalog.string_to_array(docextract.credit_slot_cache(), ',');
    candidates smallint[];
    c smallint;
    free bigint;
BEGIN
    IF cache[1] = r::oid::text AND (cache[5] = 't' OR NOT serialize)
       AND (NOT enforce OR cache[3]::bigint >= pages) THEN
        RETURN docextract.credit_slot_remember(r, cache[2]::smallint, cache[3]::bigint,
                                               cache[4]::bigint, cache[5] = 't', pages, take);
    END IF;
    IF NOT serialize THEN
        -- Fast path, two statements: the first slot this snapshot sees with
        -- the credits free that no other transaction holds, locked without
        -- waiting (its row as last committed rechecked); then, under the
        -- lock, in a new snapshot (what committed before the lock counts),
        -- what was settled into it folded in and, when the credits are
        -- free, the pages reserved in the same row version: one whenever
        -- the slot is this transaction's now, as in credit_slot_fold (plain
        -- index scans too), none when it is found short.
        SELECT s.slot INTO c FROM docextract.credit_slots s
         WHERE s.role = r AND (NOT enforce OR s.balance - s.reserved >= pages)
         ORDER BY (s.slot + pg_catalog.pg_backend_pid()) % 8 LIMIT 1
           FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            PERFORM docextract.credit_slot_note(NULL);
            WITH d AS (DELETE FROM docextract.credit_slot_deltas x WHERE x.role = r AND x.slot = c
                       RETURNING x.balance_delta, x.reserved_delta),
                 t AS (SELECT coalesce(sum(d.balance_delta), 0) AS b,
                              coalesce(sum(d.reserved_delta), 0) AS rd, count(*) AS n FROM d),
                 f AS (SELECT s.balance + t.b - s.reserved - t.rd AS free,
                              take AND (NOT enforce OR s.balance + t.b - s.reserved - t.rd >= pages) AS taken
                         FROM docextract.credit_slots s, t WHERE s.role = r AND s.slot = c),
                 u AS (UPDATE docextract.credit_slots s
                          SET balance = s.balance + t.b,
                              reserved = s.reserved + t.rd + CASE WHEN f.taken THEN pages ELSE 0 END,
                              updated_at = now()
                         FROM t, f WHERE s.role = r AND s.slot = c
                          AND (t.n > 0 OR NOT enforce OR f.free >= pages))
            SELECT f.free INTO free FROM f;
            IF NOT enforce OR free >= pages THEN
                -- The role's credits, read after the reservation: given back
                -- for credit_slot_remember to take them as the other paths do.
                RETURN docextract.credit_slot_remember(
                    r, c, free, docextract.credit_available(r) + CASE WHEN take THEN pages ELSE 0 END,
                    false, pages, take, take);
            END IF;
        END IF;
    END IF;
    -- Not INSERT ... ON CONFLICT every time: that waits for a slot's
    -- uncommitted update to learn whether the row still conflicts.
    IF NOT EXISTS (SELECT 1 FROM docextract.credit_slots s WHERE s.role = r) THEN
        INSERT INTO docextract.credit_slots (role, slot)
        SELECT r, g FROM pg_catalog.generate_series(0, 7) g ON CONFLICT DO NOTHING;
    END IF;
    IF NOT serialize THEN
        -- Candidates as this snapshot sees their rows (deltas not folded
        -- yet are not read here: after a large transaction there can be
        -- many), each session starting at a slot of its own; each then
        -- locked without waiting (a lock taken is known: the balance is no
        -- condition of the locking statement), folded, and its free
        -- credits read under the lock.
        SELECT pg_catalog.array_agg(s.slot ORDER BY (s.slot + pg_catalog.pg_backend_pid()) % 8)
          INTO candidates
          FROM docextract.credit_slots s
         WHERE s.role = r AND (NOT enforce OR s.balance - s.reserved >= pages);
        FOREACH c IN ARRAY coalesce(candidates, '{}') LOOP
            PERFORM FROM docextract.credit_slots s WHERE s.role = r AND s.slot = c FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                PERFORM docextract.credit_slot_note(NULL);
                free := docextract.credit_slot_fold(r, c);
                IF NOT enforce OR free >= pages THEN
                    RETURN docextract.credit_slot_remember(r, c, free, docextract.credit_available(r),
                                                           false, pages, take);
                END IF;
            END IF;
        END LOOP;
    END IF;
    RETURN docextract.credit_gather(r, pages, enforce, 0, take);
END
$$;

-- Remember slot c as this transaction's (docextract.credit_slot_cache()), with
-- pages taken from its free credits and the role's when take; returns c.
-- in_slot: the pages are reserved in the slot's row already (no delta).
CREATE FUNCTION docextract.credit_slot_remember(r regrole, c smallint, free bigint, available bigint,
                                                every_slot boolean, pages integer, take boolean,
                                                in_slot boolean DEFAULT false)
RETURNS smallint LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
BEGIN
    IF take THEN
        free := free - pages;
        available := available - pages;
    END IF;
    PERFORM docextract.credit_slot_note(
        pg_catalog.concat_ws(',', r::oid, c, free, available, CASE WHEN every_slot THEN 't' ELSE 'f' END,
                             CASE WHEN in_slot THEN 'i' ELSE 'd' END));
    RETURN c;
END
$$;

-- Lock role r's slots in slot order and spread their free credits, plus
-- delta, evenly over them, the first getting pages more; returns that slot,
-- or NULL (nothing changed) when enforce and fewer than pages are free.
-- It waits for a slot another submit holds, unless this transaction holds
-- a slot already (docextract.credit_slot_held()): waiting then could close a
-- cycle with another gatherer, so slots held elsewhere are left out, and
-- their free credits with them.  Waits go only to slots above every slot
-- the waiter holds, and the fast path never waits: no deadlock.
CREATE FUNCTION docextract.credit_gather(r regrole, pages integer, enforce boolean, delta bigint,
                                         take boolean DEFAULT false)
RETURNS smallint LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    slots smallint[];
    total bigint;
    n integer;
    share bigint;
BEGIN
    IF docextract.credit_slot_held() THEN
        SELECT pg_catalog.array_agg(l.slot) INTO slots FROM (
            SELECT s.slot FROM docextract.credit_slots s
             WHERE s.role = r ORDER BY s.slot FOR UPDATE SKIP LOCKED) l;
    ELSE
        SELECT pg_catalog.array_agg(l.slot) INTO slots FROM (
            SELECT s.slot FROM docextract.credit_slots s
             WHERE s.role = r ORDER BY s.slot FOR UPDATE) l;
    END IF;
    n := coalesce(pg_catalog.cardinality(slots), 0);
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM docextract.credit_slot_note(NULL);
    -- What was settled since counts: releases add free credits.
    PERFORM docextract.fold_credit_deltas(r);
    SELECT sum(s.balance - s.reserved) + delta INTO total FROM docextract.credit_slots s
     WHERE s.role = r AND s.slot = ANY (slots);
    IF total < pages OR total < 0 THEN
        IF enforce THEN
            RETURN NULL;
        END IF;
        RETURN docextract.credit_slot_remember(r, slots[1], 0, total, n = 8, pages, take);
    END IF;
    share := (total - pages) / n;
    UPDATE docextract.credit_slots s
       SET balance = s.reserved + share
                     + CASE WHEN s.slot = slots[1] THEN pages + (total - pages) % n ELSE 0 END,
           updated_at = now()
     WHERE s.role = r AND s.slot = ANY (slots);
    -- Every slot locked but those another transaction held: the role's
    -- available credits are these, and what those hold.
    RETURN docextract.credit_slot_remember(r, slots[1], share + (total - pages) % n + pages,
                                           docextract.credit_available(r), n = 8, pages, take);
END
$$;
GRANT EXECUTE ON FUNCTION docextract.credit_available(regrole) TO PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_slot_for(regrole, integer, boolean, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_gather(regrole, integer, boolean, bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_slot_fold(regrole, smallint) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_slot_held() FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_slot_cache() FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_slot_note(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_settle_known(regrole, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_settle_note(regrole, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_available_after(regrole, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_slot_remember(regrole, smallint, bigint, bigint, boolean, integer, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.credit_accounts_read_only() FROM PUBLIC;
REVOKE ALL ON FUNCTION docextract.fold_credit_deltas(regrole) FROM PUBLIC;

-- The functions more than one change above replaced, as this version has them
-- (a later CREATE OR REPLACE above may have been written before another's).
-- A transaction's first submit with no quota to check usually arrives with
-- its credits reserved already (reserve.c, two statements and no trigger
-- call), and then this trigger does not fire (WHEN credits_reserved = 0).
CREATE OR REPLACE FUNCTION docextract.reserve_credits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    pages integer;
    chosen smallint;
    state text[];
    active bigint;
    quota integer := coalesce(nullif(current_setting('docextract.max_active_per_role', true), ''), '0')::integer;
    mode text := coalesce(nullif(current_setting('docextract.credits', true), ''), 'enforce');
BEGIN
    -- Only what docextract enqueues is reserved for.  A row loaded with its
    -- state (pg_restore of a dump) carries its reservation, and its
    -- account and ledger rows are restored with it.
    IF pg_catalog.current_setting('docextract.submitting', true) IS DISTINCT FROM 'on' THEN
        RETURN NEW;
    END IF;
    -- A row the trigger form records as not submitted holds nothing; a
    -- sub-document of a split neither: its parent holds its pages.
    IF NEW.status <> 'pending' OR NEW.parent_extraction_id IS NOT NULL THEN
        RETURN NEW;
    END IF;
    -- options.pages: only the pages asked for are charged.
    SELECT coalesce(pg_catalog.cardinality(NEW.page_numbers), d.page_count) INTO pages
      FROM docextract.documents d WHERE d.id = NEW.document_id;
    chosen := docextract.credit_slot_for(NEW.owner, pages, mode = 'enforce', quota > 0, true);
    IF quota > 0 THEN
        SELECT count(*) INTO active FROM docextract.extractions x
         WHERE x.owner = NEW.owner AND x.status = ANY (docextract.active_statuses());
        IF active >= quota THEN
            RAISE EXCEPTION 'role % has % active extractions, the limit is %', NEW.owner, active, quota
                USING ERRCODE = '53400',
                      HINT = 'docextract.max_active_per_role limits queued and running extractions per role.';
        END IF;
    END IF;
    IF chosen IS NULL THEN
        RAISE EXCEPTION 'insufficient credits: role % needs % credit(s) for % page(s), its balance is %',
                        NEW.owner, pages, pages, docextract.credit_available(NEW.owner)
            USING ERRCODE = '53000', HINT = 'docextract.grant_credits() adds credits.';
    END IF;
    -- Recorded as a delta, not an update of the slot, unless the fast path
    -- reserved it in the row it updated anyway: a transaction of many
    -- submits would otherwise make one row version of the slot per submit.
    state := pg_catalog.string_to_array(docextract.credit_slot_cache(), ',');
    IF state[6] IS DISTINCT FROM 'i' THEN
        INSERT INTO docextract.credit_slot_deltas (role, slot, balance_delta, reserved_delta)
        VALUES (NEW.owner, chosen, 0, pages);
    END IF;
    INSERT INTO docextract.credit_ledger (role, kind, credits, available_after, extraction_id,
                                          reason, created_by)
    VALUES (NEW.owner, 'reserve', pages, state[4]::bigint, NEW.id, 'submitted', NEW.owner);
    NEW.credits_reserved := pages;
    NEW.credit_slot := chosen;
    RETURN NEW;
END
$$;
DROP TRIGGER extractions_reserve_credits ON docextract.extractions;
CREATE TRIGGER extractions_reserve_credits
    BEFORE INSERT ON docextract.extractions
    FOR EACH ROW WHEN (NEW.credits_reserved = 0) EXECUTE FUNCTION docextract.reserve_credits();

CREATE OR REPLACE FUNCTION docextract.settle_credits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    kind text;
    after bigint;
    read_pages integer := 0;
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status OR OLD.credits_reserved = 0
       OR NOT NEW.status = ANY (docextract.outcome_statuses()) THEN
        RETURN NEW;
    END IF;
    -- Classified without a fitting template, it awaits a reviewer's pick:
    -- nothing was extracted yet, the credits stay held.
    IF NEW.status = 'awaiting_approval' AND NEW.template_id IS NULL THEN
        RETURN NEW;
    END IF;
    kind := CASE WHEN NEW.status IN ('completed', 'awaiting_approval') THEN 'charge' ELSE 'release' END;
    -- A split parent cancelled or failed: its sub-documents already read
    -- were model work, paid for; only the rest is returned.
    IF kind = 'release' AND OLD.split_count IS NOT NULL THEN
        read_pages := least(docextract.split_pages_read(OLD.id), OLD.credits_reserved);
    END IF;
    INSERT INTO docextract.credit_slot_deltas (role, slot, balance_delta, reserved_delta)
    VALUES (OLD.owner, coalesce(OLD.credit_slot, 0),
            -CASE WHEN kind = 'charge' THEN OLD.credits_reserved ELSE read_pages END,
            -OLD.credits_reserved);
    after := docextract.credit_available_after(OLD.owner,
                 CASE WHEN kind = 'charge' THEN 0 ELSE OLD.credits_reserved - read_pages END);
    IF read_pages > 0 THEN
        INSERT INTO docextract.credit_ledger (role, kind, credits, available_after, extraction_id,
                                              reason, created_by)
        VALUES (OLD.owner, 'charge', read_pages, after, OLD.id,
                'sub-documents read before it was ' || NEW.status, OLD.owner);
    END IF;
    IF OLD.credits_reserved > read_pages THEN
        INSERT INTO docextract.credit_ledger (role, kind, credits, available_after, extraction_id,
                                              reason, created_by)
        VALUES (OLD.owner, kind, OLD.credits_reserved - read_pages, after, OLD.id, NEW.status, OLD.owner);
    END IF;
    IF kind = 'charge' THEN
        NEW.credits_used := OLD.credits_reserved;
    ELSIF read_pages > 0 THEN
        NEW.credits_used := read_pages;
    END IF;
    NEW.credits_reserved := 0;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION docextract.grant_credits(role name, amount bigint, reason text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    r regrole;
    available bigint;
BEGIN
    IF role IS NULL OR amount IS NULL OR amount = 0 THEN
        RAISE EXCEPTION 'grant_credits needs a role and a non-zero amount' USING ERRCODE = '22023';
    END IF;
    r := quote_ident(role)::regrole;
    IF NOT EXISTS (SELECT 1 FROM docextract.credit_slots s WHERE s.role = r) THEN
        INSERT INTO docextract.credit_slots (role, slot)
        SELECT r, g FROM pg_catalog.generate_series(0, 7) g ON CONFLICT DO NOTHING;
    END IF;
    IF docextract.credit_gather(r, 0, true, amount) IS NULL THEN
        RAISE EXCEPTION 'cannot take % credits from role %: only % are available',
                        -amount, r, docextract.credit_available(r) USING ERRCODE = '22023';
    END IF;
    available := docextract.credit_available(r);
    INSERT INTO docextract.credit_ledger (role, kind, credits, available_after, reason, created_by)
    VALUES (r, 'grant', amount, available, reason, session_user::regrole);
    RETURN available;
END
$$;

CREATE OR REPLACE FUNCTION docextract.credit_balance(role name DEFAULT current_user)
RETURNS bigint LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    r regrole := quote_ident(role)::regrole;
BEGIN
    IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied to read the credit balance of role %', r
            USING ERRCODE = '42501';
    END IF;
    RETURN docextract.credit_available(r);
END
$$;

CREATE OR REPLACE FUNCTION docextract.announce_status() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp SET enable_nestloop = off AS $$
DECLARE
    notify boolean := pg_catalog.pg_notification_queue_usage() <= coalesce(NULLIF(
        pg_catalog.current_setting('docextract.notify_queue_limit', true), '')::float8, 0.9);
    ids bigint[];
    events text[];
    owners regrole[];
    extractions uuid[];
    sent integer;
BEGIN
    WITH changed AS (
        SELECT n.*, CASE
               WHEN n.status IS DISTINCT FROM o.status THEN docextract.event_name(o.status, n.status)
               -- One request of a multi-request extraction is done (a classification's too).
               WHEN n.status IN ('classifying', 'processing')
                    AND n.completion_percentage > o.completion_percentage
               THEN 'extraction.progress' END AS event,
               -- A progress event's step: the classification answered, the
               -- file split, one more sub-document ended, or one part in.
               CASE WHEN n.status IS DISTINCT FROM o.status THEN NULL
                    WHEN n.status = 'classifying' THEN 'classification'
                    WHEN n.split_count IS NOT NULL AND o.split_count IS NULL THEN 'split'
                    WHEN n.split_count IS NOT NULL THEN 'sub_document'
                    ELSE 'part' END AS step
          FROM new_rows n JOIN old_rows o ON o.id = n.id),
    stored AS (
        INSERT INTO docextract.events (id, event, extraction_id, owner, payload)
        SELECT e.event_id, e.event, e.id, e.owner, json_build_object(
            'event', e.event, 'extraction_id', e.id, 'document_id', e.document_id,
            'status', e.status, 'template_id', e.template_id, 'attempts', e.attempts,
            'completion_percentage', e.completion_percentage, 'event_id', e.event_id,
            'created_at', clock_timestamp(), 'step', e.step)
          FROM (SELECT nextval('docextract.events_id_seq') AS event_id, c.*
                  FROM changed c WHERE c.event IS NOT NULL) e
        RETURNING id, event, extraction_id, owner, payload)
    SELECT array_agg(s.id ORDER BY s.id), array_agg(s.event ORDER BY s.id),
           array_agg(s.owner ORDER BY s.id), array_agg(s.extraction_id ORDER BY s.id),
           count(CASE WHEN notify THEN pg_catalog.pg_notify('docextract', s.payload::text) END)
      INTO ids, events, owners, extractions, sent FROM stored s;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- Nothing to warn of and no webhook: no call (it is a status change's cost).
    IF NOT notify OR EXISTS (SELECT 1 FROM docextract.webhooks w WHERE w.enabled) THEN
        PERFORM docextract.deliver_events(ids, events, owners, extractions, notify);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION docextract.drop_document_bytes() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, docextract, pg_temp AS $$
BEGIN
    -- Awaiting a reviewer's pick of its template: the bytes are still to be read.
    IF NEW.status = 'awaiting_approval' AND NEW.template_id IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE docextract.documents d SET content = NULL, text = NULL
     WHERE d.id = NEW.document_id AND d.content IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION docextract.extraction_status(extraction_id uuid)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    e docextract.extractions;
BEGIN
    SELECT * INTO e FROM docextract.extractions x WHERE x.id = extraction_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'extraction % does not exist', extraction_id USING ERRCODE = '42704';
    END IF;
    RETURN jsonb_build_object(
        'extraction_id', e.id, 'document_id', e.document_id, 'status', e.status,
        'template_id', e.template_id, 'model', e.model_name,
        'created_at', e.created_at, 'started_at', e.started_at,
        'completed_at', e.completed_at, 'error_message', e.error_message,
        'attempts', e.attempts, 'completion_percentage', e.completion_percentage,
        'credits_used', e.credits_used, 'credits_reserved', e.credits_reserved,
        'approved_by', e.approved_by, 'approved_at', e.approved_at,
        'classification', e.classification,
        'sub_documents', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'document_id', d.id, 'extraction_id', c.id, 'page_start', d.page_start,
                       'page_end', d.page_end, 'page_count', d.page_count, 'status', c.status,
                       'template_id', c.template_id, 'error_message', c.error_message)
                       ORDER BY d.page_start)
            FROM docextract.extractions c JOIN docextract.documents d ON d.id = c.document_id
            WHERE c.parent_extraction_id = e.id), '[]'::jsonb))
        -- options.split: the state of the whole (only then).
        || jsonb_strip_nulls(jsonb_build_object('overall_status', docextract.split_overall_status(e.id)));
END
$$;

CREATE OR REPLACE FUNCTION docextract.get_result(extraction_id uuid)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, docextract, pg_temp AS $$
DECLARE
    e docextract.extractions;
    r docextract.results;
BEGIN
    SELECT * INTO e FROM docextract.extractions x WHERE x.id = extraction_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'extraction % does not exist', extraction_id USING ERRCODE = '42704';
    END IF;
    SELECT * INTO r FROM docextract.results x WHERE x.extraction_id = e.id;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'extraction_id', e.id, 'document_id', e.document_id,
        'template_id', e.template_id, 'status', e.status,
        'error_message', e.error_message,
        'attributions', r.attributions,
        'table_attributions', r.table_attributions,
        'corrections', r.corrections))
        -- citations keep their nulls: "bbox": null says no box was found
        || CASE WHEN r.citations IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('citations', r.citations) END
        || jsonb_build_object(
        'data', r.data,
        'validation', coalesce(r.validation, '[]'::jsonb),
        'usage', coalesce(r.usage, '{}'::jsonb))
        -- options.split: no data of its own; each sub-document's result.
        || CASE WHEN e.split_count IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
        'overall_status', docextract.split_overall_status(e.id),
        'sub_documents', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'extraction_id', c.id, 'document_id', c.document_id,
                       'page_start', d.page_start, 'page_end', d.page_end,
                       'template_id', c.template_id, 'status', c.status,
                       'error_message', c.error_message, 'data', cr.data,
                       'validation', cr.validation) ORDER BY d.page_start)
            FROM docextract.extractions c JOIN docextract.documents d ON d.id = c.document_id
            LEFT JOIN docextract.results cr ON cr.extraction_id = c.id
            WHERE c.parent_extraction_id = e.id), '[]'::jsonb)) END;
END
$$;


-- Issue 12: ids of new documents and extractions ascend with time (src/ids.c
-- says why); those already stored keep theirs.
CREATE FUNCTION docextract.time_ordered_uuid() RETURNS uuid
LANGUAGE C VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', 'docextract_time_ordered_uuid';
GRANT EXECUTE ON FUNCTION docextract.time_ordered_uuid() TO PUBLIC;
ALTER TABLE docextract.documents ALTER COLUMN id SET DEFAULT docextract.time_ordered_uuid();
ALTER TABLE docextract.extractions ALTER COLUMN id SET DEFAULT docextract.time_ordered_uuid();
-- A worker's start finds what a previous worker left classifying or
-- processing through this index and extractions_in_flight.
CREATE INDEX extractions_classifying ON docextract.extractions (model_name)
    WHERE status = 'classifying';
-- docextract.retention finds ended extractions by when they ended: without
-- this, each poll read the whole history to find none (285 ms at 1M rows).
CREATE INDEX extractions_ended ON docextract.extractions ((coalesce(completed_at, created_at)))
    WHERE status IN ('completed', 'failed', 'cancelled', 'insufficient_credits');


-- Every function of the extension searches pg_catalog, its own schema, and
-- pg_temp last: listed last, so that no role's temporary types or relations
-- can stand in for the extension's (unlisted, pg_temp is searched first for
-- those), and without public or "$user", where other roles may create
-- functions and operators that match a call better than pg_catalog's.
-- Whoever runs them, superusers and the worker included, they never resolve
-- a name to a user's object.  One kind is left out: IMMUTABLE SQL functions,
-- not SECURITY DEFINER, with a SQL-standard body (RETURN): their names were
-- bound when this script created them, so they resolve none when run, and
-- a function with a SET clause is never inlined into its caller's
-- statement (event_name() would be planned and run for every batch).
-- Keep this last: CREATE OR REPLACE FUNCTION above may have replaced a
-- function's SET clauses.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'docextract'::pg_catalog.regnamespace AND p.prokind = 'f'
                AND NOT (p.prosqlbody IS NOT NULL AND p.provolatile = 'i' AND NOT p.prosecdef)
              ORDER BY p.oid LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION docextract.%I(%s) SET search_path = pg_catalog, docextract, pg_temp',
                                  f.proname, f.args);
    END LOOP;
END
$$;
