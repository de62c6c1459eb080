"""batchkit.airflow_fixes: the workaround for apache/airflow#70368, proven under the real api-server, and
the `airflow dags test` deadline fix, proven through the real CLI.

The plain tests check the decoding and the guards in this process; the e2e tests clear a failed task
while its 10-minute DAGRUN_QUEUED_AT deadline is pending, through the REST API of a live stack, and run
`airflow dags test` as a subprocess against this session's metadata DB (with and without the plugin).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import airflow
import pendulum
import psycopg
import pytest
from airflow.models import dagrun as dagrun_module
from airflow.models import taskinstance
from airflow.sdk.definitions.deadline import VariableInterval
from airflow.serialization.encoders import encode_deadline_alert
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from batchkit import airflow_fixes
from batchkit.airflow_fixes import (
    AFFECTED_VERSIONS,
    DAG_TEST_AFFECTED_VERSIONS,
    DAG_TEST_ISSUE,
    FIX_MARKER,
    AirflowFixOutdated,
    deadline_alert_interval,
    install_dag_test_deadline_fix,
    install_queued_at_deadline_fix,
    recalculate_dagrun_queued_at_deadlines,
    use_stored_deadline_ids,
)
from batchkit.dag_factory import standard_dag
from batchkit.sql_files import apply_sql_file
from batchkit.taxonomy import Tag
from tests.upstream import running_upstream
from tools import REPO_ROOT
from tools.airflow_api import AirflowApi, wait_for
from tools.metadb import PgServer
from tools.stack import AirflowStack

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "dags_ops"
# Fails until a marker file sits next to it; its deadline is 10 minutes from when a run is queued.
PROBE = "ops_rerun_probe"
PROBE_DEADLINE = timedelta(minutes=10)
BUG_MESSAGE = "unsupported type for timedelta seconds component: dict"


def test_installed_airflow_is_a_release_known_to_have_the_bug() -> None:
    assert airflow.__version__ in AFFECTED_VERSIONS, (
        f"Airflow {airflow.__version__} is installed. If it fixes apache/airflow#70368 (PR #70370), delete "
        "plugins/batchkit/airflow_fixes.py and this test; if not, add the version to AFFECTED_VERSIONS"
    )
    assert airflow.__version__ in DAG_TEST_AFFECTED_VERSIONS, (
        f"Airflow {airflow.__version__} is installed. Run `make dag-test DAG=platform_smoke DATE=2026-11-01` "
        "without the plugin: if it passes, delete install_dag_test_deadline_fix; if not, add the version "
        "to DAG_TEST_AFFECTED_VERSIONS"
    )


def _deadline_alert_row(interval: timedelta | VariableInterval):
    """A deadline_alert row as the dag-processor writes it for a standard_dag DAG."""
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel

    dag = standard_dag(
        "fix_probe",
        owner="platform-team",
        tags=[Tag.DOMAIN_PLATFORM, Tag.KIND_SMOKE, Tag.TIER_3],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        deadline=timedelta(minutes=1),
        doc_md="# fix_probe\n\n## Runbook\n- nothing to do",
    )
    (alert,) = dag.deadline
    alert.interval = interval
    encoded = encode_deadline_alert(alert)
    return DeadlineAlertModel(
        reference=encoded["reference"], interval=encoded["interval"], callback_def=encoded["callback"]
    )


def test_decodes_the_json_interval_the_upstream_function_chokes_on() -> None:
    row = _deadline_alert_row(timedelta(minutes=25))

    assert deadline_alert_interval(row) == timedelta(minutes=25)
    with pytest.raises(TypeError, match=BUG_MESSAGE):
        timedelta(seconds=row.interval)


def test_resolves_a_variable_backed_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_FIX_PROBE_DEADLINE_SECONDS", "900")
    row = _deadline_alert_row(VariableInterval("fix_probe_deadline_seconds"))

    assert deadline_alert_interval(row) == timedelta(seconds=900)


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> object:
    """The upstream function, put back as the module attribute after the test whatever it installs."""
    upstream = inspect.unwrap(taskinstance._recalculate_dagrun_queued_at_deadlines)
    monkeypatch.setattr(taskinstance, "_recalculate_dagrun_queued_at_deadlines", upstream)
    return upstream


def test_install_replaces_the_function_once(unpatched: object) -> None:
    assert install_queued_at_deadline_fix() is True
    installed = taskinstance._recalculate_dagrun_queued_at_deadlines

    assert getattr(installed, FIX_MARKER) == "apache/airflow#70368"
    assert inspect.unwrap(installed) is unpatched
    # The plugins manager runs the file again as a module of its own, as here; that install is a no-op.
    spec = importlib.util.spec_from_file_location("airflow_fixes", airflow_fixes.__file__)
    plugin_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin_module)
    plugin_module.AirflowFixesPlugin.on_load()
    assert install_queued_at_deadline_fix() is False
    assert taskinstance._recalculate_dagrun_queued_at_deadlines is installed


def test_install_refuses_a_function_whose_signature_changed(
    unpatched: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reworked(dagrun, session):  # the shape a refactor upstream might give it
        return None

    monkeypatch.setattr(taskinstance, "_recalculate_dagrun_queued_at_deadlines", reworked)

    with pytest.raises(AirflowFixOutdated, match=r"takes \('dagrun', 'session'\)"):
        install_queued_at_deadline_fix()
    assert taskinstance._recalculate_dagrun_queued_at_deadlines is reworked


@pytest.mark.parametrize("version", ["3.4.0", "3.3.3"])
def test_install_refuses_a_release_outside_the_affected_list(
    unpatched: object, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(airflow, "__version__", version)

    with pytest.raises(AirflowFixOutdated, match=rf"Airflow {re.escape(version)} is installed"):
        install_queued_at_deadline_fix()
    assert taskinstance._recalculate_dagrun_queued_at_deadlines is unpatched


# --- dag.test's deadline ids ------------------------------------------------------------------------


@pytest.fixture
def unpatched_get_or_create(monkeypatch: pytest.MonkeyPatch) -> object:
    upstream = inspect.unwrap(dagrun_module.get_or_create_dagrun)
    monkeypatch.setattr(dagrun_module, "get_or_create_dagrun", upstream)
    return upstream


def test_dag_test_fix_wraps_get_or_create_dagrun_once(unpatched_get_or_create: object) -> None:
    assert install_dag_test_deadline_fix() is True
    installed = dagrun_module.get_or_create_dagrun

    assert getattr(installed, FIX_MARKER) == DAG_TEST_ISSUE
    assert inspect.unwrap(installed) is unpatched_get_or_create
    assert install_dag_test_deadline_fix() is False
    assert dagrun_module.get_or_create_dagrun is installed


def test_dag_test_fix_refuses_a_function_whose_signature_changed(
    unpatched_get_or_create: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reworked(*, dag, run_id, session):
        return None

    monkeypatch.setattr(dagrun_module, "get_or_create_dagrun", reworked)

    with pytest.raises(AirflowFixOutdated, match=r"takes \('dag', 'run_id', 'session'\)"):
        install_dag_test_deadline_fix()
    assert dagrun_module.get_or_create_dagrun is reworked


@pytest.mark.parametrize("version", ["3.3.1", "3.3.3", "3.4.0"])
def test_dag_test_fix_refuses_a_release_it_was_not_checked_on(
    unpatched_get_or_create: object, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(airflow, "__version__", version)

    with pytest.raises(AirflowFixOutdated, match=r"DAG_TEST_AFFECTED_VERSIONS"):
        install_dag_test_deadline_fix()
    assert dagrun_module.get_or_create_dagrun is unpatched_get_or_create


class _Dag:
    dag_id = "not_in_any_database"

    def __init__(self, deadline):
        self.deadline = deadline


def test_a_dag_that_already_holds_alert_ids_is_left_alone() -> None:
    ids = ["0190a3c4-0000-7000-8000-000000000001"]
    dag = _Dag(list(ids))

    # No session needed: nothing is looked up when there is nothing to replace.
    assert use_stored_deadline_ids(dag, session=None) is False
    assert dag.deadline == ids
    assert use_stored_deadline_ids(_Dag(None), session=None) is False


DAG_TEST_DATE = "2026-11-01"
# The target only: the session warehouse's control tables come from its migrations (tests/conftest.py).
SYNC_DDL = ("sql/targets/sales_orders.sql",)
# What Airflow 3.3.2 raises without the fix, after every task succeeded.
DAG_TEST_CRASH = "can't adapt type 'dict'"


def _airflow_dags_test(dag_id: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id, DAG_TEST_DATE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _test_run(sql_alchemy_conn: str, dag_id: str) -> tuple[str, dict[str, str]]:
    """(state, {task_id: state}) of the dag.test run of `dag_id` at DAG_TEST_DATE."""
    engine = create_engine(sql_alchemy_conn)
    try:
        with engine.connect() as conn:
            run_id, state = conn.execute(
                text(
                    "SELECT dr.run_id, dr.state FROM dag_run dr WHERE dr.dag_id = :dag_id AND dr.logical_date = :date "
                    "AND dr.triggered_by = 'TEST'"
                ),
                {"dag_id": dag_id, "date": f"{DAG_TEST_DATE}T00:00:00+00:00"},
            ).one()
            tasks = conn.execute(
                text("SELECT task_id, state FROM task_instance WHERE dag_id = :dag_id AND run_id = :run_id"),
                {"dag_id": dag_id, "run_id": run_id},
            ).all()
    finally:
        engine.dispose()
    return state, dict(tasks)


@pytest.mark.e2e
@pytest.mark.slow
def test_airflow_dags_test_cli_succeeds_with_the_plugin_and_crashes_without_it(
    airflow_db: str, tmp_path: Path
) -> None:
    """`airflow dags test` in a real CLI process on a DAG with a DeadlineAlert: exit 0, run success,
    the success path (which looks up the DAG's deadline alerts) done. Without the plugin (an empty
    plugins folder, batchkit still importable) the same command crashes on 3.3.2: the plugin is what
    fixes it, and it is loaded in the CLI process before the run."""
    env = dict(os.environ)
    without_plugin = {
        **env,
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT / "plugins"), str(REPO_ROOT / "config"), env.get("PYTHONPATH", "")]
        ),
    }
    crashed = _airflow_dags_test("platform_smoke", without_plugin)
    assert crashed.returncode != 0
    assert DAG_TEST_CRASH in crashed.stdout + crashed.stderr, crashed.stderr[-3000:]
    # The crash comes after the work: the task succeeded, the run's final state was never committed.
    assert _test_run(airflow_db, "platform_smoke") == ("running", {"smoke": "success"})

    result = _airflow_dags_test("platform_smoke", env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert DAG_TEST_CRASH not in output
    assert _test_run(airflow_db, "platform_smoke") == ("success", {"smoke": "success"})


@pytest.mark.e2e
@pytest.mark.slow
def test_airflow_dags_test_cli_runs_a_sync_against_the_demo_upstream(
    airflow_db: str, warehouse: psycopg.Connection
) -> None:
    """A YAML sync (extract, quarantine check, merge, data-quality checks, Asset, DeadlineAlert) through
    `airflow dags test`, reading the demo upstream and writing this session's warehouse."""
    for ddl in SYNC_DDL:
        apply_sql_file(warehouse, ddl)
    warehouse.execute("TRUNCATE sales.orders")
    with running_upstream("--orders-per-day", "1200") as upstream:
        env = {
            **os.environ,
            "AIRFLOW_CONN_DEMO_API": upstream.connection_json(),
            "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps(
                {"conn_type": "http", "host": upstream.url + "/alerts"}
            ),
        }
        result = _airflow_dags_test("sales_orders_sync", env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    state, tasks = _test_run(airflow_db, "sales_orders_sync")
    assert state == "success"
    assert set(tasks.values()) == {"success"}, tasks
    ((rows,),) = warehouse.execute("SELECT count(*) FROM sales.orders").fetchall()
    assert rows > 0


# --- under the real api-server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dags_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dags = tmp_path_factory.mktemp("fix-dags")
    shutil.copy(FIXTURES / f"{PROBE}.py", dags)
    return dags


@pytest.fixture(scope="module")
def live(start_module_stack, dags_folder: Path) -> tuple[AirflowStack, AirflowApi]:
    stack, api = start_module_stack(dags_folder, settings_file=None)
    api.wait_for_dag(PROBE)
    return stack, api


@pytest.mark.e2e
def test_the_api_server_loads_the_fix_plugin(live) -> None:
    _, api = live
    plugins = {p["name"]: p for p in api.get_all("/plugins", "plugins")}
    errors = api.get_all("/plugins/importErrors", "import_errors")

    assert "batchkit_airflow_fixes" in plugins, sorted(plugins)
    assert [e for e in errors if "airflow_fixes" in e["source"]] == []


@pytest.mark.e2e
def test_clearing_a_failed_task_while_its_deadline_is_pending_reruns_it(
    live, dags_folder: Path, pg_server: PgServer
) -> None:
    stack, api = live
    api.set_paused(PROBE, False)
    run_id = api.trigger(PROBE, logical_date=None)["dag_run_id"]
    wait_for(
        lambda: api.dag_run(PROBE, run_id)["state"] == "failed", timeout=90, what="the probe run failing"
    )
    conninfo = pg_server.conninfo(make_url(stack.sql_alchemy_conn).database)
    failed_queued_at, failed_deadline = _pending_deadline(conninfo, run_id)
    assert failed_deadline == failed_queued_at + PROBE_DEADLINE
    assert failed_deadline > datetime.now(UTC)

    # On the rows the real stack wrote, the installed upstream function still fails and ours does not.
    _check_functions_against_the_live_rows(stack.sql_alchemy_conn, run_id)

    (dags_folder / f"{PROBE}.ready").touch()
    cleared = api.clear_task_instances(
        PROBE,
        {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": ["gate"],
            "only_failed": True,
            "include_downstream": True,
            "reset_dag_runs": True,
        },
    )
    assert sorted(ti["task_id"] for ti in cleared["task_instances"]) == ["after", "gate"]
    requeued_at, moved_deadline = _pending_deadline(conninfo, run_id)
    assert requeued_at > failed_queued_at
    # Clearing sets queued_at, re-anchors the deadline, then sets queued_at again with the run's state.
    assert abs(moved_deadline - (requeued_at + PROBE_DEADLINE)) < timedelta(seconds=1)

    wait_for(
        lambda: api.dag_run(PROBE, run_id)["state"] == "success", timeout=90, what="the rerun succeeding"
    )
    assert {ti["task_id"]: ti["state"] for ti in api.task_instances(PROBE, run_id)} == {
        "gate": "success",
        "after": "success",
    }
    assert BUG_MESSAGE not in (stack.logs / "api-server.log").read_text(errors="replace")


def _pending_deadline(conninfo: str, run_id: str) -> tuple[datetime, datetime]:
    """(queued_at, deadline_time) of the run's one pending deadline, read from the metadata database."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            """
            SELECT dr.queued_at, d.deadline_time
              FROM deadline d JOIN dag_run dr ON dr.id = d.dagrun_id
             WHERE dr.dag_id = %s AND dr.run_id = %s AND NOT d.missed
            """,
            (PROBE, run_id),
        ).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def _check_functions_against_the_live_rows(sql_alchemy_conn: str, run_id: str) -> None:
    """Both functions on the run's real rows, in a transaction rolled back before the clear needs them."""
    from airflow.models.dagrun import DagRun
    from airflow.models.deadline import Deadline

    engine = create_engine(sql_alchemy_conn)
    try:
        with Session(engine) as session:
            dagrun = session.scalars(
                select(DagRun).where(DagRun.dag_id == PROBE, DagRun.run_id == run_id)
            ).one()
            new_queued_at = datetime.now(UTC)
            upstream = inspect.unwrap(taskinstance._recalculate_dagrun_queued_at_deadlines)
            with pytest.raises(TypeError, match=BUG_MESSAGE):
                upstream(dagrun, new_queued_at, session)

            recalculate_dagrun_queued_at_deadlines(dagrun, new_queued_at, session)
            (deadline,) = session.scalars(select(Deadline).where(Deadline.dagrun_id == dagrun.id)).all()
            assert deadline.deadline_time == new_queued_at + PROBE_DEADLINE
            session.rollback()
    finally:
        engine.dispose()
