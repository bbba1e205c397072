-- Tenant limits and admission (docs/limits.md): overrides, slot reservations, token buckets
-- and the durable per-tenant queue of runs waiting for a slot.

-- Per-tenant overrides of the settings defaults (camelCase keys, as the API shows them).
CREATE TABLE dvt_tenant_limits (
    tenant_id  text        NOT NULL PRIMARY KEY,
    overrides  jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A slot held for a run admitted but not registered yet. Once the run is registered its row
-- in dvt_runs holds the slot (until its status is terminal) and the reservation is ignored;
-- an unregistered reservation lapses after the lease, so a crash cannot keep it.
CREATE TABLE dvt_admission_slots (
    tenant_id   text        NOT NULL,
    run_id      text        NOT NULL,
    reserved_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, run_id)
);

-- Token buckets of the per-minute limits (kind: start or signal).
CREATE TABLE dvt_admission_buckets (
    tenant_id  text             NOT NULL,
    kind       text             NOT NULL,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);

-- Runs accepted as QUEUED, in admission order per tenant. A row goes once its run started;
-- a cancelled or refused one stays, so its status can still be read.
CREATE TABLE dvt_admission_queue (
    seq             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text        NOT NULL,
    run_id          text        NOT NULL,
    run_request_key text        NOT NULL,
    plan_ref        json        NOT NULL,
    context         json        NOT NULL,
    state           text        NOT NULL DEFAULT 'QUEUED',
    enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_until   timestamptz,
    error           json,
    CONSTRAINT dvt_admission_queue_state
        CHECK (state IN ('QUEUED', 'STARTING', 'CANCELLED', 'FAILED')),
    CONSTRAINT dvt_admission_queue_run UNIQUE (tenant_id, run_id),
    CONSTRAINT dvt_admission_queue_request UNIQUE (tenant_id, run_request_key)
);
CREATE INDEX dvt_admission_queue_waiting ON dvt_admission_queue (tenant_id, seq)
    WHERE state IN ('QUEUED', 'STARTING');
