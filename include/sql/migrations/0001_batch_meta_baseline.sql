-- Baseline: the batch_meta control tables as the per-task DDL (include/sql/batch_meta/*.sql, removed) left
-- them, in dependency order. Every statement is idempotent, so a warehouse those files created upgrades
-- to version 1 by running this file over it (batchkit.migrations records it in batch_meta.schema_version).
-- Later changes go into new numbered files, never here (docs/operations.md "Control-table schema").

CREATE SCHEMA IF NOT EXISTS batch_meta;

-- ===== batch_meta.side_effects ======================================================================
-- Side-effect ledger: one row per side-effect key (batchkit.ledger.perform_once).
-- A row in state 'claimed' exists but its action never completed (it raised, or is running now under a
-- row lock); only 'done' makes later attempts skip.
CREATE TABLE IF NOT EXISTS batch_meta.side_effects (
    effect_key     text        PRIMARY KEY,
    state          text        NOT NULL DEFAULT 'claimed' CHECK (state IN ('claimed', 'done')),
    -- completed performances: 1 normally, more only through force=True
    attempts       integer     NOT NULL DEFAULT 0,
    first_sent_at  timestamptz,
    last_sent_at   timestamptz,
    -- what the action returned the last time it completed
    result         jsonb,
    last_error     text,
    last_error_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- ===== batch_meta.checkpoints ======================================================================
-- Progress of one task over one data interval (batchkit.checkpoints), written in the same transaction
-- as the page it describes, so a killed run resumes exactly after its last committed page.
-- 'in_progress': pages are being staged; 'complete': merged into the target (a new run of the interval
-- starts clean); 'rejected': stopped by the quarantine threshold or a failed reconciliation (a new run
-- starts clean too, the quarantined rows stay until then as the evidence).

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

-- ===== batch_meta.quarantine ======================================================================
-- Records that failed their contract (batchkit.contracts), kept with the validation error for a human.
-- The payload is the record as received: jsonb when it is a JSON object Postgres can store, otherwise
-- its text form in payload_text (a bare string or number, NaN, a NUL character...).

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

-- ===== batch_meta.quality_results ======================================================================
-- Data-quality check results (batchkit.operators.quality): one row per check per try of a check task,
-- passed or failed, written before the task's pass/fail is decided, so a failed check leaves its row.
-- A task that runs again (a retry, a clear) adds new rows; the latest checked_at per check is current.

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

-- ===== batch_meta.alert_log ======================================================================
-- Every alert decision of batchkit.alerts: sent, suppressed as a duplicate within the dedup window, or
-- silenced by a row of batch_meta.alert_silences.

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

-- Added before migrations existed: ADD COLUMN IF NOT EXISTS brings a warehouse whose alert_log predates
-- these columns along (the old per-alert DDL guarded it by this catalog check; kept as it was).
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

-- ===== batch_meta.alert_silences ======================================================================
-- Silences: while now() < until, alerts matching (dag_id, task_id pattern) are logged as 'silenced', not sent.
-- A silence always expires; `make silence` writes these rows (see docs/operations.md).

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

-- ===== batch_meta.alert_digest ======================================================================
-- Tier-3 alerts waiting for the hourly email digest (batchkit.alerts.queue_for_digest; sent by the DAG
-- platform_alert_digest through batchkit.alerts.send_alert_digests).
-- Life of a row: pending (batch NULL) -> claimed into a batch (one batch = one email to one recipient
-- list on one SMTP connection; its membership never changes) -> sent (sent_at set in the same commit
-- that marks the batch's batchkit.ledger key `alert_digest:<batch>` done in batch_meta.side_effects).

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

-- ===== batch_meta.rate_limits ======================================================================
-- The shared client-side rate limit of each source (batchkit.extract.ratelimit.PostgresStore): one row per
-- limit, keyed by the source's HTTP connection id, holding its GCRA schedule. Every acquire, from any
-- process on any machine, is one INSERT ... ON CONFLICT DO UPDATE ... RETURNING on this table:
--   slot = max(now, tat - (burst - 1) * interval),  tat = max(tat, now) + interval
-- with now = clock_timestamp() taken under the row lock, so the database's clock orders everyone.
-- UNLOGGED: the schedule is ephemeral. A crash empties the table, which only allows one fresh burst, and an
-- acquire costs no WAL flush. A row whose tat has passed means the same as no row (nothing to clean up).

CREATE UNLOGGED TABLE IF NOT EXISTS batch_meta.rate_limits (
    limit_key   text        PRIMARY KEY,
    -- theoretical arrival time: the earliest slot of the next caller, before the burst tolerance
    tat         timestamptz NOT NULL,
    -- the database's clock at the last acquire
    updated_at  timestamptz NOT NULL
);
