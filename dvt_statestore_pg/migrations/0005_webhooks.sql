-- Webhook subscriptions and deliveries of the HTTP service (dvt_api).
-- Runs inside the target schema; independent of the run tables like 0004.

-- secrets holds HMAC signing keys (newest first; two during a rotation). The service signs
-- with them, so they cannot be hashed: protect them at rest with the database's own means
-- (disk encryption, restricted roles, encrypted backups); docs/api.md §7 says more.
CREATE TABLE dvt_webhooks (
    webhook_id      text        NOT NULL PRIMARY KEY,
    tenant_id       text        NOT NULL,
    url             text        NOT NULL,
    events          text[]      NOT NULL,
    secrets         text[]      NOT NULL,
    description     text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    disabled_at     timestamptz,
    disabled_reason text,
    failing_since   timestamptz
);
CREATE INDEX dvt_webhooks_tenant ON dvt_webhooks (tenant_id, created_at);

-- One row per (webhook, triggering event): the unique key makes re-reading the outbox after a
-- crash harmless. leased_until hands a delivery to one sender; a dead sender's lease expires.
CREATE TABLE dvt_webhook_deliveries (
    seq              bigserial   NOT NULL UNIQUE,
    delivery_id      text        NOT NULL PRIMARY KEY,
    webhook_id       text        NOT NULL REFERENCES dvt_webhooks (webhook_id) ON DELETE CASCADE,
    tenant_id        text        NOT NULL,
    event_type       text        NOT NULL,
    run_id           text        NOT NULL,
    source           text        NOT NULL,
    payload          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    next_attempt_at  timestamptz,
    leased_until     timestamptz,
    UNIQUE (webhook_id, source)
);
CREATE INDEX dvt_webhook_deliveries_due ON dvt_webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX dvt_webhook_deliveries_list ON dvt_webhook_deliveries (webhook_id, seq DESC);
