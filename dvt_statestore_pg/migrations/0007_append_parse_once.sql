-- Two costs of the append path, removed.
--
-- 1. The outbox's foreign key to the log. The append function is the only writer of outbox
--    rows and writes them in the transaction that inserts their events; events are never
--    deleted. The key's check ran once per outbox row, and the plan PostgreSQL cached for it
--    on a young table scanned the tenant stream index (tenant only) instead of the primary
--    key, so a batch got slower with every event the tenant already had (profile in
--    docs/perf/store.md).
-- 2. The append function of 0003 read its json argument three times (the keys, the insert, the
--    outbox rows); a json value is text and is parsed again by each reader. Here it is parsed
--    once into an array of dvt_append_row. Same arguments, same rows returned, same locking.

ALTER TABLE dvt_outbox DROP CONSTRAINT dvt_outbox_event_fk;

CREATE TYPE dvt_append_row AS (
    k  text,         -- idempotency key
    i  text,         -- eventId
    t  text,         -- eventType
    p  text,         -- projectId
    v  text,         -- environmentId
    s  text,         -- stepId
    l  integer,      -- logical attempt
    n  integer,      -- engine attempt
    at timestamptz,  -- emittedAt
    e  json,         -- the envelope, as its exact text
    o  integer,      -- 1-based position in the call
    h  text          -- content hash
);

CREATE OR REPLACE FUNCTION dvt_append_events(
    p_run_id       text,
    p_tenant_id    text,
    p_expected_seq bigint,
    p_events       json,
    p_status       text,
    p_substatus    text,
    p_snapshot     json,
    p_outbox       boolean,
    p_channel      text
) RETURNS TABLE (
    outcome         text,
    idempotency_key text,
    run_seq         bigint,
    event_id        text,
    persisted_at    timestamptz,
    last_seq        bigint,
    content_hash    text
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    -- The events parsed once: a json value is parsed again by every function that reads it.
    v_rows  dvt_append_row[] := ARRAY(
                SELECT u FROM json_populate_recordset(NULL::dvt_append_row, p_events) AS u);
    v_keys  text[] := ARRAY(SELECT u.k FROM unnest(v_rows) AS u);
    v_count integer := cardinality(v_rows);
    v_last  bigint;
    v_dups  integer;
    v_now   timestamptz;
BEGIN
    -- Committed rows never change, so a key found here is final: no lock needed. Finding any
    -- row also proves the run exists and belongs to this tenant.
    RETURN QUERY
        SELECT 'duplicate'::text, e.idempotency_key, e.run_seq, e.event_id, e.persisted_at,
               NULL::bigint, e.content_hash
        FROM dvt_events e
        WHERE e.tenant_id = p_tenant_id AND e.run_id = p_run_id
          AND e.idempotency_key = ANY (v_keys);
    GET DIAGNOSTICS v_dups = ROW_COUNT;
    IF v_dups = v_count THEN
        RETURN;
    END IF;

    -- The run's writers take turns here. No row is locked or written before this point, so
    -- this transaction has no id yet: it gets one with its first insert, after every earlier
    -- writer of this run has committed, which keeps (commit_xid, position) in runSeq order.
    PERFORM pg_advisory_xact_lock(dvt_run_lock_key(p_tenant_id, p_run_id));
    -- A statement of its own, so its snapshot sees what the writers before us committed.
    SELECT r.last_seq INTO v_last
    FROM dvt_runs r
    WHERE r.tenant_id = p_tenant_id AND r.run_id = p_run_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::text, NULL::bigint, NULL::text,
                            NULL::timestamptz, NULL::bigint, NULL::text;
        RETURN;
    END IF;
    -- Taken under the lock: a writer that waited for it gets a time after the one it waited for.
    v_now := clock_timestamp();

    IF v_dups = 0 THEN
        -- Under the lock: a racing writer may have committed one of these keys meanwhile.
        RETURN QUERY
            SELECT 'duplicate'::text, e.idempotency_key, e.run_seq, e.event_id, e.persisted_at,
                   NULL::bigint, e.content_hash
            FROM dvt_events e
            WHERE e.tenant_id = p_tenant_id AND e.run_id = p_run_id
              AND e.idempotency_key = ANY (v_keys);
        GET DIAGNOSTICS v_dups = ROW_COUNT;
    END IF;
    IF v_dups > 0 OR v_last <> p_expected_seq THEN
        RETURN QUERY SELECT 'stale'::text, NULL::text, NULL::bigint, NULL::text,
                            NULL::timestamptz, v_last, NULL::text;
        RETURN;
    END IF;

    RETURN QUERY
        WITH inserted AS (
            INSERT INTO dvt_events AS e (
                run_id, run_seq, idempotency_key, event_id, event_type, tenant_id, project_id,
                environment_id, step_id, logical_attempt_id, engine_attempt_id, emitted_at,
                persisted_at, envelope, content_hash)
            SELECT p_run_id, p_expected_seq + u.o, u.k, u.i, u.t, p_tenant_id, u.p, u.v, u.s,
                   u.l, u.n, u.at, v_now, u.e, u.h
            FROM unnest(v_rows) AS u
            -- Positions are drawn in this order, so one run's events keep runSeq order.
            ORDER BY u.o
            RETURNING e.idempotency_key, e.run_seq, e.event_id, e.persisted_at
        )
        SELECT 'appended'::text, i.idempotency_key, i.run_seq, i.event_id, i.persisted_at,
               p_expected_seq + v_count, NULL::text
        FROM inserted i;

    UPDATE dvt_runs r
    SET last_seq = p_expected_seq + v_count,
        status = p_status,
        substatus = p_substatus,
        snapshot = COALESCE(p_snapshot, r.snapshot),
        snapshot_seq = CASE WHEN p_snapshot IS NULL THEN r.snapshot_seq
                            ELSE p_expected_seq + v_count END,
        updated_at = v_now
    WHERE r.tenant_id = p_tenant_id AND r.run_id = p_run_id;

    IF p_outbox THEN
        INSERT INTO dvt_outbox (run_id, run_seq, tenant_id, event_type)
        SELECT p_run_id, p_expected_seq + u.o, p_tenant_id, u.t
        FROM unnest(v_rows) AS u;
    END IF;

    -- A wake-up call only: followers read the log from their cursor, so a lost notification
    -- delays an event but never loses it.
    PERFORM pg_notify(p_channel, p_tenant_id || '|' || p_run_id || '|'
                                 || (p_expected_seq + v_count)::text);
END;
$$;
