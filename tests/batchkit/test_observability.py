"""Metric tags and lineage datasets, without a run: what batchkit.observability sends and names, and
that neither StatsD settings nor OpenLineage leak where nobody configured them.

The real traffic of a sync run is checked in tests/automations/test_metrics.py (StatsD over UDP) and
tests/automations/test_lineage.py (OpenLineage events).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.observability import stats

from batchkit import observability
from batchkit.observability import metric_tags
from batchkit.operators.sync import IntervalSource, MergeIntervalOperator, StageIntervalOperator
from batchkit.sync_spec import load_spec, spec_path
from tools.airflow_env import airflow_env, metrics_env


def test_tags_outside_a_task_are_the_callers_as_safe_strings() -> None:
    assert metric_tags({"endpoint": "/v1/orders?x=1", "status": 200, "skip": None}) == {
        "endpoint": "/v1/orders_x_1",
        "status": "200",
    }


def test_the_running_task_names_dag_and_task_over_what_the_caller_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(observability, "_running_task", lambda: {"dag_id": "d", "task_id": "merge"})
    assert metric_tags({"task_id": "sync", "target": "sales.orders"}) == {
        "dag_id": "d",
        "task_id": "merge",
        "target": "sales.orders",
    }


def test_count_and_timing_go_through_airflow_stats_with_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, Any, dict[str, Any]]] = []
    monkeypatch.setattr(stats, "incr", lambda stat, count, tags: sent.append((stat, count, tags)))
    monkeypatch.setattr(stats, "timing", lambda stat, dt, tags: sent.append((stat, dt, tags)))
    observability.count("extract.records", 3, endpoint="/v1/customers")
    observability.timing("merge_duration", 0.25, target="crm.customers")
    assert sent == [
        ("batchkit.extract.records", 3, {"endpoint": "/v1/customers"}),
        ("batchkit.merge_duration", 250.0, {"target": "crm.customers"}),
    ]


def test_make_run_sends_tagged_statsd_to_loopback_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(metrics_env()):
        monkeypatch.delenv(name, raising=False)
    env = airflow_env(tmp_path, "postgresql://unused")
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "True"
    assert (env["AIRFLOW__METRICS__STATSD_HOST"], env["AIRFLOW__METRICS__STATSD_PORT"]) == (
        "127.0.0.1",
        "8125",
    )
    assert env["AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED"] == "True"
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "exporter.internal")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "False")
    env = airflow_env(tmp_path, "postgresql://unused")
    assert (env["AIRFLOW__METRICS__STATSD_HOST"], env["AIRFLOW__METRICS__STATSD_ON"]) == (
        "exporter.internal",
        "False",
    )
    # No OpenLineage transport unless the user gives one: the provider stays disabled.
    assert not [name for name in set(env) - set(os.environ) if "OPENLINEAGE" in name]


def test_openlineage_is_disabled_in_the_test_session() -> None:
    from airflow.providers.openlineage import conf

    assert conf.is_disabled(), "a transport is configured: every test run would emit lineage events"


# --- the operators' lineage ---------------------------------------------------------------------------

SPEC = load_spec(spec_path("crm_customers_sync"))


def operators() -> tuple[StageIntervalOperator, MergeIntervalOperator]:
    source = SPEC.source
    common: dict[str, Any] = {
        "source": IntervalSource(
            http_conn_id=source.conn_id,
            endpoint=source.endpoint,
            pagination=source.pagination,
            contract=SPEC.record_contract(),
        ),
        "target": SPEC.target_spec(),
        "sync_key": "sync",
        "warehouse_conn_id": "lineage_wh",
    }
    return StageIntervalOperator(task_id="extract_stage", **common), MergeIntervalOperator(
        task_id="merge", **common
    )


def task_instance(dry_run: bool) -> Any:
    return SimpleNamespace(get_template_context=lambda: {"params": {"dry_run": dry_run}})


@pytest.fixture
def lineage_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{SPEC.source.conn_id.upper()}",
        json.dumps({"conn_type": "http", "host": "api.example.com", "schema": "https", "port": 8443}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_LINEAGE_WH",
        json.dumps({"conn_type": "postgres", "host": "db.internal", "schema": "warehouse", "login": "w"}),
    )


@pytest.mark.usefixtures("lineage_connections")
def test_stage_and_merge_name_the_endpoint_in_and_the_table_out() -> None:
    stage, merge = operators()
    source = ("https://api.example.com:8443", SPEC.source.endpoint)
    table = ("postgres://db.internal:5432", f"warehouse.{SPEC.target.table}")
    for lineage in (
        stage.get_openlineage_facets_on_complete(task_instance(False)),
        merge.get_openlineage_facets_on_complete(task_instance(False)),
    ):
        assert [(d.namespace, d.name) for d in lineage.inputs] == [source]
        assert [(d.namespace, d.name) for d in lineage.outputs] == [table]


@pytest.mark.usefixtures("lineage_connections")
def test_a_dry_run_stage_reads_the_endpoint_and_writes_no_table() -> None:
    stage, _ = operators()
    lineage = stage.get_openlineage_facets_on_complete(task_instance(True))
    assert len(lineage.inputs) == 1
    assert lineage.outputs == []


def test_an_http_host_given_as_a_url_keeps_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_URL_API", json.dumps({"conn_type": "http", "host": "http://h:81/api/"}))
    dataset = observability.http_source_dataset("url_api", "/v1/customers")
    assert (dataset.namespace, dataset.name) == ("http://h:81", "/api/v1/customers")
