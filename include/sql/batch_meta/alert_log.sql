-- Every alert decision of batchkit.alerts: sent, suppressed as a duplicate within the dedup window, or
-- silenced by a row of batch_meta.alert_silences.
CREATE SCHEMA IF NOT EXISTS batch_meta;

CREATE TABLE IF NOT EXISTS batch_meta.alert_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL,
    dag_id      text        NOT NULL,
    task_id     text        NOT NULL DEFAULT '',
    run_id      text,
    outcome     text        NOT NULL CHECK (outcome IN ('sent', 'suppressed', 'silenced')),
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The dedup lookup: the latest 'sent' row for one (kind, dag_id, task_id).
CREATE INDEX IF NOT EXISTS alert_log_sent_idx
    ON batch_meta.alert_log (kind, dag_id, task_id, created_at DESC)
    WHERE outcome = 'sent';
