"""Side effects (send a file, call an API, export) performed at most once per key.

Retries and clears re-run a task from the top; anything that left the building in an earlier try must
not leave it again. The ledger is table `batch_meta.side_effects` in the warehouse database:

- the key's row is claimed with `INSERT ... ON CONFLICT DO NOTHING` and then locked (`FOR UPDATE`) for
  the whole action, so a concurrent attempt on the same key waits and then sees 'done' (skips), or sees
  the row still 'claimed' because the first attempt failed (and performs it itself);
- the action's completion and the 'done' mark commit together, after the action returned;
- an action that raises rolls back to 'claimed' (re-tryable) and leaves its error on the row.

A worker killed mid-action drops its connection, Postgres releases the lock, and the key stays
re-tryable: the ledger prefers "at most once" and cannot tell whether a killed action got out, so the
only gap is an action that completed remotely but whose process died before the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from batchkit.migrations import require_current


class LedgerStatus(StrEnum):
    PERFORMED = "performed"
    SKIPPED = "skipped-already-done"
    DRY_RUN = "dry-run"


@dataclass(frozen=True)
class LedgerOutcome:
    """What perform_once did for a key, and the ledger row as it stands afterwards.

    `already_done` is the state found before acting: for DRY_RUN it says whether a real run would skip,
    for PERFORMED it is True only when force=True re-sent a done key. `result` and `last_sent_at` are the
    ones on record (None when the key was never performed).
    """

    key: str
    status: LedgerStatus
    already_done: bool
    attempts: int
    result: dict[str, Any] | None
    last_sent_at: datetime | None

    @property
    def performed(self) -> bool:
        return self.status is LedgerStatus.PERFORMED


def ensure_ledger(conn: psycopg.Connection) -> None:
    """Check the control tables are at the version this code needs (batchkit.migrations.require_current:
    one SELECT per process and database); they are created by the migrations at deploy, never here."""
    require_current(conn)


def perform_once(
    conn: psycopg.Connection,
    key: str,
    action: Callable[[], dict[str, Any] | None],
    *,
    force: bool = False,
    dry_run: bool = False,
) -> LedgerOutcome:
    """Run `action` unless `key` is already done; `force=True` runs it again and counts the attempt.

    `conn` must not be inside a transaction: the ledger commits its own claim and result, and a caller's
    later rollback must not be able to undo the record of a side effect that already happened.
    """
    if not key:
        raise ValueError("a side-effect key must be non-empty")
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("perform_once needs a connection outside any transaction (autocommit or idle)")
    ensure_ledger(conn)

    if dry_run:
        row = _read(conn, key)
        return _outcome(key, LedgerStatus.DRY_RUN, row, already_done=_is_done(row))

    with conn.transaction() as tx, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO batch_meta.side_effects (effect_key) VALUES (%s) ON CONFLICT DO NOTHING", (key,)
        )
        # Waits here while another attempt holds the key; READ COMMITTED then reads its outcome.
        row = cur.execute(
            "SELECT * FROM batch_meta.side_effects WHERE effect_key = %s FOR UPDATE", (key,)
        ).fetchone()
        already_done = _is_done(row)
        if already_done and not force:
            return _outcome(key, LedgerStatus.SKIPPED, row, already_done=True)

        try:
            result = action()
        except Exception as exc:
            error = exc
            # Leaves the block rolled back (claim released, nothing marked done); re-raised below.
            raise psycopg.Rollback(tx) from exc

        row = cur.execute(
            """
            UPDATE batch_meta.side_effects
               SET state = 'done',
                   attempts = attempts + 1,
                   first_sent_at = coalesce(first_sent_at, sent.at),
                   last_sent_at = sent.at,
                   result = %s,
                   updated_at = sent.at
              FROM (SELECT clock_timestamp() AS at) AS sent
             WHERE effect_key = %s
         RETURNING side_effects.*
            """,
            (Jsonb(result) if result is not None else None, key),
        ).fetchone()
        return _outcome(key, LedgerStatus.PERFORMED, row, already_done=already_done)

    _record_error(conn, key, error)
    raise error


def _read(conn: psycopg.Connection, key: str) -> dict[str, Any] | None:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM batch_meta.side_effects WHERE effect_key = %s", (key,)).fetchone()


def _record_error(conn: psycopg.Connection, key: str, exc: Exception) -> None:
    """Note the failure on the row (kept 'claimed') for whoever wonders why nothing was sent."""
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO batch_meta.side_effects (effect_key, last_error, last_error_at)
            VALUES (%(key)s, %(error)s, clock_timestamp())
            ON CONFLICT (effect_key) DO UPDATE
               SET last_error = excluded.last_error,
                   last_error_at = excluded.last_error_at,
                   updated_at = excluded.last_error_at
            """,
            {"key": key, "error": f"{type(exc).__name__}: {exc}"[:2000]},
        )


def _is_done(row: dict[str, Any] | None) -> bool:
    return row is not None and row["state"] == "done"


def _outcome(
    key: str, status: LedgerStatus, row: dict[str, Any] | None, *, already_done: bool
) -> LedgerOutcome:
    return LedgerOutcome(
        key=key,
        status=status,
        already_done=already_done,
        attempts=row["attempts"] if row else 0,
        result=row["result"] if row else None,
        last_sent_at=row["last_sent_at"] if row else None,
    )
