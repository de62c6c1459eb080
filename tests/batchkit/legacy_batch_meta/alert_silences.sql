-- Silences: while now() < until, alerts matching (dag_id, task_id pattern) are logged as 'silenced', not sent.
-- A silence always expires; `make silence` writes these rows (see docs/operations.md).
CREATE SCHEMA IF NOT EXISTS batch_meta;

CREATE TABLE IF NOT EXISTS batch_meta.alert_silences (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id        text        NOT NULL,
    -- a SQL LIKE pattern; '%' silences every task of the DAG and its deadline alerts
    task_pattern  text        NOT NULL DEFAULT '%',
    until         timestamptz NOT NULL,
    reason        text        NOT NULL CHECK (length(reason) > 0),
    created_by    text        NOT NULL DEFAULT current_user,
    created_at    timestamptz NOT NULL DEFAULT now()
);
