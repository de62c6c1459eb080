"""Sync one data interval from a paged source into a warehouse table, resumably and idempotently.

A sync runs in three steps, `stage_interval`, `verify_interval` and `merge_interval`, plain functions
(no Airflow context): the operators (batchkit.operators.sync) hand them a connection, the target, the
contract, who is running which interval, and a page fetcher. What they guarantee:

- Every page commits in ONE transaction: its valid rows COPYed into the run's staging table, its
  rejects into batch_meta.quarantine, and the checkpoint (pages done, counters, the source's state for
  the next page). A killed process resumes exactly after the last committed page: the fetcher is asked
  for (that page's next_state, pages_done) and page numbering continues.
- After the last page, the counters are reconciled (received = staged + quarantined, and both match
  what the staging and quarantine tables hold), the quarantine ratio is checked, and ONE transaction
  merges staging into the target, marks the checkpoint 'complete' and drops staging.
- Verify and merge never trust what they find: if the staging table is missing or short of what the
  checkpoint counted (Postgres empties UNLOGGED tables when it restarts after a crash), or the interval
  was never fully staged, they re-stage it through the `restage` callable the operator hands them
  (which fetches the interval again) and carry on. Clearing any task of a sync therefore recovers it;
  nobody has to pick the right one.
- A run over an interval whose checkpoint is 'complete' or 'rejected' (a backfill with reprocess, a
  clear) starts clean: checkpoint reset, leftover staging dropped, the interval's quarantine rows for
  this dag/task deleted; the merge then replaces the interval's data (upsert by key, or delete+insert
  of the partition), so loading an interval twice leaves the table exactly as loading it once.
- Too many rejects fail the task WITHOUT retry (DataRejectedError): retrying re-reads the same bad
  data. The check runs once all pages are in, because the total is unknown before: an early page full
  of bad records can still be diluted by the pages after it, so no earlier point is "hopeless".
- `dry_run=True` fetches and validates every page and logs what it would write, and writes nothing:
  no DDL, no staging, no checkpoint, no quarantine, no target change.

One sync per interval at a time: a session advisory lock on the interval makes a second concurrent
run (a scheduled run beside a backfill of the same day, a zombie try) WAIT for the first instead of
interleaving pages with it; after `lock_wait` it raises IntervalBusyError, which the operator turns
into a reschedule (no retry is used up). Whatever the first run finished, the second finds it in the
checkpoint: a staged interval is not fetched again, a merged one is merged again to the same rows.
Runs of different intervals share nothing but the target, where their merges only contend for rows
with common keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import psycopg

from batchkit.checkpoints import (
    Checkpoint,
    CheckpointState,
    RunIdentity,
    ensure_checkpoints,
    finish_checkpoint,
    read_checkpoint,
    record_page,
    start_checkpoint,
)
from batchkit.contracts import (
    RecordContract,
    RowRule,
    clear_quarantine,
    count_quarantined,
    ensure_quarantine,
    quarantine_records,
    validate_records,
)
from batchkit.errors import DataRejectedError, IntervalBusyError, StagingIncompleteError
from batchkit.load.postgres import (
    MergeMode,
    Staging,
    TargetSpec,
    drop_staging,
    merge_staging,
    prepare_staging,
    stage_rows,
    staging_row_count,
    staging_table_name,
)
from batchkit.observability import count, get_logger, timing
from batchkit.pages import Page
from batchkit.progress import Progress, SyncSummary

__all__ = [
    "DEFAULT_LOCK_WAIT",
    "FetchPages",
    "RunIdentity",
    "SyncResult",
    "merge_interval",
    "stage_interval",
    "verify_interval",
]

FetchPages = Callable[[Mapping[str, Any] | None, int], Iterable[Page]]
# Re-stages the interval (fetches it again) on the caller's connection; see verify_interval.
Restage = Callable[[], "SyncResult"]

# How long a run waits for another run of the same interval before giving its slot back.
DEFAULT_LOCK_WAIT = timedelta(minutes=2)
_LOCK_POLL_SECONDS = (0.2, 5.0)

log = get_logger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """Counts for the whole interval (pages committed before a resume included).

    `resumed_from_page` is the first page this run fetched: 1 on a clean start, N+1 after resuming
    N committed pages. The merge counts are None on a dry run; `key_range` (lowest and highest key
    that would be written) is set on a dry run only.
    """

    target: str
    interval: str
    dry_run: bool
    pages: int
    resumed_from_page: int
    received: int
    staged: int
    quarantined: int
    inserted: int | None = None
    updated: int | None = None
    deleted: int | None = None
    key_range: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None

    @property
    def quarantine_ratio(self) -> float:
        return self.quarantined / self.received if self.received else 0.0


def stage_interval(
    conn: psycopg.Connection,
    *,
    target: TargetSpec,
    contract: RecordContract,
    identity: RunIdentity,
    fetch_pages: FetchPages,
    dry_run: bool = False,
    max_quarantine_ratio: float = 0.01,
    lock_wait: timedelta = DEFAULT_LOCK_WAIT,
) -> SyncResult:
    """Phase 1: fetch, validate, stage and quarantine every page, one checkpointed transaction each.

    Resumes after the last committed page; starts clean over a finished interval. A dry run validates
    everything, applies the quarantine threshold as a real run would, and writes nothing.
    """
    if not 0.0 <= max_quarantine_ratio <= 1.0:
        raise ValueError(f"max_quarantine_ratio must be within [0, 1], got {max_quarantine_ratio}")
    bound = _bound_log(target, identity, dry_run)
    row_rule = _interval_rule(target, identity)
    if dry_run:
        result = _dry_run(target, contract, identity, fetch_pages, row_rule, bound)
        _check_quarantine_ratio(result, max_quarantine_ratio, identity, on_fail=lambda: None)
        return result

    _require_autocommit(conn)
    ensure_checkpoints(conn)
    ensure_quarantine(conn)
    staging = prepare_staging(conn, target, identity.scope())
    with _interval_lock(conn, identity, lock_wait, bound):
        checkpoint = _resume_or_start(conn, identity, staging, bound)
        resumed_from_page = checkpoint.pages_done + 1
        if not checkpoint.source_exhausted:
            progress = Progress.start(pages_done=checkpoint.pages_done, received=checkpoint.rows_received)
            for page in fetch_pages(checkpoint.next_state, checkpoint.pages_done):
                checkpoint = _commit_page(
                    conn, identity, contract, staging, page, checkpoint, row_rule, progress, bound
                )
    if not checkpoint.source_exhausted:
        raise RuntimeError(f"{identity.scope()}: the source stopped before its last page; retry resumes")
    return _result(target, identity, checkpoint, resumed_from_page=resumed_from_page)


def verify_interval(
    conn: psycopg.Connection,
    *,
    target: TargetSpec,
    identity: RunIdentity,
    max_quarantine_ratio: float = 0.01,
    restage: Restage | None = None,
    lock_wait: timedelta = DEFAULT_LOCK_WAIT,
) -> SyncResult:
    """Phase 2: received = staged + quarantined (counters and tables agree), quarantine ratio in bounds.

    Staging that is missing or short of the checkpoint (a crash, a never-finished stage) is re-staged
    with `restage` first; without it, StagingIncompleteError asks for the staging step. Too many
    rejects, or counts that still disagree after re-staging, reject the interval (staging dropped,
    quarantine kept as evidence) with DataRejectedError: retrying cannot change what the source sent.
    """
    _require_autocommit(conn)
    bound = _bound_log(target, identity, dry_run=False)
    ensure_checkpoints(conn)
    staging = prepare_staging(conn, target, identity.scope())
    with _interval_lock(conn, identity, lock_wait, bound):
        checkpoint = read_checkpoint(conn, identity)
        if checkpoint is not None and checkpoint.state is CheckpointState.COMPLETE:
            return _result(target, identity, checkpoint, resumed_from_page=checkpoint.pages_done + 1)
        return _verified(conn, target, identity, staging, checkpoint, max_quarantine_ratio, restage, bound)


def merge_interval(
    conn: psycopg.Connection,
    *,
    target: TargetSpec,
    identity: RunIdentity,
    max_quarantine_ratio: float = 0.01,
    restage: Restage | None = None,
    lock_wait: timedelta = DEFAULT_LOCK_WAIT,
) -> SyncResult:
    """Phase 3: verify again (cheap, and the merge must never trust an earlier task; it re-stages like
    verify_interval), then merge staging into the target and complete the checkpoint in ONE transaction.

    Rerunning it after it succeeded changes nothing: the checkpoint is 'complete' and the staging table
    is gone, so it reports the merge on record.
    """
    _require_autocommit(conn)
    bound = _bound_log(target, identity, dry_run=False)
    started = time.monotonic()
    ensure_checkpoints(conn)
    staging = prepare_staging(conn, target, identity.scope())
    with _interval_lock(conn, identity, lock_wait, bound):
        checkpoint = read_checkpoint(conn, identity)
        if checkpoint is not None and checkpoint.state is CheckpointState.COMPLETE:
            bound.info("sync_merge_already_done", run_id=checkpoint.run_id)
            return _result(target, identity, checkpoint, resumed_from_page=checkpoint.pages_done + 1)
        result = _verified(conn, target, identity, staging, checkpoint, max_quarantine_ratio, restage, bound)
        with conn.transaction():
            merged = merge_staging(conn, staging, (identity.interval.start, identity.interval.end))
            interval_took = finish_checkpoint(
                conn,
                identity,
                CheckpointState.COMPLETE,
                inserted=merged.inserted,
                updated=merged.updated,
                deleted=merged.deleted,
            )

    result = replace(result, inserted=merged.inserted, updated=merged.updated, deleted=merged.deleted)
    duration = time.monotonic() - started
    # No task_id: inside a task metric_tags adds the running Airflow task's, which the sync key is not.
    tags = {"dag_id": identity.dag_id, "target": target.table}
    count("rows_loaded", result.staged, **tags)
    timing("merge_duration", duration, **tags)
    # The interval's final line: every count, whether they reconcile, and how long it all took.
    final = SyncSummary(
        pages=result.pages,
        received=result.received,
        staged=result.staged,
        quarantined=result.quarantined,
        inserted=merged.inserted,
        updated=merged.updated,
        deleted=merged.deleted,
        merge_s=duration,
        interval_s=None if interval_took is None else interval_took.total_seconds(),
    )
    (bound.info if final.reconciled else bound.error)("sync_merged", **final.log_fields())
    return result


def _verified(
    conn: psycopg.Connection,
    target: TargetSpec,
    identity: RunIdentity,
    staging: Staging,
    checkpoint: Checkpoint | None,
    max_quarantine_ratio: float,
    restage: Restage | None,
    bound: Any,
) -> SyncResult:
    """The staged interval's counts once they reconcile, re-staging it once if they do not."""
    problem = _staging_problem(conn, identity, staging, checkpoint)
    if problem is not None:
        if restage is None:
            raise StagingIncompleteError(f"{identity.scope()}: {problem}; run the staging step again")
        bound.warning("sync_restaging_interval", reason=problem)
        count("intervals_restaged", dag_id=identity.dag_id, target=target.table)
        restage()
        checkpoint = read_checkpoint(conn, identity)
        problem = _staging_problem(conn, identity, staging, checkpoint)
        if problem is not None:
            _reject(conn, identity, staging)
            raise DataRejectedError(
                f"{identity.scope()}: {problem}, even after staging the interval again; nothing was "
                "merged, the next run starts the interval over"
            )
    assert checkpoint is not None  # _staging_problem reports a missing checkpoint
    result = _result(target, identity, checkpoint, resumed_from_page=checkpoint.pages_done + 1)
    _check_quarantine_ratio(
        result, max_quarantine_ratio, identity, on_fail=lambda: _reject(conn, identity, staging)
    )
    return result


def _bound_log(target: TargetSpec, identity: RunIdentity, dry_run: bool) -> Any:
    return log.bind(
        dag_id=identity.dag_id,
        sync_key=identity.sync_key,
        run_id=identity.run_id,
        interval=identity.interval.label(),
        target_table=target.table,
        mode=str(target.mode),
        dry_run=dry_run,
    )


def _require_autocommit(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        raise ValueError("the sync needs an autocommit connection: it commits each step itself")


def _result(
    target: TargetSpec, identity: RunIdentity, checkpoint: Checkpoint, *, resumed_from_page: int
) -> SyncResult:
    return SyncResult(
        target=target.table,
        interval=identity.interval.label(),
        dry_run=False,
        pages=checkpoint.pages_done,
        resumed_from_page=resumed_from_page,
        received=checkpoint.rows_received,
        staged=checkpoint.rows_staged,
        quarantined=checkpoint.rows_quarantined,
    )


def _resume_or_start(
    conn: psycopg.Connection, identity: RunIdentity, staging: Staging, bound: Any
) -> Checkpoint:
    """The checkpoint to continue from: the in-progress one if staging still matches it, else a clean one."""
    with conn.transaction():
        checkpoint = read_checkpoint(conn, identity)
        if checkpoint is not None and checkpoint.state is CheckpointState.IN_PROGRESS:
            staged = staging_row_count(conn, staging) or 0
            if staged == checkpoint.rows_staged:
                bound.info(
                    "sync_resuming",
                    pages_done=checkpoint.pages_done,
                    rows_staged=checkpoint.rows_staged,
                    previous_run_id=checkpoint.run_id,
                )
                return checkpoint
            # Unlogged staging is emptied by a server crash; the pages it lost must be fetched again.
            bound.warning(
                "sync_restarting_interval",
                reason="staging does not match checkpoint",
                staging_rows=staged,
                checkpoint_rows_staged=checkpoint.rows_staged,
            )
        elif checkpoint is not None:
            bound.info("sync_restarting_interval", reason=f"previous run ended {checkpoint.state}")
        drop_staging(conn, staging)
        cleared = clear_quarantine(conn, identity)
        if cleared:
            bound.info("sync_quarantine_cleared", rows=cleared)
        return start_checkpoint(conn, identity)


def _commit_page(
    conn: psycopg.Connection,
    identity: RunIdentity,
    contract: RecordContract,
    staging: Staging,
    page: Page,
    checkpoint: Checkpoint,
    row_rule: RowRule | None,
    progress: Progress,
    bound: Any,
) -> Checkpoint:
    _check_page_order(page, checkpoint.pages_done, source_exhausted=checkpoint.source_exhausted)
    validated = validate_records(contract, page.records, staging.target.columns, row_rule=row_rule)
    with conn.transaction():
        staged = stage_rows(conn, staging, validated.rows)
        quarantined = quarantine_records(conn, identity, contract.source, page.number, validated.rejected)
        checkpoint = record_page(
            conn,
            identity,
            page_number=page.number,
            received=len(page.records),
            staged=staged,
            quarantined=quarantined,
            next_state=page.next_state,
        )
    if quarantined:
        count("rows_quarantined", quarantined, dag_id=identity.dag_id, target=staging.target.table)
    # The page's one line: its fetch, what became of its records, and where the interval stands.
    done = progress.page(
        page,
        received=checkpoint.rows_received,
        staged=checkpoint.rows_staged,
        quarantined=checkpoint.rows_quarantined,
    )
    bound.info(
        "sync_page_committed",
        **done.log_fields(),
        rows=len(page.records),
        rows_staged=staged,
        rows_quarantined=quarantined,
        **_fetch_fields(page),
    )
    return checkpoint


def _fetch_fields(page: Page) -> dict[str, Any]:
    """How the page's request went, when the fetcher says (RestApiHook does)."""
    fields: dict[str, Any] = {}
    if page.latency_ms is not None:
        fields["latency_ms"] = page.latency_ms
    if page.retries:
        fields["retries"] = page.retries
    return fields


def _check_page_order(page: Page, pages_done: int, *, source_exhausted: bool) -> None:
    if source_exhausted:
        raise ValueError(f"source returned page {page.number} after its last page {pages_done}")
    if page.number != pages_done + 1:
        raise ValueError(
            f"source returned page {page.number}, expected page {pages_done + 1} "
            f"(after {pages_done} pages already done)"
        )


def _staging_problem(
    conn: psycopg.Connection, identity: RunIdentity, staging: Staging, checkpoint: Checkpoint | None
) -> str | None:
    """Why the interval cannot be merged as staged, or None when received = staged + quarantined and
    the staging and quarantine tables hold exactly what the checkpoint counted."""
    if checkpoint is None or checkpoint.state is not CheckpointState.IN_PROGRESS:
        return f"the interval is not staged (checkpoint {checkpoint.state if checkpoint else 'missing'})"
    if not checkpoint.source_exhausted:
        return f"staging stopped after page {checkpoint.pages_done}, before the source's last page"
    with conn.transaction():
        staged = staging_row_count(conn, staging) or 0
        quarantined = count_quarantined(conn, identity)
    counted = (checkpoint.rows_received, checkpoint.rows_staged, checkpoint.rows_quarantined)
    if checkpoint.rows_received == staged + quarantined and (staged, quarantined) == counted[1:]:
        return None
    # Postgres empties UNLOGGED tables when it restarts after a crash: the usual way to get here.
    return (
        f"rows do not reconcile: checkpoint counted received={counted[0]} staged={counted[1]} "
        f"quarantined={counted[2]}, but staging holds {staged} and quarantine holds {quarantined} rows"
    )


def _check_quarantine_ratio(
    result: SyncResult, max_ratio: float, identity: RunIdentity, on_fail: Callable[[], None]
) -> None:
    if result.quarantine_ratio <= max_ratio:
        return
    on_fail()
    what = "dry run: a real run would fail" if result.dry_run else "nothing was merged"
    raise DataRejectedError(
        f"{identity.scope()}: {result.quarantined} of {result.received} records quarantined "
        f"({result.quarantine_ratio:.2%}), above the threshold max_quarantine_ratio={max_ratio:.2%}; "
        f"{what}. See batch_meta.quarantine for the records and errors."
    )


def _reject(conn: psycopg.Connection, identity: RunIdentity, staging: Staging) -> None:
    """Stop the interval: staging dropped, checkpoint 'rejected' (quarantine kept as the evidence)."""
    with conn.transaction():
        drop_staging(conn, staging)
        finish_checkpoint(conn, identity, CheckpointState.REJECTED)


def _interval_rule(target: TargetSpec, identity: RunIdentity) -> RowRule | None:
    """In replace_interval mode a row must lie inside the interval it replaces, or a reload could not undo it."""
    if target.mode is not MergeMode.REPLACE_INTERVAL:
        return None
    position, column = target.interval_column_index, target.interval_column
    start, end = identity.interval.start, identity.interval.end

    def inside_interval(row: tuple[Any, ...]) -> str | None:
        value = row[position]
        if start <= value < end:
            return None
        return (
            f"{column} {value.isoformat()} is outside the interval being replaced {identity.interval.label()}"
        )

    return inside_interval


def _dry_run(
    target: TargetSpec,
    contract: RecordContract,
    identity: RunIdentity,
    fetch_pages: FetchPages,
    row_rule: RowRule | None,
    bound: Any,
) -> SyncResult:
    key_positions = [target.columns.index(column) for column in target.key]
    pages = received = staged = quarantined = 0
    lowest = highest = None
    source_exhausted = False
    progress = Progress.start()
    for page in fetch_pages(None, 0):
        _check_page_order(page, pages, source_exhausted=source_exhausted)
        validated = validate_records(contract, page.records, target.columns, row_rule=row_rule)
        for row in validated.rows:
            key = tuple(row[position] for position in key_positions)
            lowest = key if lowest is None or key < lowest else lowest
            highest = key if highest is None or key > highest else highest
        pages, received = page.number, received + len(page.records)
        staged, quarantined = staged + len(validated.rows), quarantined + len(validated.rejected)
        source_exhausted = page.next_state is None
        done = progress.page(page, received=received, staged=staged, quarantined=quarantined)
        bound.info(
            "sync_page_validated",
            **done.log_fields(),
            rows=len(page.records),
            rows_valid=len(validated.rows),
            rows_rejected=len(validated.rejected),
            **_fetch_fields(page),
        )
    result = SyncResult(
        target=target.table,
        interval=identity.interval.label(),
        dry_run=True,
        pages=pages,
        resumed_from_page=1,
        received=received,
        staged=staged,
        quarantined=quarantined,
        key_range=(lowest, highest) if lowest is not None and target.key else None,
    )
    bound.info(
        "sync_dry_run_would_write",
        pages=pages,
        rows_received=received,
        rows_to_load=staged,
        rows_to_quarantine=quarantined,
        key_columns=list(target.key),
        key_min=lowest,
        key_max=highest,
        staging_table=staging_table_name(target, identity.scope()),
        replaces_interval=target.mode is MergeMode.REPLACE_INTERVAL,
    )
    return result


@contextmanager
def _interval_lock(
    conn: psycopg.Connection, identity: RunIdentity, wait: timedelta, bound: Any
) -> Iterator[None]:
    """A session advisory lock on the interval, waited for up to `wait`.

    A killed holder's lock goes with its connection. The lock is re-entrant within one session, so a
    merge that re-stages the interval takes it again without waiting for itself.
    """
    lock_key = f"batchkit:sync:{identity.scope()}"
    started = time.monotonic()
    pause, max_pause = _LOCK_POLL_SECONDS
    while not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key,)).fetchone()[0]:
        waited = time.monotonic() - started
        if waited >= wait.total_seconds():
            raise IntervalBusyError(
                f"another run held {identity.scope()} for all of the {wait.total_seconds():.0f}s this run "
                "waited; it will try again later"
            )
        if pause == _LOCK_POLL_SECONDS[0]:
            holder = read_checkpoint(conn, identity)
            bound.info("sync_waiting_for_interval", holder_run_id=holder.run_id if holder else None)
        time.sleep(min(pause, max(0.0, wait.total_seconds() - waited)))
        pause = min(pause * 2, max_pause)
    if time.monotonic() - started > _LOCK_POLL_SECONDS[0]:
        bound.info("sync_interval_lock_acquired", waited_s=round(time.monotonic() - started, 1))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key,))
