-- API keys and idempotency records of the HTTP service (dvt_api).
-- Runs inside the target schema (search_path is set by the migrator); independent of the run
-- tables, so it applies in any order with the other migrations.

-- A key is stored only as the sha256 of its text; the text is shown once when it is made.
CREATE TABLE dvt_api_keys (
    key_id      text        NOT NULL PRIMARY KEY,
    key_hash    text        NOT NULL UNIQUE,
    tenant_id   text        NOT NULL,
    roles       text[]      NOT NULL,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at  timestamptz
);
CREATE INDEX dvt_api_keys_tenant ON dvt_api_keys (tenant_id, created_at);

-- One row per (tenant, Idempotency-Key). The primary key is what makes concurrent first
-- requests race-free: exactly one INSERT wins, the others read the winner's row.
CREATE TABLE dvt_idempotency_keys (
    tenant_id       text        NOT NULL,
    idem_key        text        NOT NULL,
    request_hash    text        NOT NULL,
    locked_at       timestamptz,
    response_status integer,
    response_body   bytea,
    response_headers json,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);
CREATE INDEX dvt_idempotency_keys_expiry ON dvt_idempotency_keys (expires_at);

-- Which tenant stored which plan: the registry is shared and content-addressed, so the service
-- answers a plan's bytes only to a tenant that stored it.
CREATE TABLE dvt_tenant_plans (
    tenant_id   text        NOT NULL,
    sha256      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, sha256)
);
