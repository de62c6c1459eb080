"""Structured task logs and metrics, keyed by run and data interval.

Every log line of a batch task carries dag_id, run_id, task_id, try_number and the data interval, so
one interval's story can be pulled out of the logs with a filter. Metrics go through Airflow's own
stats backend (statsd/OTel per `[metrics]` config), prefixed `batchkit.`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from airflow.sdk.observability import stats

METRIC_PREFIX = "batchkit"


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def run_fields(context: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that key a task's logs and metrics, from an Airflow task context."""
    ti = context["ti"]
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "interval_start": _iso(context.get("data_interval_start")),
        "interval_end": _iso(context.get("data_interval_end")),
    }


def count(metric: str, value: int = 1, **tags: Any) -> None:
    stats.incr(f"{METRIC_PREFIX}.{metric}", count=value, tags=tags or None)


def timing(metric: str, seconds: float, **tags: Any) -> None:
    stats.timing(f"{METRIC_PREFIX}.{metric}", seconds * 1000.0, tags=tags or None)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
