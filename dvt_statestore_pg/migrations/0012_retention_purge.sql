-- Retention and purge (docs/retention.md): per-tenant retention terms, signed records of what
-- a purge or a retention pass removed, and the cold-tier work left after such a commit.
-- Runs inside the target schema (search_path is set by the migrator).

-- A tenant's terms; a tenant without a row has the defaults (90 hot days, 7 cold years).
CREATE TABLE dvt_retention_policies (
    tenant_id   text        NOT NULL PRIMARY KEY,
    hot_days    integer     NOT NULL,
    cold_years  integer     NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT dvt_retention_policies_terms CHECK (hot_days >= 0 AND cold_years >= 1)
);

-- Signed records of removals: a tenant purge, or the runs a retention pass expired. The payload
-- is the exact canonical JSON the Ed25519 signature covers; each record stands alone (a purge
-- deletes the tenant's earlier retention records, which it supersedes).
CREATE TABLE dvt_audit_tombstones (
    tombstone_id bigint      NOT NULL PRIMARY KEY,
    tenant_id    text        NOT NULL,
    kind         text        NOT NULL,
    key_id       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    payload      text        NOT NULL,
    signature    text        NOT NULL,
    CONSTRAINT dvt_audit_tombstones_kind CHECK (kind IN ('purge', 'retention'))
);
CREATE INDEX dvt_audit_tombstones_tenant ON dvt_audit_tombstones (tenant_id, tombstone_id);

-- Cold-tier work a purge or retention pass committed but has not finished: objects to delete
-- (a path ending in '/' is a whole prefix) and batches whose manifest object is to be rewritten
-- from dvt_archive_batches.manifest (or deleted, when the batch row is gone). The next pass
-- finishes it first, so a crash between the commit and the deletes loses nothing.
CREATE TABLE dvt_cold_cleanup (
    cleanup_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    root_url    text        NOT NULL,
    paths       text[]      NOT NULL,
    batches     text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
