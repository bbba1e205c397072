-- The event log, the latest-status index, the plan registry and the outbox.
-- Runs inside the target schema (search_path is set by the migrator).

-- One row per run: its registration (header), the per-run append lock and runSeq counter,
-- the latest status for list_runs, and the stored snapshot. Snapshots and envelopes are kept
-- as `json` (exact text) rather than `jsonb`: jsonb reorders keys, rewrites numbers and
-- refuses \u0000, which would break byte-identical rebuilds and exact storage.
CREATE TABLE dvt_runs (
    run_id          text        NOT NULL PRIMARY KEY,
    tenant_id       text        NOT NULL,
    project_id      text        NOT NULL,
    environment_id  text        NOT NULL,
    plan_id         text        NOT NULL,
    plan_version    text        NOT NULL,
    engine          text        NOT NULL,
    run_request_key text        NOT NULL,
    header          json        NOT NULL,
    status          text        NOT NULL DEFAULT 'PENDING',
    substatus       text,
    -- The runSeq counter: the highest runSeq appended. Appends lock this row, which is what
    -- serialises writers of one run and makes the duplicate check race-free.
    last_seq        bigint      NOT NULL DEFAULT 0,
    -- The stored snapshot and the runSeq it reflects; readers apply the log after it.
    snapshot        json        NOT NULL,
    snapshot_seq    bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT dvt_runs_snapshot_order CHECK (snapshot_seq <= last_seq)
);

-- "Active runs of a tenant, newest first": equality on tenant and status, then the order.
CREATE INDEX dvt_runs_tenant_status_created
    ON dvt_runs (tenant_id, status, created_at DESC, run_id DESC);
CREATE INDEX dvt_runs_tenant_created
    ON dvt_runs (tenant_id, created_at DESC, run_id DESC);
-- Tenant followers catch up from here after a lost notification connection.
CREATE INDEX dvt_runs_tenant_updated
    ON dvt_runs (tenant_id, updated_at);
-- start_run is idempotent on the run-request key within a tenant.
CREATE UNIQUE INDEX dvt_runs_request_key ON dvt_runs (tenant_id, run_request_key);

-- The append-only log. Rows are never updated or deleted in normal operation.
CREATE TABLE dvt_events (
    run_id             text        NOT NULL,
    run_seq            bigint      NOT NULL,
    idempotency_key    text        NOT NULL,
    event_id           text        NOT NULL,
    event_type         text        NOT NULL,
    tenant_id          text        NOT NULL,
    project_id         text        NOT NULL,
    environment_id     text        NOT NULL,
    step_id            text,
    logical_attempt_id integer,
    engine_attempt_id  integer,
    emitted_at         timestamptz NOT NULL,
    persisted_at       timestamptz NOT NULL,
    -- The producer's envelope exactly as received; runSeq and persistedAt are the columns.
    envelope           json        NOT NULL,
    CONSTRAINT dvt_events_pkey PRIMARY KEY (run_id, run_seq),
    CONSTRAINT dvt_events_idempotency UNIQUE (run_id, idempotency_key),
    CONSTRAINT dvt_events_run_fk FOREIGN KEY (run_id) REFERENCES dvt_runs (run_id),
    CONSTRAINT dvt_events_seq_positive CHECK (run_seq > 0)
);

-- Content-addressed plans: the key is the sha256 of the bytes.
CREATE TABLE dvt_plans (
    sha256      text        NOT NULL PRIMARY KEY,
    content     bytea       NOT NULL,
    size_bytes  bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT dvt_plans_sha256_form CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT dvt_plans_size CHECK (size_bytes = octet_length(content))
);

-- Events bound for external consumers, written in the append's transaction.
CREATE TABLE dvt_outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        text        NOT NULL,
    run_seq       bigint      NOT NULL,
    tenant_id     text        NOT NULL,
    event_type    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_until timestamptz,
    delivered_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    CONSTRAINT dvt_outbox_event_fk FOREIGN KEY (run_id, run_seq) REFERENCES dvt_events (run_id, run_seq)
);
CREATE INDEX dvt_outbox_pending ON dvt_outbox (id) WHERE delivered_at IS NULL;
