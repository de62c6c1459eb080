-- Records that failed their contract (batchkit.contracts), kept with the validation error for a human.
-- The payload is the record as received: jsonb when it is a JSON object Postgres can store, otherwise
-- its text form in payload_text (a bare string or number, NaN, a NUL character...).
CREATE SCHEMA IF NOT EXISTS batch_meta;

CREATE TABLE IF NOT EXISTS batch_meta.quarantine (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id          text        NOT NULL,
    task_id         text        NOT NULL,
    run_id          text        NOT NULL,
    interval_start  timestamptz NOT NULL,
    interval_end    timestamptz NOT NULL,
    source          text        NOT NULL,
    page_number     integer     NOT NULL,
    -- 0-based position of the record within its page
    record_index    integer     NOT NULL,
    payload         jsonb,
    payload_text    text,
    error           text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quarantine_one_payload CHECK ((payload IS NULL) <> (payload_text IS NULL))
);

-- Reconciliation counts and the clean start of a re-run both select one task's interval.
CREATE INDEX IF NOT EXISTS quarantine_interval_idx
    ON batch_meta.quarantine (dag_id, task_id, interval_start, interval_end);
