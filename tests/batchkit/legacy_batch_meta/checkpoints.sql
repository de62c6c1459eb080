-- Progress of one task over one data interval (batchkit.checkpoints), written in the same transaction
-- as the page it describes, so a killed run resumes exactly after its last committed page.
-- 'in_progress': pages are being staged; 'complete': merged into the target (a new run of the interval
-- starts clean); 'rejected': stopped by the quarantine threshold or a failed reconciliation (a new run
-- starts clean too, the quarantined rows stay until then as the evidence).
CREATE SCHEMA IF NOT EXISTS batch_meta;

CREATE TABLE IF NOT EXISTS batch_meta.checkpoints (
    dag_id            text        NOT NULL,
    task_id           text        NOT NULL,
    interval_start    timestamptz NOT NULL,
    interval_end      timestamptz NOT NULL,
    -- the run that last wrote this row (a resume may belong to a later try or run of the interval)
    run_id            text        NOT NULL,
    state             text        NOT NULL DEFAULT 'in_progress'
                                  CHECK (state IN ('in_progress', 'complete', 'rejected')),
    pages_done        integer     NOT NULL DEFAULT 0 CHECK (pages_done >= 0),
    rows_received     bigint      NOT NULL DEFAULT 0,
    rows_staged       bigint      NOT NULL DEFAULT 0,
    rows_quarantined  bigint      NOT NULL DEFAULT 0,
    -- the source's state that requests the page after pages_done (NULL: start, or nothing left)
    next_state        jsonb,
    -- the merge's outcome, set when state becomes 'complete'
    rows_inserted     bigint,
    rows_updated      bigint,
    rows_deleted      bigint,
    started_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    PRIMARY KEY (dag_id, task_id, interval_start, interval_end),
    -- every record received is either staged for the target or quarantined, at every commit
    CONSTRAINT checkpoints_rows_reconcile CHECK (rows_received = rows_staged + rows_quarantined)
);
