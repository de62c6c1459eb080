"""The data interval a task owns: [start, end), including for manual runs that have no logical date.

Rule for a manual run triggered without a logical date (Airflow 3 gives it no data interval): it loads
the last COMPLETE interval of the DAG's cron schedule before the moment it was triggered (`run_after`),
exactly what Airflow's own `infer_manual_data_interval` would pick — a daily sync triggered at 09:30
loads yesterday. To load another interval, trigger with a logical date or run a backfill.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pendulum
from croniter import croniter

from batchkit.errors import IntervalUndefinedError


@dataclass(frozen=True)
class DataInterval:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"data interval bounds must be timezone-aware: {self.start!r}, {self.end!r}")
        if not self.start < self.end:
            raise ValueError(f"empty data interval [{self.start}, {self.end})")

    def label(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def last_complete_interval(cron: str, timezone: str, at: datetime) -> DataInterval:
    """The latest [start, end) of `cron` in `timezone` whose end is at or before `at`."""
    local_at = pendulum.instance(at).in_timezone(timezone)
    if croniter.match(cron, local_at):
        end = local_at
    else:
        end = pendulum.instance(croniter(cron, local_at).get_prev(datetime))
    start = pendulum.instance(croniter(cron, end).get_prev(datetime))
    return DataInterval(start.in_timezone("UTC"), end.in_timezone("UTC"))


def task_interval(context: Mapping[str, Any]) -> DataInterval:
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None:
        if start == end:
            raise IntervalUndefinedError(
                f"DAG {context['dag'].dag_id!r} has a point-in-time schedule (data_interval_start == end); "
                "batch tasks need an interval timetable such as CronDataIntervalTimetable"
            )
        return DataInterval(pendulum.instance(start), pendulum.instance(end))
    timetable = context["dag"].timetable
    cron = getattr(timetable, "expression", None)
    if cron is None:
        raise IntervalUndefinedError(
            f"manual run {context['run_id']!r} has no logical date and DAG {context['dag'].dag_id!r} has no "
            "cron schedule to infer one from; trigger it with a logical date"
        )
    return last_complete_interval(cron, str(timetable.timezone), context["dag_run"].run_after)
