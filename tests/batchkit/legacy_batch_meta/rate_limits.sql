-- The shared client-side rate limit of each source (batchkit.extract.ratelimit.PostgresStore): one row per
-- limit, keyed by the source's HTTP connection id, holding its GCRA schedule. Every acquire, from any
-- process on any machine, is one INSERT ... ON CONFLICT DO UPDATE ... RETURNING on this table:
--   slot = max(now, tat - (burst - 1) * interval),  tat = max(tat, now) + interval
-- with now = clock_timestamp() taken under the row lock, so the database's clock orders everyone.
-- UNLOGGED: the schedule is ephemeral. A crash empties the table, which only allows one fresh burst, and an
-- acquire costs no WAL flush. A row whose tat has passed means the same as no row (nothing to clean up).
CREATE SCHEMA IF NOT EXISTS batch_meta;

CREATE UNLOGGED TABLE IF NOT EXISTS batch_meta.rate_limits (
    limit_key   text        PRIMARY KEY,
    -- theoretical arrival time: the earliest slot of the next caller, before the burst tolerance
    tat         timestamptz NOT NULL,
    -- the database's clock at the last acquire
    updated_at  timestamptz NOT NULL
);
