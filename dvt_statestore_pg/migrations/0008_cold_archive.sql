-- The cold tier: events of finished runs moved to Parquet files (dvt_archive), and the
-- registry that says which of a run's events live there.
-- Runs inside the target schema (search_path is set by the migrator).

-- One archiver pass writes one batch. The row is committed as 'writing' with the files it is
-- about to write before any of them exists, and becomes 'committed' in the transaction that
-- registers its runs and deletes their events from dvt_events. A batch still 'writing' was
-- interrupted: its files (complete or not) are read by nobody, and the next pass deletes them
-- and the row. Readers only ever read files of committed batches.
CREATE TABLE dvt_archive_batches (
    batch_id     text        NOT NULL PRIMARY KEY,
    -- The cold store the files are under (file:///... or s3://bucket/prefix), no credentials.
    root_url     text        NOT NULL,
    state        text        NOT NULL,
    -- Paths relative to root_url: every data file and the manifest the batch writes.
    files        text[]      NOT NULL,
    -- The manifest (row counts, content hashes), once the files are verified.
    manifest     json,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    committed_at timestamptz,
    CONSTRAINT dvt_archive_batches_state CHECK (state IN ('writing', 'committed'))
);

-- A run's events first_seq..last_seq are in the cold tier, in these files of this batch. A run
-- that received events after it was archived (a decision on a late signal) and was archived
-- again has one row per pass.
CREATE TABLE dvt_archived_runs (
    tenant_id  text   NOT NULL,
    run_id     text   NOT NULL,
    first_seq  bigint NOT NULL,
    last_seq   bigint NOT NULL,
    batch_id   text   NOT NULL REFERENCES dvt_archive_batches (batch_id),
    files      text[] NOT NULL,
    CONSTRAINT dvt_archived_runs_pkey PRIMARY KEY (tenant_id, run_id, first_seq),
    CONSTRAINT dvt_archived_runs_run_fk
        FOREIGN KEY (tenant_id, run_id) REFERENCES dvt_runs (tenant_id, run_id),
    CONSTRAINT dvt_archived_runs_range CHECK (first_seq >= 1 AND last_seq >= first_seq)
);
CREATE INDEX dvt_archived_runs_batch ON dvt_archived_runs (batch_id);

-- No index serves the archiver's scan of dvt_runs (terminal, idle since the cutoff, with hot
-- events): one sequential scan per pass. An index on updated_at would make every append's
-- update of its run row a non-HOT update, a cost paid on the hot path for a daily job.
