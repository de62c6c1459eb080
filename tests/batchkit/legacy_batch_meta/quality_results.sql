-- Data-quality check results (batchkit.operators.quality): one row per check per try of a check task,
-- passed or failed, written before the task's pass/fail is decided, so a failed check leaves its row.
-- A task that runs again (a retry, a clear) adds new rows; the latest checked_at per check is current.
CREATE SCHEMA IF NOT EXISTS batch_meta;

CREATE TABLE IF NOT EXISTS batch_meta.quality_results (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id          text        NOT NULL,
    task_id         text        NOT NULL,
    run_id          text        NOT NULL,
    try_number      integer,
    -- the data interval the run owns (batchkit.intervals.task_interval); NULL when it has none
    interval_start  timestamptz,
    interval_end    timestamptz,
    table_name      text,
    -- common-sql's name: `<column>.<check>` for a column check, the check's key for a table check
    check_name      text        NOT NULL,
    check_type      text,
    column_name     text,
    passed          boolean     NOT NULL,
    expected        text,
    -- what the check observed: the column statistic, or 1/0 for a table check's statement
    observed        text,
    description     text,
    checked_at      timestamptz NOT NULL DEFAULT now()
);

-- "How did this run's checks go?" and "how has this check done over time?".
CREATE INDEX IF NOT EXISTS quality_results_run_idx ON batch_meta.quality_results (dag_id, run_id);
CREATE INDEX IF NOT EXISTS quality_results_check_idx
    ON batch_meta.quality_results (dag_id, check_name, checked_at DESC);
