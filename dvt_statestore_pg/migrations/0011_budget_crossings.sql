-- Budget thresholds a tenant crossed (docs/cost.md): one row per tenant, month and threshold
-- (80, 100), inserted once by whichever process notices the crossing first. Tenant-level, so
-- not an event of the log (every event there belongs to a run).
CREATE TABLE dvt_budget_crossings (
    tenant_id    text        NOT NULL,
    month        text        NOT NULL,
    threshold    integer     NOT NULL,
    used_units   numeric     NOT NULL,
    budget_units bigint      NOT NULL,
    crossed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, month, threshold)
);
