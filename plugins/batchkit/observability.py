"""Structured task logs and metrics, keyed by run and data interval.

Every log line of a batch task carries dag_id, run_id, task_id, try_number and the data interval, so
one interval's story can be pulled out of the logs with a filter. Metrics go through Airflow's own
stats backend (statsd/OTel per `[metrics]` config), prefixed `batchkit.`.

Every metric emitted inside a running task is tagged with that task's `dag_id` and `task_id` (the
Airflow task, e.g. `extract_stage` or `merge`), whatever the caller passed under those names, so a
dashboard can split any batchkit metric by DAG and task. Plain StatsD drops tags: `make run` and
docker-compose.yaml set `[metrics] statsd_influxdb_enabled`, which appends them to the metric name
InfluxDB-style (`batchkit.extract.pages,endpoint=/v1/customers,dag_id=crm_customers_sync,task_id=
extract_stage:1|c`), the form statsd-exporter (and Telegraf) turn into labels; with
`statsd_datadog_enabled` (DogStatsD) or OTel they travel as native tags (docs/operations.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import structlog

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


# Airflow is imported when a metric is sent, not when this module is: the sync core logs and counts
# through here and stays importable (and testable) without Airflow (tests/batchkit/test_core_is_plain.py).


def count(metric: str, value: int = 1, **tags: Any) -> None:
    from airflow.sdk.observability import stats

    stats.incr(f"{METRIC_PREFIX}.{metric}", count=value, tags=metric_tags(tags) or None)


def timing(metric: str, seconds: float, **tags: Any) -> None:
    from airflow.sdk.observability import stats

    stats.timing(f"{METRIC_PREFIX}.{metric}", seconds * 1000.0, tags=metric_tags(tags) or None)


def metric_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """The caller's tags plus the running task's `dag_id` and `task_id` (which win), as strings.

    Outside a task (a unit test, a CLI tool) only the caller's tags. Keys and values keep only the
    characters Airflow's StatsD name check accepts (letters, digits, `_.-/`); any other becomes `_`,
    because one bad character makes Airflow drop the whole metric (and log a traceback).
    """
    merged = {key: value for key, value in tags.items() if value is not None}
    merged.update(_running_task())
    return {_TAG_UNSAFE.sub("_", key): _TAG_UNSAFE.sub("_", str(value)) for key, value in merged.items()}


_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")


def _running_task() -> dict[str, str]:
    """dag_id and task_id of the task running in this process (any thread), or nothing."""
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # no task is running here: not an error for a metric
        return {}
    return {"dag_id": ti.dag_id, "task_id": ti.task_id}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


# --- OpenLineage ---------------------------------------------------------------------------------------
# The sync operators' get_openlineage_facets_on_complete (batchkit.operators.sync) build their datasets
# here. They are read by the OpenLineage provider's listener only when a transport is configured
# (`[openlineage] transport`, docs/operations.md); otherwise the provider is disabled and never asks.


def http_source_dataset(http_conn_id: str, endpoint: str) -> Any:
    """The REST endpoint a sync reads: namespace `<scheme>://<host>[:port]` of the HTTP connection (as
    HttpHook builds its base URL), name the endpoint path (below any path the connection's host has)."""
    from urllib.parse import urlsplit

    from airflow.sdk import BaseHook
    from openlineage.client.event_v2 import Dataset

    conn = BaseHook.get_connection(http_conn_id)
    host = conn.host or ""
    base = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    if conn.port and "://" not in host:
        base = f"{base}:{conn.port}"
    parts = urlsplit(base)
    path = "/".join(p.strip("/") for p in (parts.path, endpoint) if p.strip("/"))
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=f"/{path}")


def warehouse_table_dataset(postgres_conn_id: str, table: str) -> Any:
    """A warehouse table as OpenLineage names Postgres tables (and the provider's SQL operators do):
    namespace `postgres://<host>:<port>`, name `<database>.<schema>.<table>`."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk import BaseHook
    from openlineage.client.event_v2 import Dataset

    conn = BaseHook.get_connection(postgres_conn_id)
    info = PostgresHook(postgres_conn_id=postgres_conn_id).get_openlineage_database_info(conn)
    return Dataset(namespace=f"{info.scheme}://{info.authority}", name=f"{info.database}.{table}")


def sync_lineage(*, http_conn_id: str, endpoint: str, postgres_conn_id: str, table: str, wrote: bool) -> Any:
    """OperatorLineage of a sync step: the endpoint in, the target table out (when the step wrote it)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[http_source_dataset(http_conn_id, endpoint)],
        outputs=[warehouse_table_dataset(postgres_conn_id, table)] if wrote else [],
    )
