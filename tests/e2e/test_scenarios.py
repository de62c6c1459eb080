"""Operations under the real scheduler: deadline, trigger, backfill, failure -> alert -> clear, Assets.

One stack (api-server, scheduler, dag-processor, triggerer) over a copy of dags/ plus two fixtures, a
demo upstream on loopback (also the alert receiver, its /alerts inbox) and this session's warehouse
database. Everything is driven through the REST API v2 with a token, as an operator would; the tests
read the warehouse and the upstream's counters to check the outcome. Each test uses its own intervals,
so the tests share the stack without sharing data.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest
from psycopg import sql

from batchkit.assets import table_asset
from batchkit.sync_spec import load_spec
from tests.upstream import Upstream, running_upstream
from tools import REPO_ROOT
from tools.airflow_api import AirflowApi, wait_for
from tools.demo_upstream import DEFAULT_PER_DAY, Volumes, select
from tools.metadb import PgServer
from tools.stack import AIRFLOW_COMPONENTS, HEALTH_KEYS, AirflowStack

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "dags_ops"
ORDERS_SYNC = "sales_orders_sync"
CUSTOMERS_SYNC = "crm_customers_sync"
# crm_customers_sync with two quick retries (tests/fixtures/dags_ops/crm_customers_retry_probe.yaml).
RETRY_PROBE = "crm_customers_retry_probe"
PROBE_PATH = "/v1/offset/customers"
DEADLINE_PROBE = "deadline_overrun_probe"
REPORT = "sales_daily_report"
VOLUMES = Volumes(orders=DEFAULT_PER_DAY["orders"], customers=DEFAULT_PER_DAY["customers"])
POOLS = {"demo_api": 2, "warehouse": 4}
# The alert webhook's secret path (as a Slack incoming webhook's), kept in the connection's password.
WEBHOOK_SECRET_PATH = f"/alerts/T0/B0/{secrets.token_hex(16)}"
RUN_TIMEOUT = 120

pytestmark = pytest.mark.e2e


@dataclass
class Live:
    stack: AirflowStack
    api: AirflowApi
    upstream: Upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def dags_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dags = tmp_path_factory.mktemp("scenario-dags")
    shutil.copytree(REPO_ROOT / "dags", dags, dirs_exist_ok=True)
    for name in (f"{RETRY_PROBE}.py", f"{RETRY_PROBE}.yaml", f"{DEADLINE_PROBE}.py"):
        shutil.copy(FIXTURES / name, dags)
    return dags


@pytest.fixture(scope="module")
def live(start_module_stack, dags_folder: Path, upstream: Upstream) -> Live:
    stack, api = start_module_stack(
        dags_folder,
        settings_file=None,
        extra_env={
            "AIRFLOW_CONN_DEMO_API": upstream.connection_json(),
            "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps(
                {"conn_type": "http", "host": upstream.url, "password": WEBHOOK_SECRET_PATH}
            ),
            # The report's own delivery target (never the alerts inbox).
            "AIRFLOW_CONN_REPORTS_WEBHOOK": json.dumps(
                {"conn_type": "http", "host": f"{upstream.url}/reports"}
            ),
        },
    )
    for name, slots in POOLS.items():
        api.request("POST", "/pools", json={"name": name, "slots": slots})
    # Unpaused up front: a sync's first scheduled run (its latest interval, catchup is off) then runs
    # while the first tests do, and every Asset event reaches the report.
    for dag_id in (ORDERS_SYNC, CUSTOMERS_SYNC, RETRY_PROBE, DEADLINE_PROBE, REPORT):
        api.wait_for_dag(dag_id)
        api.set_paused(dag_id, False)
    return Live(stack, api, upstream)


@pytest.fixture
def api(live: Live) -> AirflowApi:
    return live.api


def test_overrun_deadline_alert_names_the_dag_run_and_deadline(
    live: Live, api: AirflowApi, warehouse: psycopg.Connection
) -> None:
    # First, so the probe's 20 s task sleeps while the next tests run rather than at teardown.
    run = api.trigger(DEADLINE_PROBE, logical_date=None)

    alert = wait_for_deadline_alert(live.upstream, run["dag_run_id"])

    queued_at = parse_time(api.dag_run(DEADLINE_PROBE, run["dag_run_id"])["queued_at"])
    assert alert["run_id"] == run["dag_run_id"]
    assert unquote(alert["url"]).endswith(f"/dags/{DEADLINE_PROBE}/runs/{run['dag_run_id']}")
    assert alert["deadline_interval_seconds"] == 5
    assert abs(parse_time(alert["deadline_time"]) - (queued_at + timedelta(seconds=5))) < timedelta(seconds=1)
    assert api.dag_run(DEADLINE_PROBE, run["dag_run_id"])["state"] == "running"

    # The triggerer stores the callback's return value (a text column) after the alert went out: a
    # dict there used to crash it, leaving the callback `running` to crash every restart again.
    assert wait_for_deadline_callback(live, run["dag_run_id"]) == ("success", "sent")
    assert_components_running(live)

    # The triggerer still handles deadlines: a second run alerts too. Its alert would be a duplicate
    # within the per-DAG dedup window, so the first one's log rows go, as if the window had passed.
    warehouse.execute("DELETE FROM batch_meta.alert_log WHERE dag_id = %s", (DEADLINE_PROBE,))
    second = api.trigger(DEADLINE_PROBE, logical_date=None)

    # It queues behind the first run (max_active_runs=1); its deadline counts from when it was queued.
    second_alert = wait_for_deadline_alert(live.upstream, second["dag_run_id"], timeout=90)

    assert second_alert["run_id"] == second["dag_run_id"]
    assert wait_for_deadline_callback(live, second["dag_run_id"]) == ("success", "sent")
    assert_components_running(live)


def test_triggered_sync_loads_its_interval(api: AirflowApi, warehouse: psycopg.Connection) -> None:
    run = api.trigger(CUSTOMERS_SYNC, logical_date="2026-05-01T01:30:00Z")

    finished = wait_for_run(api, CUSTOMERS_SYNC, run["dag_run_id"])

    assert finished["state"] == "success", task_states(api, CUSTOMERS_SYNC, run["dag_run_id"])
    start, end = interval_of(finished)
    assert end - start == timedelta(days=1)
    expected = select("customers", start, end, VOLUMES)
    assert expected.total > 0
    assert table_keys(warehouse, "crm.customers", "customer_id", start, end) == expected_keys(
        expected, "customer_id"
    )


def test_backfill_loads_seven_days_and_reprocessing_changes_nothing(
    api: AirflowApi, warehouse: psycopg.Connection
) -> None:
    first, last = datetime(2026, 4, 1, 2, tzinfo=UTC), datetime(2026, 4, 7, 2, tzinfo=UTC)
    body = {
        "dag_id": ORDERS_SYNC,
        "from_date": first.isoformat(),
        "to_date": last.isoformat(),
        "reprocess_behavior": "none",
        "max_active_runs": 7,
    }
    planned = api.backfill_dry_run(body)["backfills"]
    assert [parse_time(r["logical_date"]) for r in planned] == [first + timedelta(days=d) for d in range(7)]
    assert api.backfills(ORDERS_SYNC) == []

    runs = run_backfill(api, body)
    start, end = first, last + timedelta(days=1)
    assert [interval_of(r) for r in runs] == [
        (first + timedelta(days=d), first + timedelta(days=d + 1)) for d in range(7)
    ]
    expected = select("orders", start, end, VOLUMES)
    assert table_keys(warehouse, "sales.orders", "order_id", start, end) == expected_keys(
        expected, "order_id"
    )
    checksum = table_checksum(warehouse, start, end)

    rerun = run_backfill(api, {**body, "reprocess_behavior": "completed"})

    assert [r["dag_run_id"] for r in rerun] == [r["dag_run_id"] for r in runs]
    assert all(
        parse_time(again["end_date"]) > parse_time(before["end_date"])
        for again, before in zip(rerun, runs, strict=True)
    )
    assert table_checksum(warehouse, start, end) == checksum


def test_failure_past_retries_alerts_once_and_clearing_reruns_it(
    live: Live, api: AirflowApi, warehouse: psycopg.Connection
) -> None:
    upstream = live.upstream
    # The probe's first scheduled run (created when the fixture unpaused it) must be over before the
    # fault: only the interval triggered here may fail.
    wait_for(
        lambda: api.dag_runs(RETRY_PROBE) and unfinished_runs(api, RETRY_PROBE) == [],
        timeout=RUN_TIMEOUT,
        what="the probe's scheduled run done, none in flight",
    )
    upstream.reset()
    # 503 with Retry-After: 0, so in-task retries wait only their short backoff and each try fails fast.
    upstream.set_faults(
        {"kind": "status", "status": 503, "path": PROBE_PATH, "times": None, "retry_after": 0}
    )
    run_id = api.trigger(RETRY_PROBE, logical_date="2026-06-01T01:30:00Z")["dag_run_id"]

    failed = wait_for_run(api, RETRY_PROBE, run_id)

    assert failed["state"] == "failed"
    states = {
        ti["task_id"]: (ti["state"], ti["try_number"]) for ti in api.task_instances(RETRY_PROBE, run_id)
    }
    assert states["extract_stage"] == ("failed", 3)  # the first try and both retries
    assert {state for task_id, (state, _) in states.items() if task_id != "extract_stage"} == {
        "upstream_failed"
    }
    alert = wait_for(lambda: task_failed_alerts(upstream, RETRY_PROBE), timeout=30, what="the failure alert")
    time.sleep(3)  # a second alert, if any, would come from the same callback within this time
    (alert,) = task_failed_alerts(upstream, RETRY_PROBE)
    assert (alert["task_id"], alert["run_id"], alert["try_number"]) == ("extract_stage", run_id, 3)
    assert "503" in alert["error"]
    # Every try made the full number of attempts the probe's YAML allows, and no more.
    attempts = load_spec(FIXTURES / f"{RETRY_PROBE}.yaml").source.retry.max_attempts
    assert upstream.requests_to(PROBE_PATH) == 3 * attempts

    upstream.set_faults()
    clear = {"dag_run_id": run_id, "only_failed": True, "include_downstream": True, "reset_dag_runs": True}
    to_clear = api.clear_task_instances(RETRY_PROBE, {**clear, "dry_run": True})["task_instances"]
    assert {ti["task_id"] for ti in to_clear} == set(states)
    failed_task_ids = sorted(ti["task_id"] for ti in to_clear if ti["state"] == "failed")
    assert failed_task_ids == ["extract_stage"]
    api.clear_task_instances(RETRY_PROBE, {**clear, "dry_run": False, "task_ids": failed_task_ids})

    rerun = wait_for_run(api, RETRY_PROBE, run_id)

    assert rerun["state"] == "success", task_states(api, RETRY_PROBE, run_id)
    start, end = interval_of(rerun)
    expected = select("customers", start, end, VOLUMES)
    assert table_rows(warehouse, "crm.customers", start, end) == expected.total
    assert table_keys(warehouse, "crm.customers", "customer_id", start, end) == expected_keys(
        expected, "customer_id"
    )
    assert len(task_failed_alerts(upstream, RETRY_PROBE)) == 1


def test_no_secret_reaches_a_task_log_an_alert_or_the_alert_log(
    live: Live, warehouse: psycopg.Connection
) -> None:
    """After the failing sync above alerted: the source token, the webhook's secret path and the
    warehouse password appear in no task or component log, no alert payload and no alert_log row."""
    known_secrets = {
        "source token": live.upstream.token,
        "webhook secret path": WEBHOOK_SECRET_PATH,
        **({"warehouse password": password} if (password := warehouse.info.password) else {}),
    }
    alerts = live.upstream.alerts()
    # Alerts reach the inbox only through the secret path: the connection's host has no path.
    assert task_failed_alerts(live.upstream, RETRY_PROBE), "the failure alert never arrived"
    logs = [
        path
        for path in live.stack.airflow_home.rglob("*")
        if path.is_file() and path.suffix in (".log", ".json")
    ]
    logs += list(live.stack.logs.glob("*.log"))
    assert any("task_id=extract_stage" in str(path) for path in logs), "no task log of the failed sync"
    alert_log = warehouse.execute("SELECT payload::text FROM batch_meta.alert_log").fetchall()

    for name, secret in known_secrets.items():
        for path in logs:
            assert secret not in path.read_text(errors="replace"), f"{name} found in {path}"
        assert secret not in json.dumps(alerts), f"{name} found in an alert payload"
        assert not [row for (row,) in alert_log if secret in row], f"{name} found in batch_meta.alert_log"


def test_report_runs_after_both_syncs_update_their_assets(live: Live, api: AirflowApi) -> None:
    sync_runs = {
        ORDERS_SYNC: api.trigger(ORDERS_SYNC, logical_date="2026-07-01T02:00:00Z")["dag_run_id"],
        CUSTOMERS_SYNC: api.trigger(CUSTOMERS_SYNC, logical_date="2026-07-01T01:30:00Z")["dag_run_id"],
    }
    syncs = {dag_id: wait_for_run(api, dag_id, run_id) for dag_id, run_id in sync_runs.items()}
    assert {dag_id: run["state"] for dag_id, run in syncs.items()} == dict.fromkeys(sync_runs, "success")

    def report_run_fed_by_the_syncs() -> tuple[dict, list[dict]] | None:
        for run in api.dag_runs(REPORT, run_type="asset_triggered"):
            path = f"/dags/{REPORT}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents"
            events = [
                event
                for event in api.get(path)["asset_events"]
                if (event["source_dag_id"], event["source_run_id"]) in sync_runs.items()
            ]
            if len(events) == len(sync_runs):
                return run, events
        return None

    report, events = wait_for(
        report_run_fed_by_the_syncs, timeout=RUN_TIMEOUT, interval=2, what="a report run on both Assets"
    )
    finished = wait_for_run(api, REPORT, report["dag_run_id"])

    assert finished["state"] == "success", task_states(api, REPORT, report["dag_run_id"])
    assert {(event["source_dag_id"], event["uri"]) for event in events} == {
        (ORDERS_SYNC, table_asset("sales.orders").uri),
        (CUSTOMERS_SYNC, table_asset("crm.customers").uri),
    }
    assert parse_time(finished["start_date"]) >= max(parse_time(event["timestamp"]) for event in events)
    assert live.upstream.reports(), "the report was not delivered to its own inbox"
    assert not [
        alert for alert in live.upstream.alerts() if alert.get("dag_id") == REPORT and "summary" in alert
    ]


# --- helpers ---------------------------------------------------------------------------------------


def wait_for_deadline_alert(upstream: Upstream, run_id: str, timeout: float = 60) -> dict:
    """The deadline_missed alert of the probe's run `run_id`, once it has arrived (exactly one)."""
    alerts = wait_for(
        lambda: [
            a
            for a in upstream.alerts()
            if a.get("kind") == "deadline_missed" and a["dag_id"] == DEADLINE_PROBE and a["run_id"] == run_id
        ],
        timeout=timeout,
        what=f"the deadline_missed alert of {run_id}",
    )
    assert len(alerts) == 1, alerts
    return alerts[0]


def wait_for_deadline_callback(live: Live, run_id: str, timeout: float = 30) -> tuple[str, str | None]:
    """(state, output) of the probe run's deadline callback once it is final, from the metadata DB."""
    server, database = PgServer.from_url(live.stack.sql_alchemy_conn)

    def final() -> tuple[str, str | None] | None:
        with psycopg.connect(server.conninfo(database), autocommit=True) as conn:
            row = conn.execute(
                """
                SELECT c.state, c.output
                  FROM deadline d
                  JOIN dag_run r ON r.id = d.dagrun_id
                  JOIN callback c ON c.id = d.callback_id
                 WHERE r.dag_id = %s AND r.run_id = %s
                """,
                (DEADLINE_PROBE, run_id),
            ).fetchone()
        return row if row is not None and row[0] in ("success", "failed") else None

    return wait_for(final, timeout=timeout, what=f"the deadline callback of {run_id} to finish")


def assert_components_running(live: Live) -> None:
    """Every component process still runs, and the API reports the scheduling components healthy."""
    exited = {
        p.name: p.popen.returncode for p in live.stack.processes if p.popen and p.popen.poll() is not None
    }
    assert not exited, f"component(s) exited: {exited}\n{live.stack.log_tails()}"
    assert {p.name for p in live.stack.processes} >= set(AIRFLOW_COMPONENTS)
    health = live.api.get("/monitor/health")
    assert {key: health[key]["status"] for key in HEALTH_KEYS} == dict.fromkeys(HEALTH_KEYS, "healthy"), (
        health
    )


def wait_for_run(api: AirflowApi, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
    """The run once it has finished (success or failed)."""

    def finished() -> dict | None:
        run = api.dag_run(dag_id, run_id)
        return run if run["state"] in ("success", "failed") else None

    return wait_for(finished, timeout=timeout, interval=2, what=f"{dag_id} run {run_id} to finish")


def run_backfill(api: AirflowApi, body: dict) -> list[dict]:
    """Create the backfill and wait until it completes; its runs, oldest first, all successful."""
    backfill = api.create_backfill(body)
    wait_for(
        lambda: api.backfill(backfill["id"])["completed_at"],
        timeout=300,
        interval=3,
        what=f"backfill {backfill['id']} to complete",
    )
    first, last = parse_time(body["from_date"]), parse_time(body["to_date"])
    runs = sorted(
        (
            run
            for run in api.dag_runs(body["dag_id"], run_type="backfill")
            if first <= parse_time(run["logical_date"]) <= last
        ),
        key=lambda run: run["logical_date"],
    )
    assert [r["state"] for r in runs] == ["success"] * len(runs), runs
    return runs


def unfinished_runs(api: AirflowApi, dag_id: str) -> list[str]:
    return [run["dag_run_id"] for run in api.dag_runs(dag_id) if run["state"] not in ("success", "failed")]


def task_states(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, str]:
    return {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run_id)}


def task_failed_alerts(upstream: Upstream, dag_id: str) -> list[dict]:
    return [a for a in upstream.alerts() if a.get("kind") == "task_failed" and a["dag_id"] == dag_id]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def interval_of(run: dict) -> tuple[datetime, datetime]:
    return parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])


def expected_keys(selection: Any, key: str) -> list[int]:
    return sorted(record[key] for record in selection.records(0, selection.total))


def table_keys(conn: psycopg.Connection, table: str, key: str, start: datetime, end: datetime) -> list[int]:
    query = sql.SQL("SELECT {key} FROM {table} WHERE updated_at >= %s AND updated_at < %s ORDER BY 1").format(
        key=sql.Identifier(key), table=sql.Identifier(*table.split("."))
    )
    return [row[0] for row in conn.execute(query, (start, end)).fetchall()]


def table_rows(conn: psycopg.Connection, table: str, start: datetime, end: datetime) -> int:
    query = sql.SQL("SELECT count(*) FROM {table} WHERE updated_at >= %s AND updated_at < %s").format(
        table=sql.Identifier(*table.split("."))
    )
    (count,) = conn.execute(query, (start, end)).fetchone()
    return count


def table_checksum(conn: psycopg.Connection, start: datetime, end: datetime) -> str:
    """md5 over every column of sales.orders in [start, end), in key order."""
    (checksum,) = conn.execute(
        """
        SELECT md5(string_agg(o::text, E'\\n' ORDER BY o.order_id))
          FROM sales.orders o WHERE o.updated_at >= %s AND o.updated_at < %s
        """,
        (start, end),
    ).fetchone()
    return checksum
