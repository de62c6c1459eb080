-- Tier-3 alerts waiting for the hourly email digest (batchkit.alerts.queue_for_digest; sent by the DAG
-- platform_alert_digest through batchkit.alerts.send_alert_digests).
-- Life of a row: pending (batch NULL) -> claimed into a batch (one batch = one email to one recipient
-- list on one SMTP connection; its membership never changes) -> sent (sent_at set in the same commit
-- that marks the batch's batchkit.ledger key `alert_digest:<batch>` done in batch_meta.side_effects).
CREATE SCHEMA IF NOT EXISTS batch_meta;

CREATE TABLE IF NOT EXISTS batch_meta.alert_digest (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL,
    dag_id          text        NOT NULL,
    task_id         text        NOT NULL DEFAULT '',
    run_id          text,
    -- batchkit.alerts.error_signature, as in alert_log
    signature       text        NOT NULL DEFAULT '',
    -- the scrubbed alert payload, as in alert_log
    payload         jsonb       NOT NULL,
    smtp_conn_id    text        NOT NULL,
    recipients      text[]      NOT NULL CHECK (cardinality(recipients) > 0),
    -- later alerts of the same (kind, dag_id, task_id, signature) suppressed by the dedup window
    repeats         integer     NOT NULL DEFAULT 0,
    last_repeat_at  timestamptz,
    batch           text,
    claimed_by      text,
    claimed_at      timestamptz,
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (sent_at IS NULL OR batch IS NOT NULL)
);

-- What the digest still has to send: pending rows and claimed batches not sent yet.
CREATE INDEX IF NOT EXISTS alert_digest_unsent_idx
    ON batch_meta.alert_digest (batch, id) WHERE sent_at IS NULL;
