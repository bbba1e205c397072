-- Tamper evidence for the event log (docs/audit.md): the per-run hash chain, written by the
-- sealer only (appends do not touch these tables), and the signed checkpoints over chain heads.
-- Runs inside the target schema (search_path is set by the migrator).

-- One row per sealed event. No foreign key to dvt_events: the archiver deletes hot events, and
-- the chain of an archived run must outlive them (verify reads its events from the Parquet
-- files and checks them against these rows).
CREATE TABLE dvt_audit_chain (
    tenant_id   text   NOT NULL,
    run_id      text   NOT NULL,
    run_seq     bigint NOT NULL,
    -- sha256 (hex) of the event without its runSeq (finds a moved event), and the chain hash.
    event_hash  text   NOT NULL,
    chain_hash  text   NOT NULL,
    CONSTRAINT dvt_audit_chain_pkey PRIMARY KEY (tenant_id, run_id, run_seq)
);

-- Each run's sealed head: where the next seal continues. Runs with unsealed events are the
-- ones whose counter (dvt_runs.last_seq) is ahead of last_seq here.
CREATE TABLE dvt_audit_heads (
    tenant_id   text   NOT NULL,
    run_id      text   NOT NULL,
    last_seq    bigint NOT NULL,
    chain_hash  text   NOT NULL,
    CONSTRAINT dvt_audit_heads_pkey PRIMARY KEY (tenant_id, run_id)
);

-- Signed checkpoints, numbered from 1 without gaps; each payload names the previous one's
-- digest. The payload is the exact canonical JSON the Ed25519 signature covers.
CREATE TABLE dvt_audit_checkpoints (
    checkpoint_id bigint      NOT NULL PRIMARY KEY,
    key_id        text        NOT NULL,
    created_at    timestamptz NOT NULL,
    payload       text        NOT NULL,
    signature     text        NOT NULL
);
