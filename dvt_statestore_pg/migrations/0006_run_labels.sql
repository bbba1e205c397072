-- Run labels and the run-list filters by plan, label and creation time.
-- Runs inside the target schema (search_path is set by the migrator).

-- labels is jsonb, unlike the header and snapshot (exact json text): it is only ever matched
-- with @> and never rebuilt byte for byte, and the label rules keep U+0000 out of it. A
-- column added with a constant default rewrites no row, and runs registered before this
-- migration carry no labels in their headers, so nothing needs back-filling.
ALTER TABLE dvt_runs ADD COLUMN labels jsonb NOT NULL DEFAULT '{}'::jsonb;

-- "Runs with these labels": jsonb_path_ops indexes each key/value path as one hash, the
-- smallest GIN for @>. The planner reads it and checks the tenant on each row, or walks the
-- tenant's created_at order and filters when the label is common enough to fill a page fast.
-- fastupdate is off: a run is registered once, so insert cost hardly matters, while a pending
-- list (flushed only by vacuum) made every label lookup read it whole: 4 ms instead of 0.35 ms
-- on 60k runs inserted at once (tests/pg/test_pg_run_filters.py seeds such a table).
CREATE INDEX dvt_runs_labels ON dvt_runs USING gin (labels jsonb_path_ops) WITH (fastupdate = off);

-- "Runs of this plan, newest first": equality on tenant and plan, then the keyset order.
CREATE INDEX dvt_runs_tenant_plan_created
    ON dvt_runs (tenant_id, plan_id, created_at DESC, run_id DESC);
