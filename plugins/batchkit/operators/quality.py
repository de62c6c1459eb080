"""common-sql's column and table checks, with every result kept: a table row each, and a table in the log.

`SQLColumnCheckOperator` and `SQLTableCheckOperator` here are drop-in replacements for common-sql's
(same arguments, same checks, same pass/fail and failure message). After common-sql has run the checks,
and before it decides the task's outcome, they:

- write one row per check to `batch_meta.quality_results` (include/sql/migrations/)
  on the database the checks ran on (or `results_conn_id`): dag, run, try, the run's data interval,
  check name and column, passed, expected and observed value;
- log the results as a small fixed-width text table (render_results);

then let common-sql pass or fail the task as it always does: a failing check still fails it with
common-sql's message naming the column and the check. If the results cannot be written, a task whose
checks failed still fails with the checks' message (the write error is logged); a task whose checks
passed fails with the write error, and its retry runs the checks again: the results are the record of
the checks, so they are not dropped silently.

With `counts_from` (a task id whose return value is a sync summary, batchkit.operators.sync.summary),
a successful check task also puts the sync's counts in the `extra` of its outlet Asset events
(sync_counts_extra), so a consumer of the Asset sees what the refresh loaded without reading logs.

The operators stay thin: the rows, the table, the extra and the write are plain functions below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from airflow.providers.common.sql.operators import sql as common_sql
from airflow.sdk import Asset

from batchkit.migrations import require_current
from batchkit.observability import get_logger

# The sync summary keys (batchkit.operators.sync.summary) an Asset event carries in its extra.
SYNC_COUNT_KEYS = (
    "target",
    "interval_start",
    "interval_end",
    "pages",
    "received",
    "staged",
    "quarantined",
    "inserted",
    "updated",
    "deleted",
)
# The log table's widths: a long expectation or observed value is cut, the row stays one line.
_MAX_CELL = 40

log = get_logger(__name__)


@dataclass(frozen=True)
class CheckRun:
    """Who ran the checks, over which interval: the key of their result rows."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int | None
    interval_start: datetime | None
    interval_end: datetime | None


@dataclass(frozen=True)
class QualityResult:
    """One check's outcome, as stored in batch_meta.quality_results."""

    check_name: str
    column_name: str | None
    passed: bool
    expected: str | None
    observed: str | None
    check_type: str | None = None
    table_name: str | None = None
    description: str | None = None


def quality_results(check_results: Sequence[common_sql.SQLCheckResult]) -> list[QualityResult]:
    """common-sql's check results (an operator's `check_results`) as result rows."""
    return [
        QualityResult(
            check_name=result.name,
            column_name=result.column,
            passed=bool(result.success),
            expected=result.expected,
            observed=result.actual,
            check_type=result.check_type,
            table_name=result.table,
            description=result.content or result.description,
        )
        for result in check_results
    ]


def failed_checks_line(results: Sequence[QualityResult]) -> str | None:
    """`Data-quality check(s) failed: status_accepted_values, amount.min (column amount)`, or None."""
    failed = [
        f"{r.check_name} (column {r.column_name})" if r.column_name else r.check_name
        for r in results
        if not r.passed
    ]
    return f"Data-quality check(s) failed: {', '.join(failed)}" if failed else None


def render_results(results: Sequence[QualityResult]) -> str:
    """The results as a fixed-width text table, one line per check, e.g.

    check                 column    result  expected   observed
    --------------------  --------  ------  ---------  --------
    order_id.null_check   order_id  PASS    0          0
    interval_row_count    -         FAIL    all truthy 0
    """
    header = ("check", "column", "result", "expected", "observed")
    rows = [
        (
            result.check_name,
            result.column_name or "-",
            "PASS" if result.passed else "FAIL",
            _cell(result.expected),
            _cell(result.observed),
        )
        for result in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [header, tuple("-" * width for width in widths), *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: str | None) -> str:
    text = "-" if value is None else " ".join(str(value).split())
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."


def ensure_quality_results(conn: psycopg.Connection) -> None:
    """Check the control tables are at the version this code needs (batchkit.migrations.require_current:
    one SELECT per process and database); they are created by the migrations at deploy, never here."""
    require_current(conn)


def record_results(conn: psycopg.Connection, run: CheckRun, results: Sequence[QualityResult]) -> int:
    """Insert one row per result in one transaction; returns how many were written."""
    ensure_quality_results(conn)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO batch_meta.quality_results (
                dag_id, task_id, run_id, try_number, interval_start, interval_end, table_name,
                check_name, check_type, column_name, passed, expected, observed, description
            ) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    run.dag_id,
                    run.task_id,
                    run.run_id,
                    run.try_number,
                    run.interval_start,
                    run.interval_end,
                    result.table_name,
                    result.check_name,
                    result.check_type,
                    result.column_name,
                    result.passed,
                    result.expected,
                    result.observed,
                    result.description,
                )
                for result in results
            ],
        )
    return len(results)


def sync_counts_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The Asset event extra of a refreshed table: the sync's counts (its summary XCom) and whether they
    reconcile (received = staged + quarantined)."""
    extra = {key: summary[key] for key in SYNC_COUNT_KEYS if key in summary}
    if all(isinstance(summary.get(key), int) for key in ("received", "staged", "quarantined")):
        extra["reconciled"] = summary["received"] == summary["staged"] + summary["quarantined"]
    return extra


def check_run(context: Mapping[str, Any]) -> CheckRun:
    """The CheckRun of a running task, from its Airflow context."""
    from batchkit.intervals import task_interval

    ti = context["ti"]
    try:
        interval = task_interval(context)
        start, end = interval.start, interval.end
    except Exception:  # a run without an interval still records its checks, unkeyed by one
        start = end = None
    return CheckRun(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        try_number=ti.try_number,
        interval_start=start,
        interval_end=end,
    )


class _RecordedChecks:
    """Mixin over a common-sql check operator; see the module docstring."""

    check_results: list[common_sql.SQLCheckResult]
    conn_id: str | None
    outlets: list[Any]
    log: Any

    def _init_recording(self, results_conn_id: str | None, counts_from: str | None) -> None:
        self.results_conn_id = results_conn_id
        self.counts_from = counts_from

    @contextmanager
    def _recorded(self, context: Mapping[str, Any]) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            self._record(context, checks_failed=True)
            failed = failed_checks_line(quality_results(self.check_results))
            if failed is None:
                raise
            # Alerts and digests show an error's first line: make it name the failing checks, ahead of
            # common-sql's own message (same exception type, so retry_on_failure keeps its meaning).
            raise type(error)(f"{failed}\n{error}") from error
        self._record(context, checks_failed=False)
        self._put_counts_on_outlets(context)

    def _record(self, context: Mapping[str, Any], *, checks_failed: bool) -> None:
        results = quality_results(self.check_results)
        if not results:
            # common-sql raised before it had results (the query failed): nothing was checked.
            self.log.warning("No data-quality results to record: the checks did not run to a result")
            return
        failed = sum(not result.passed for result in results)
        self.log.info(
            "Data-quality results (%d checks, %d failed):\n%s", len(results), failed, render_results(results)
        )
        try:
            with self._results_connection() as conn:
                written = record_results(conn, check_run(context), results)
        except Exception:
            if not checks_failed:
                raise
            # The checks' own failure is the task's outcome; the write error must not hide it.
            self.log.exception("Could not write the data-quality results to batch_meta.quality_results")
            return
        self.log.info("Wrote %d rows to batch_meta.quality_results", written)

    @contextmanager
    def _results_connection(self) -> Iterator[psycopg.Connection]:
        from batchkit.hooks.warehouse import WarehouseHook

        with WarehouseHook(
            postgres_conn_id=self.results_conn_id or self.conn_id
        ).autocommit_connection() as conn:
            yield conn

    def _put_counts_on_outlets(self, context: Mapping[str, Any]) -> None:
        if self.counts_from is None:
            return
        summary = context["ti"].xcom_pull(task_ids=self.counts_from)
        if not isinstance(summary, Mapping):
            raise ValueError(
                f"counts_from={self.counts_from!r} returned {type(summary).__name__}, not a sync summary"
            )
        extra = sync_counts_extra(summary)
        results = quality_results(self.check_results)
        extra["checks_passed"] = sum(result.passed for result in results)
        extra["checks_failed"] = sum(not result.passed for result in results)
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update(extra)
        self.log.info("Asset event extra: %s", extra)


class SQLColumnCheckOperator(_RecordedChecks, common_sql.SQLColumnCheckOperator):
    """common-sql's SQLColumnCheckOperator, recording each result (see the module docstring)."""

    def __init__(
        self, *, results_conn_id: str | None = None, counts_from: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._init_recording(results_conn_id, counts_from)

    def execute(self, context: Any) -> None:
        with self._recorded(context):
            super().execute(context)


class SQLTableCheckOperator(_RecordedChecks, common_sql.SQLTableCheckOperator):
    """common-sql's SQLTableCheckOperator, recording each result (see the module docstring)."""

    def __init__(
        self, *, results_conn_id: str | None = None, counts_from: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._init_recording(results_conn_id, counts_from)

    def execute(self, context: Any) -> None:
        with self._recorded(context):
            super().execute(context)


__all__ = [
    "CheckRun",
    "QualityResult",
    "SQLColumnCheckOperator",
    "SQLTableCheckOperator",
    "check_run",
    "quality_results",
    "record_results",
    "render_results",
    "sync_counts_extra",
]
