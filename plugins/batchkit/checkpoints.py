"""Progress of one task over one data interval: table `batch_meta.checkpoints` in the warehouse.

A checkpoint row is keyed by (dag_id, sync key (column task_id), interval_start, interval_end) and is updated in the same
transaction as the page of rows it accounts for (see batchkit.sync), so after a kill it describes
exactly what is durable: how many pages are staged, the row counters, and the source's state that
fetches the next page. The counters must reconcile at every commit (a CHECK constraint):
received = staged + quarantined.

All functions here run inside the caller's transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from batchkit.intervals import DataInterval
from batchkit.migrations import require_current

# Selects one (dag_id, task_id, interval) from a table keyed like the checkpoints, given identity.key().
INTERVAL_KEY_MATCH = sql.SQL(
    "dag_id = %(dag_id)s AND task_id = %(task_id)s "
    "AND interval_start = %(interval_start)s AND interval_end = %(interval_end)s"
)


class CheckpointState(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    REJECTED = "rejected"


@dataclass(frozen=True)
class RunIdentity:
    """Who is syncing which interval: the checkpoint key plus the run that writes it."""

    dag_id: str
    # The sync's key, shared by its stage, verify and merge tasks (not an Airflow task id). The
    # batch_meta tables (checkpoints, quarantine) keep it in their `task_id` column: key() maps it.
    sync_key: str
    run_id: str
    interval: DataInterval

    def scope(self) -> str:
        """The run's scope as text (UTC bounds, so one interval always reads the same)."""
        start = self.interval.start.astimezone(UTC).isoformat()
        end = self.interval.end.astimezone(UTC).isoformat()
        return f"{self.dag_id}|{self.sync_key}|{start}|{end}"

    def key(self) -> dict[str, Any]:
        """The checkpoint key as SQL parameters named after the columns (sync_key is column task_id)."""
        return {
            "dag_id": self.dag_id,
            "task_id": self.sync_key,
            "interval_start": self.interval.start,
            "interval_end": self.interval.end,
        }


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    state: CheckpointState
    pages_done: int
    rows_received: int
    rows_staged: int
    rows_quarantined: int
    next_state: dict[str, Any] | None

    @property
    def source_exhausted(self) -> bool:
        """True once the last page (the one without a next state) is committed."""
        return self.pages_done > 0 and self.next_state is None


def ensure_checkpoints(conn: psycopg.Connection) -> None:
    """Check the control tables are at the version this code needs (batchkit.migrations.require_current:
    one SELECT per process and database); they are created by the migrations at deploy, never here."""
    require_current(conn)


def read_checkpoint(conn: psycopg.Connection, identity: RunIdentity) -> Checkpoint | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            sql.SQL("SELECT * FROM batch_meta.checkpoints WHERE {}").format(INTERVAL_KEY_MATCH),
            identity.key(),
        ).fetchone()
    return _checkpoint(row) if row else None


def start_checkpoint(conn: psycopg.Connection, identity: RunIdentity) -> Checkpoint:
    """Create or reset the interval's checkpoint to 'in_progress' with nothing done."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """
            INSERT INTO batch_meta.checkpoints (dag_id, task_id, interval_start, interval_end, run_id)
            VALUES (%(dag_id)s, %(task_id)s, %(interval_start)s, %(interval_end)s, %(run_id)s)
            ON CONFLICT (dag_id, task_id, interval_start, interval_end) DO UPDATE
               SET run_id = excluded.run_id, state = 'in_progress', pages_done = 0,
                   rows_received = 0, rows_staged = 0, rows_quarantined = 0, next_state = NULL,
                   rows_inserted = NULL, rows_updated = NULL, rows_deleted = NULL,
                   started_at = now(), updated_at = now(), completed_at = NULL
            RETURNING *
            """,
            {**identity.key(), "run_id": identity.run_id},
        ).fetchone()
    return _checkpoint(row)


def record_page(
    conn: psycopg.Connection,
    identity: RunIdentity,
    *,
    page_number: int,
    received: int,
    staged: int,
    quarantined: int,
    next_state: Mapping[str, Any] | None,
) -> Checkpoint:
    """Account for page `page_number`, which must directly follow the pages already recorded."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            sql.SQL(
                """
            UPDATE batch_meta.checkpoints
               SET run_id = %(run_id)s, pages_done = %(page_number)s,
                   rows_received = rows_received + %(received)s,
                   rows_staged = rows_staged + %(staged)s,
                   rows_quarantined = rows_quarantined + %(quarantined)s,
                   next_state = %(next_state)s, updated_at = now()
             WHERE {key} AND state = 'in_progress' AND pages_done = %(page_number)s - 1
            RETURNING *
            """
            ).format(key=INTERVAL_KEY_MATCH),
            {
                **identity.key(),
                "run_id": identity.run_id,
                "page_number": page_number,
                "received": received,
                "staged": staged,
                "quarantined": quarantined,
                "next_state": Jsonb(dict(next_state)) if next_state is not None else None,
            },
        ).fetchone()
    if row is None:
        raise RuntimeError(
            f"checkpoint of {identity.scope()} is not in progress at page {page_number - 1}; "
            "another run may be writing this interval"
        )
    return _checkpoint(row)


def finish_checkpoint(
    conn: psycopg.Connection,
    identity: RunIdentity,
    state: CheckpointState,
    *,
    inserted: int | None = None,
    updated: int | None = None,
    deleted: int | None = None,
) -> timedelta | None:
    """Close the interval as 'complete' (with the merge's counts) or 'rejected'.

    Returns how long the interval took from its clean start (the checkpoint's started_at: the first
    page of the staging, before any resume) to now, by the database's clock; None without a checkpoint.
    """
    row = conn.execute(
        sql.SQL(
            """
        UPDATE batch_meta.checkpoints
           SET run_id = %(run_id)s, state = %(state)s, rows_inserted = %(inserted)s,
               rows_updated = %(updated)s, rows_deleted = %(deleted)s,
               updated_at = now(), completed_at = now()
         WHERE {key}
        RETURNING completed_at - started_at
        """
        ).format(key=INTERVAL_KEY_MATCH),
        {
            **identity.key(),
            "run_id": identity.run_id,
            "state": str(state),
            "inserted": inserted,
            "updated": updated,
            "deleted": deleted,
        },
    ).fetchone()
    return row[0] if row else None


def _checkpoint(row: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        run_id=row["run_id"],
        state=CheckpointState(row["state"]),
        pages_done=row["pages_done"],
        rows_received=row["rows_received"],
        rows_staged=row["rows_staged"],
        rows_quarantined=row["rows_quarantined"],
        next_state=row["next_state"],
    )
