-- Appending to one run in one round trip.
--
-- The caller (PostgresRunStateStore) projects the new events onto the run's snapshot and sends
-- the result with the events and the runSeq it expects to follow. The function answers keys
-- already in the log as duplicates, locks the run's row (which serialises writers of one run),
-- checks again under the lock, and only then inserts. When the caller's view of the run is
-- stale (another writer appended meanwhile) or some keys turned out to be duplicates, nothing
-- is written and the caller recomputes and calls again.
--
-- The events travel as one JSON array (one object per event: k key, i eventId, t type,
-- p projectId, v environmentId, s stepId, l logical attempt, n engine attempt, at emittedAt,
-- e the envelope, o 1-based position), which is far cheaper to send than parallel arrays.
--
-- Rows returned: ('duplicate', key, runSeq, eventId, persistedAt, NULL) per key already
-- stored; then one of ('appended', key, runSeq, eventId, persistedAt, lastSeq) per new event,
-- ('stale', NULL.., lastSeq) or ('missing', NULL..) when the run is unknown to this tenant.
CREATE FUNCTION dvt_append_events(
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
    last_seq        bigint
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_keys  text[] := ARRAY(SELECT x ->> 'k' FROM json_array_elements(p_events) AS x);
    v_count integer := cardinality(v_keys);
    v_last  bigint;
    v_dups  integer;
    v_now   timestamptz := clock_timestamp();
BEGIN
    -- Committed rows never change, so a key found here is final: no lock needed. Finding any
    -- row also proves the run exists and belongs to this tenant.
    RETURN QUERY
        SELECT 'duplicate'::text, e.idempotency_key, e.run_seq, e.event_id, e.persisted_at,
               NULL::bigint
        FROM dvt_events e
        WHERE e.run_id = p_run_id AND e.tenant_id = p_tenant_id
          AND e.idempotency_key = ANY (v_keys);
    GET DIAGNOSTICS v_dups = ROW_COUNT;
    IF v_dups = v_count THEN
        RETURN;
    END IF;

    SELECT r.last_seq INTO v_last
    FROM dvt_runs r
    WHERE r.run_id = p_run_id AND r.tenant_id = p_tenant_id
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::text, NULL::bigint, NULL::text,
                            NULL::timestamptz, NULL::bigint;
        RETURN;
    END IF;

    IF v_dups = 0 THEN
        -- Under the lock: a racing writer may have committed one of these keys meanwhile.
        RETURN QUERY
            SELECT 'duplicate'::text, e.idempotency_key, e.run_seq, e.event_id, e.persisted_at,
                   NULL::bigint
            FROM dvt_events e
            WHERE e.run_id = p_run_id AND e.idempotency_key = ANY (v_keys);
        GET DIAGNOSTICS v_dups = ROW_COUNT;
    END IF;
    IF v_dups > 0 OR v_last <> p_expected_seq THEN
        RETURN QUERY SELECT 'stale'::text, NULL::text, NULL::bigint, NULL::text,
                            NULL::timestamptz, v_last;
        RETURN;
    END IF;

    RETURN QUERY
        WITH inserted AS (
            INSERT INTO dvt_events AS e (
                run_id, run_seq, idempotency_key, event_id, event_type, tenant_id, project_id,
                environment_id, step_id, logical_attempt_id, engine_attempt_id, emitted_at,
                persisted_at, envelope)
            SELECT p_run_id, p_expected_seq + u.o, u.k, u.i, u.t, p_tenant_id, u.p, u.v, u.s,
                   u.l, u.n, u.at, v_now, u.e
            FROM json_to_recordset(p_events)
                 AS u(k text, i text, t text, p text, v text, s text, l integer, n integer,
                      at timestamptz, e json, o integer)
            RETURNING e.idempotency_key, e.run_seq, e.event_id, e.persisted_at
        )
        SELECT 'appended'::text, i.idempotency_key, i.run_seq, i.event_id, i.persisted_at,
               p_expected_seq + v_count
        FROM inserted i;

    UPDATE dvt_runs r
    SET last_seq = p_expected_seq + v_count,
        status = p_status,
        substatus = p_substatus,
        snapshot = COALESCE(p_snapshot, r.snapshot),
        snapshot_seq = CASE WHEN p_snapshot IS NULL THEN r.snapshot_seq
                            ELSE p_expected_seq + v_count END,
        updated_at = v_now
    WHERE r.run_id = p_run_id;

    IF p_outbox THEN
        INSERT INTO dvt_outbox (run_id, run_seq, tenant_id, event_type)
        SELECT p_run_id, p_expected_seq + u.o, p_tenant_id, u.t
        FROM json_to_recordset(p_events) AS u(t text, o integer);
    END IF;

    -- A wake-up call only: followers read the log from their watermark, so a lost
    -- notification delays an event but never loses it.
    PERFORM pg_notify(p_channel, p_tenant_id || '|' || p_run_id || '|'
                                 || (p_expected_seq + v_count)::text);
END;
$$;
