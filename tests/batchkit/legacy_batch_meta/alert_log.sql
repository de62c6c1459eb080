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

-- Added later: ADD COLUMN IF NOT EXISTS brings existing databases along. Guarded by a catalog check
-- because this file runs before every alert and ALTER TABLE locks the table even when it does nothing.
-- signature: batchkit.alerts.error_signature (error class + message with ids, numbers and timestamps
-- stripped); a failure dedups only against one of the same signature ('' for deadline alerts).
-- channels: what a `sent` alert was delivered on (pager, slack, email); NULL for other outcomes.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
         WHERE table_schema = 'batch_meta' AND table_name = 'alert_log' AND column_name = 'channels'
    ) THEN
        ALTER TABLE batch_meta.alert_log ADD COLUMN IF NOT EXISTS signature text NOT NULL DEFAULT '';
        ALTER TABLE batch_meta.alert_log ADD COLUMN IF NOT EXISTS channels text[];
    END IF;
END $$;

-- The dedup lookup: the latest 'sent' row for one (kind, dag_id, task_id, signature).
DROP INDEX IF EXISTS batch_meta.alert_log_sent_idx;
CREATE INDEX IF NOT EXISTS alert_log_sent_signature_idx
    ON batch_meta.alert_log (kind, dag_id, task_id, signature, created_at DESC)
    WHERE outcome = 'sent';
