"""Fixtures for the YAML sync DAGs and the report end to end: the demo upstream on loopback, Airflow
connections to it (data, alert inbox, report inbox), and a clean warehouse (target tables, checkpoints,
quarantine, staging) before every test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from batchkit.sql_files import apply_sql_file
from tests.upstream import Upstream, running_upstream
from tools.demo_upstream import Volumes

# Three pages per day for both syncs (orders: cursor pages of 1000, customers: pages of 500), so faults
# can hit a page in the middle of an interval; small enough that a day loads in well under a second.
VOLUMES = Volumes(orders=2500, customers=1200)
# The control tables come from the session warehouse's migrations (tests/conftest.py); these are the targets.
WAREHOUSE_DDL = (
    "sql/targets/sales_orders.sql",
    "sql/targets/crm_customers.sql",
)
# Everything a sync run writes; emptied before each test so each one computes its expectations alone.
RESET_TABLES = (
    "sales.orders",
    "crm.customers",
    "batch_meta.checkpoints",
    "batch_meta.quarantine",
    "batch_meta.alert_log",
    "batch_meta.quality_results",
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream(
        "--orders-per-day", str(VOLUMES.orders), "--customers-per-day", str(VOLUMES.customers)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def volumes() -> Volumes:
    """What the upstream serves per day: the input of tools.demo_upstream.select() for expectations."""
    return VOLUMES


@pytest.fixture(autouse=True)
def upstream_connections(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    """The DAGs' `demo_api`, `alerts_webhook` and `reports_webhook` connections point at the upstream (its
    alert and report inboxes: two targets, as in `make run`)."""
    monkeypatch.setenv("AIRFLOW_CONN_DEMO_API", upstream.connection_json())
    # The whole URL as the host, as airflow_settings.yaml declares it: in URI form the path would land
    # in `schema`, which HttpHook takes for the URL scheme.
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTS_WEBHOOK", json.dumps({"conn_type": "http", "host": upstream.url + "/alerts"})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_REPORTS_WEBHOOK", json.dumps({"conn_type": "http", "host": upstream.url + "/reports"})
    )
    return upstream


@pytest.fixture(autouse=True)
def clean_slate(upstream: Upstream, warehouse: psycopg.Connection) -> None:
    """No faults, zeroed upstream stats, and empty sync tables with no leftover staging."""
    upstream.reset()
    for ddl in WAREHOUSE_DDL:
        apply_sql_file(warehouse, ddl)
    leftover_staging = warehouse.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'batch_meta' AND tablename LIKE 'stg\\_%'"
    ).fetchall()
    with warehouse.transaction():
        for (name,) in leftover_staging:
            warehouse.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("batch_meta", name)))
        warehouse.execute(
            sql.SQL("TRUNCATE {}").format(
                sql.SQL(", ").join(sql.Identifier(*table.split(".")) for table in RESET_TABLES)
            )
        )


@pytest.fixture
def reports_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The report files' base location, given through the Variable as an environment variable; the
    REPORTS_BASE_PATH env (what `make run` and compose set) points elsewhere: the Variable wins."""
    folder = tmp_path / "reports"
    monkeypatch.setenv("AIRFLOW_VAR_REPORTS_BASE_PATH", folder.as_uri())
    monkeypatch.setenv("REPORTS_BASE_PATH", (tmp_path / "not-here").as_uri())
    monkeypatch.delenv("AIRFLOW_VAR_REPORTS_PUBLIC_URL", raising=False)
    monkeypatch.delenv("REPORTS_PUBLIC_URL", raising=False)
    return folder
