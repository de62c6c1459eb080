"""batchkit.checkpoints against the session's real warehouse database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from batchkit.checkpoints import (
    CheckpointState,
    RunIdentity,
    ensure_checkpoints,
    finish_checkpoint,
    read_checkpoint,
    record_page,
    start_checkpoint,
)
from batchkit.intervals import DataInterval


@pytest.fixture
def identity(warehouse: psycopg.Connection) -> RunIdentity:
    ensure_checkpoints(warehouse)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    return RunIdentity(
        f"dag_{uuid.uuid4().hex[:8]}", "load", "run-1", DataInterval(start, start + timedelta(days=1))
    )


def test_pages_advance_the_counters_and_the_resume_state(warehouse: psycopg.Connection, identity) -> None:
    assert read_checkpoint(warehouse, identity) is None
    started = start_checkpoint(warehouse, identity)
    assert (started.state, started.pages_done, started.next_state) == (CheckpointState.IN_PROGRESS, 0, None)

    record_page(
        warehouse, identity, page_number=1, received=10, staged=9, quarantined=1, next_state={"c": "a"}
    )
    second = record_page(
        warehouse, identity, page_number=2, received=5, staged=5, quarantined=0, next_state=None
    )

    assert read_checkpoint(warehouse, identity) == second
    assert (second.pages_done, second.rows_received, second.rows_staged, second.rows_quarantined) == (
        2,
        15,
        14,
        1,
    )
    assert second.source_exhausted


def test_a_page_out_of_order_is_refused(warehouse: psycopg.Connection, identity) -> None:
    start_checkpoint(warehouse, identity)
    with pytest.raises(RuntimeError, match="is not in progress at page 2; another run may be writing"):
        record_page(warehouse, identity, page_number=3, received=1, staged=1, quarantined=0, next_state=None)


def test_counters_that_do_not_reconcile_are_refused_by_the_table(
    warehouse: psycopg.Connection, identity
) -> None:
    start_checkpoint(warehouse, identity)
    with pytest.raises(psycopg.errors.CheckViolation, match="checkpoints_rows_reconcile"):
        record_page(
            warehouse, identity, page_number=1, received=10, staged=8, quarantined=1, next_state={"c": 1}
        )


def test_finishing_and_restarting_an_interval(warehouse: psycopg.Connection, identity) -> None:
    start_checkpoint(warehouse, identity)
    record_page(warehouse, identity, page_number=1, received=3, staged=3, quarantined=0, next_state=None)
    finish_checkpoint(warehouse, identity, CheckpointState.COMPLETE, inserted=2, updated=1, deleted=0)
    merged = warehouse.execute(
        "SELECT state, rows_inserted, rows_updated, completed_at IS NOT NULL FROM batch_meta.checkpoints "
        "WHERE dag_id = %s",
        (identity.dag_id,),
    ).fetchone()
    assert merged == ("complete", 2, 1, True)

    rerun = RunIdentity(identity.dag_id, identity.sync_key, "run-2", identity.interval)
    restarted = start_checkpoint(warehouse, rerun)
    assert (restarted.run_id, restarted.state, restarted.pages_done, restarted.rows_received) == (
        "run-2",
        CheckpointState.IN_PROGRESS,
        0,
        0,
    )


def test_one_interval_has_one_scope_whatever_the_timezone_of_its_bounds(identity) -> None:
    paris_summer = timezone(timedelta(hours=2))
    shifted = DataInterval(
        identity.interval.start.astimezone(paris_summer), identity.interval.end.astimezone(paris_summer)
    )
    same = RunIdentity(identity.dag_id, identity.sync_key, "other-run", shifted)
    assert same.scope() == identity.scope()
    assert same.scope().endswith("|2024-05-01T00:00:00+00:00|2024-05-02T00:00:00+00:00")
