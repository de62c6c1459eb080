-- Side-effect ledger: one row per side-effect key (batchkit.ledger.perform_once).
-- A row in state 'claimed' exists but its action never completed (it raised, or is running now under a
-- row lock); only 'done' makes later attempts skip.
CREATE SCHEMA IF NOT EXISTS batch_meta;

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
