-- Three changes to the event log, applied to existing data in place.
--
-- 1. A run is identified by (tenant_id, run_id), not run_id alone: another tenant's runId is a
--    fresh one, so registering it says nothing about whether it exists elsewhere.
-- 2. Every event gets a place in one store-wide commit order, (commit_xid, position): the id of
--    the transaction that wrote it and a sequence number. Readers of a tenant stream only read
--    events whose transaction is older than the oldest transaction still in progress
--    (pg_snapshot_xmin), so an event can never appear below a position a reader has passed.
--    For one run that order must be runSeq order, so a writer must not own a transaction id
--    while it waits for a run: writers of a run now serialise on a transaction-scoped advisory
--    lock (which, unlike SELECT ... FOR UPDATE, assigns no transaction id), and the id comes
--    with the first row written, after the lock. A batch locks all its runs first.
-- 3. Each event stores the fingerprint of its type and payload (content_hash), so a repeated
--    idempotency key with different content is refused instead of answered as a duplicate.

ALTER TABLE dvt_outbox DROP CONSTRAINT dvt_outbox_event_fk;
ALTER TABLE dvt_events DROP CONSTRAINT dvt_events_run_fk;
ALTER TABLE dvt_events DROP CONSTRAINT dvt_events_pkey;
ALTER TABLE dvt_events DROP CONSTRAINT dvt_events_idempotency;
ALTER TABLE dvt_runs DROP CONSTRAINT dvt_runs_pkey;

ALTER TABLE dvt_runs ADD CONSTRAINT dvt_runs_pkey PRIMARY KEY (tenant_id, run_id);
ALTER TABLE dvt_events ADD CONSTRAINT dvt_events_pkey PRIMARY KEY (tenant_id, run_id, run_seq);
ALTER TABLE dvt_events
    ADD CONSTRAINT dvt_events_idempotency UNIQUE (tenant_id, run_id, idempotency_key);
ALTER TABLE dvt_events ADD CONSTRAINT dvt_events_run_fk
    FOREIGN KEY (tenant_id, run_id) REFERENCES dvt_runs (tenant_id, run_id);
ALTER TABLE dvt_outbox ADD CONSTRAINT dvt_outbox_event_fk
    FOREIGN KEY (tenant_id, run_id, run_seq) REFERENCES dvt_events (tenant_id, run_id, run_seq);

-- Tenant followers read the log itself now (below), not the runs touched recently.
DROP INDEX dvt_runs_tenant_updated;

ALTER TABLE dvt_events
    ADD COLUMN commit_xid xid8,
    ADD COLUMN position bigint,
    ADD COLUMN content_hash text;
CREATE SEQUENCE dvt_events_position AS bigint;
-- Events already stored committed before this migration: they become this transaction's, in
-- the order they were persisted. Their content_hash stays NULL; the store computes it from the
-- envelope when a key of theirs comes back.
UPDATE dvt_events e
SET commit_xid = pg_current_xact_id(), position = n.position
FROM (SELECT tenant_id, run_id, run_seq,
             row_number() OVER (ORDER BY persisted_at, tenant_id, run_id, run_seq) AS position
      FROM dvt_events) AS n
WHERE e.tenant_id = n.tenant_id AND e.run_id = n.run_id AND e.run_seq = n.run_seq;
SELECT setval('dvt_events_position', (SELECT COALESCE(max(position), 0) + 1 FROM dvt_events),
              false);
ALTER TABLE dvt_events
    ALTER COLUMN commit_xid SET DEFAULT pg_current_xact_id(),
    ALTER COLUMN commit_xid SET NOT NULL,
    ALTER COLUMN position SET DEFAULT nextval('dvt_events_position'),
    ALTER COLUMN position SET NOT NULL;
ALTER SEQUENCE dvt_events_position OWNED BY dvt_events.position;
CREATE INDEX dvt_events_tenant_stream ON dvt_events (tenant_id, commit_xid, position);

-- The advisory lock key of a run (one key space per database; a collision only serialises two
-- runs' writers).
CREATE FUNCTION dvt_run_lock_key(p_tenant_id text, p_run_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashtextextended(p_tenant_id || '|' || p_run_id, 7419) $$;

-- Lock several runs for the rest of the transaction, in key order (so two batches never
-- deadlock), before anything is written.
CREATE FUNCTION dvt_lock_runs(p_tenant_ids text[], p_run_ids text[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key bigint;
BEGIN
    FOR v_key IN
        SELECT DISTINCT dvt_run_lock_key(t, r)
        FROM unnest(p_tenant_ids, p_run_ids) AS u(t, r)
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
END;
$$;

-- The append function of 0002 with the run identified by (tenant, run), the run's lock an
-- advisory lock, positions drawn in runSeq order, the persisted time taken under the lock, and
-- content hashes stored and returned with duplicates. Rows returned: ('duplicate', key,
-- runSeq, eventId, persistedAt, NULL, contentHash) per key already stored; then one of
-- ('appended', key, runSeq, eventId, persistedAt, lastSeq, NULL) per new event, ('stale',
-- NULL.., lastSeq, NULL) or ('missing', NULL..) when the run is unknown to this tenant.
DROP FUNCTION dvt_append_events(text, text, bigint, json, text, text, json, boolean, text);

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
    last_seq        bigint,
    content_hash    text
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
            FROM json_to_recordset(p_events)
                 AS u(k text, i text, t text, p text, v text, s text, l integer, n integer,
                      at timestamptz, e json, o integer, h text)
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
        FROM json_to_recordset(p_events) AS u(t text, o integer);
    END IF;

    -- A wake-up call only: followers read the log from their cursor, so a lost notification
    -- delays an event but never loses it.
    PERFORM pg_notify(p_channel, p_tenant_id || '|' || p_run_id || '|'
                                 || (p_expected_seq + v_count)::text);
END;
$$;
