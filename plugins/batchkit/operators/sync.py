"""The three durable steps of a sync as operators: stage the interval, verify it, merge it.

Each operator resolves the interval the run owns and the dry-run flag from the context, opens the
hooks, and calls the plain functions of batchkit.sync, which hold every guarantee (checkpoints,
quarantine, reconciliation, one-transaction merge). The checkpoint is keyed by `sync_key`, shared by
the three tasks of one sync, so the merge task finds what the staging task wrote.

All three get the sync's `IntervalSource`: the staging task fetches from it, and verify and merge
fetch from it again only when they find the staging lost (a Postgres crash restart empties it), so
clearing any one task recovers the interval. What the core raises becomes Airflow's outcome in one
place, `airflow_outcome`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowSkipException

from batchkit.checkpoints import RunIdentity
from batchkit.contracts import RecordContract
from batchkit.dag_factory import dry_run_requested
from batchkit.errors import DataRejectedError, IntervalBusyError, IntervalUndefinedError, PermanentSourceError
from batchkit.extract.pagination import Pagination
from batchkit.extract.retry import RetryPolicy
from batchkit.intervals import task_interval
from batchkit.load.postgres import TargetSpec
from batchkit.observability import get_logger, sync_lineage
from batchkit.sync import SyncResult, merge_interval, stage_interval, verify_interval

# When a run that found its interval busy asks the scheduler to run it again.
RESCHEDULE_BUSY_AFTER = timedelta(seconds=30)

log = get_logger(__name__)


# The core's errors that no retry can fix: the task fails at once, its retries unused.
FAIL_NOW = (DataRejectedError, PermanentSourceError, IntervalUndefinedError)


@contextmanager
def airflow_outcome(identity: RunIdentity | None = None) -> Iterator[None]:
    """Translate the core's errors (batchkit.errors) into what Airflow should do about them.

    `identity` is None only while the run's identity is being resolved (its interval may not exist).
    """
    try:
        yield
    except FAIL_NOW as error:
        raise AirflowFailException(str(error)) from error
    except IntervalBusyError as error:
        when = datetime.now(UTC) + RESCHEDULE_BUSY_AFTER
        interval = identity.interval.label() if identity is not None else None
        log.info("sync_rescheduled_interval_busy", interval=interval, until=when.isoformat())
        raise AirflowRescheduleException(reschedule_date=when) from error


@dataclass(frozen=True)
class IntervalSource:
    """Where a sync's records come from: one paged REST endpoint, filtered to the run's interval."""

    http_conn_id: str
    endpoint: str
    pagination: Pagination
    contract: RecordContract
    interval_params: tuple[str, str] = ("updated_since", "updated_before")
    # Not `params`: BaseOperator takes that name for the DAG's run params (dry_run, ...).
    query_params: Mapping[str, Any] = field(default_factory=dict)
    retry_policy: RetryPolicy | None = None
    # Page requests in flight at once (RestApiHook.iter_pages); above 1 only where the pages are known.
    max_concurrency: int = 1

    def stage(
        self,
        conn: psycopg.Connection,
        *,
        target: TargetSpec,
        identity: RunIdentity,
        max_quarantine_ratio: float,
        dry_run: bool = False,
    ) -> SyncResult:
        """Fetch the interval page by page into staging (resuming a checkpoint); see stage_interval."""
        from batchkit.hooks.rest_api import RestApiHook

        since, before = self.interval_params
        query = {
            **self.query_params,
            since: identity.interval.start.isoformat(),
            before: identity.interval.end.isoformat(),
        }
        with RestApiHook(http_conn_id=self.http_conn_id, retry_policy=self.retry_policy) as api:
            return stage_interval(
                conn,
                target=target,
                contract=self.contract,
                identity=identity,
                fetch_pages=lambda state, _done: api.iter_pages(
                    self.endpoint,
                    pagination=self.pagination,
                    params=query,
                    resume_from=state,
                    max_concurrency=self.max_concurrency,
                ),
                dry_run=dry_run,
                max_quarantine_ratio=max_quarantine_ratio,
            )


class _IntervalSyncOperator(BaseOperator):
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        source: IntervalSource,
        target: TargetSpec,
        sync_key: str,
        warehouse_conn_id: str = "warehouse",
        max_quarantine_ratio: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.target = target
        self.sync_key = sync_key
        self.warehouse_conn_id = warehouse_conn_id
        self.max_quarantine_ratio = max_quarantine_ratio

    def identity(self, context: Mapping[str, Any]) -> RunIdentity:
        with airflow_outcome():
            interval = task_interval(context)
        return RunIdentity(
            dag_id=self.dag_id,
            sync_key=self.sync_key,
            run_id=context["run_id"],
            interval=interval,
        )

    def warehouse(self) -> Any:
        from batchkit.hooks.warehouse import WarehouseHook

        return WarehouseHook(postgres_conn_id=self.warehouse_conn_id).autocommit_connection()

    def _lineage(self, *, wrote: bool) -> Any:
        """OpenLineage datasets of this step: the source endpoint in, the target table out."""
        return sync_lineage(
            http_conn_id=self.source.http_conn_id,
            endpoint=self.source.endpoint,
            postgres_conn_id=self.warehouse_conn_id,
            table=self.target.table,
            wrote=wrote,
        )


class StageIntervalOperator(_IntervalSyncOperator):
    """Fetch every page of the run's interval, validate it, stage it and quarantine the rejects.

    Resumes after the last committed page on retry; in dry-run it validates and writes nothing.
    """

    def execute(self, context: Any) -> dict[str, Any]:
        identity = self.identity(context)
        with airflow_outcome(identity), self.warehouse() as conn:
            result = self.source.stage(
                conn,
                target=self.target,
                identity=identity,
                max_quarantine_ratio=self.max_quarantine_ratio,
                dry_run=dry_run_requested(context),
            )
        return summary(result, identity)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage (OpenLineage provider): the endpoint feeds the target table; a dry run wrote nothing.

        The staging table is left out: it is the sync's private per-interval buffer, not a dataset.
        """
        return self._lineage(wrote=not dry_run_requested(task_instance.get_template_context()))


class VerifyIntervalOperator(_IntervalSyncOperator):
    """Reconcile received = staged + quarantined and hold the quarantine ratio to its threshold."""

    step = staticmethod(verify_interval)

    def execute(self, context: Any) -> dict[str, Any]:
        if dry_run_requested(context):
            raise AirflowSkipException("dry run: the staging step validated and wrote nothing")
        identity = self.identity(context)
        with airflow_outcome(identity), self.warehouse() as conn:
            result = self.step(
                conn,
                target=self.target,
                identity=identity,
                max_quarantine_ratio=self.max_quarantine_ratio,
                restage=lambda: self.source.stage(
                    conn,
                    target=self.target,
                    identity=identity,
                    max_quarantine_ratio=self.max_quarantine_ratio,
                ),
            )
        return summary(result, identity)


class MergeIntervalOperator(VerifyIntervalOperator):
    """Merge the verified staging into the target in one transaction (verifying again first)."""

    step = staticmethod(merge_interval)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage (OpenLineage provider): the merge writes the endpoint's records to the target table."""
        return self._lineage(wrote=True)


def summary(result: SyncResult, identity: RunIdentity) -> dict[str, Any]:
    """The counts a task returns (its XCom): what the UI shows; the checks read the interval from it."""
    return {
        "target": result.target,
        "interval_start": identity.interval.start.isoformat(),
        "interval_end": identity.interval.end.isoformat(),
        "dry_run": result.dry_run,
        "pages": result.pages,
        "received": result.received,
        "staged": result.staged,
        "quarantined": result.quarantined,
        "inserted": result.inserted,
        "updated": result.updated,
        "deleted": result.deleted,
    }
