"""The operator verbs (tools/ops.py) driven as a subprocess against one live stack, as an operator would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tools import REPO_ROOT
from tools.airflow_api import AirflowApi, wait_for
from tools.airflow_env import ADMIN_USER

FIXTURES = REPO_ROOT / "tests" / "fixtures"
VIOLATING_DAG = FIXTURES / "dags_violating" / "policy_violating_dag.py"
SMOKE = "platform_smoke"
# Fails until a marker file sits next to it (tests/fixtures/dags_ops/ops_rerun_probe.py).
PROBE = "ops_rerun_probe"

pytestmark = pytest.mark.e2e

Ops = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def dags_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dags = tmp_path_factory.mktemp("ops-dags")
    shutil.copytree(REPO_ROOT / "dags" / "platform", dags / "platform")
    shutil.copy(FIXTURES / "dags_ops" / f"{PROBE}.py", dags)
    return dags


@pytest.fixture(scope="module")
def live(start_module_stack, dags_folder: Path) -> tuple[AirflowApi, dict[str, str]]:
    """The stack's REST client and the environment that points the CLI at it."""
    stack, api = start_module_stack(dags_folder)
    api.wait_for_dag(SMOKE)
    api.wait_for_dag(PROBE)
    env = {
        **os.environ,
        "AIRFLOW_API_URL": stack.api_url,
        "AIRFLOW_USER": ADMIN_USER,
        "AIRFLOW_PASSWORD": stack.admin_password(),
    }
    return api, env


@pytest.fixture
def api(live) -> AirflowApi:
    return live[0]


@pytest.fixture
def ops(live) -> Ops:
    def run(*args: str, expect_exit: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "tools.ops", *args],
            env=live[1],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == expect_exit, f"ops {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    return run


def test_pause_and_unpause_show_in_the_dag_list(api: AirflowApi, ops: Ops) -> None:
    paused = ops("pause", SMOKE)
    assert f"pausing {SMOKE}" in paused.stdout.splitlines()[0]
    assert _listed_paused(api, SMOKE) is True

    unpaused = ops("unpause", SMOKE)
    assert f"unpausing {SMOKE}" in unpaused.stdout.splitlines()[0]
    assert _listed_paused(api, SMOKE) is False


def test_backfill_dry_run_lists_the_dates_and_creates_nothing(api: AirflowApi, ops: Ops) -> None:
    result = ops("backfill", SMOKE, "--from", "2026-06-01T00:00", "--to", "2026-06-01T02:00")

    assert _listed_dates(result.stdout) == [
        "2026-06-01T00:00:00Z",
        "2026-06-01T01:00:00Z",
        "2026-06-01T02:00:00Z",
    ]
    assert "nothing was created" in result.stdout
    assert api.backfills(SMOKE) == []
    assert api.dag_runs(SMOKE, run_type="backfill") == []


def test_backfill_execute_creates_runs_that_succeed(api: AirflowApi, ops: Ops) -> None:
    ops("unpause", SMOKE)
    result = ops("backfill", SMOKE, "--from", "2026-06-02T00:00", "--to", "2026-06-02T02:00", "--execute")

    planned = _listed_dates(result.stdout)
    assert len(planned) == 3
    (backfill,) = api.backfills(SMOKE)
    assert f"created backfill {backfill['id']}" in result.stdout
    assert backfill["from_date"].startswith("2026-06-02T00:00:00")

    def all_succeeded() -> list[dict] | None:
        runs = api.dag_runs(SMOKE, run_type="backfill")
        return runs if len(runs) == 3 and all(r["state"] == "success" for r in runs) else None

    runs = wait_for(all_succeeded, timeout=90, interval=2, what="3 backfill runs in state success")
    assert sorted(r["logical_date"] for r in runs) == planned


def test_clear_failed_dry_run_on_a_clean_run_has_nothing_to_clear(api: AirflowApi, ops: Ops) -> None:
    ops("unpause", SMOKE)
    run = api.trigger(SMOKE, logical_date="2026-06-03T00:00:00Z")
    wait_for(
        lambda: api.dag_run(SMOKE, run["dag_run_id"])["state"] == "success",
        timeout=90,
        interval=2,
        what=f"run {run['dag_run_id']} in state success",
    )

    result = ops("clear-failed", SMOKE, "--run-id", run["dag_run_id"])

    assert "nothing to clear" in result.stdout
    assert [ti["state"] for ti in api.task_instances(SMOKE, run["dag_run_id"])] == ["success"]


def test_clear_failed_reruns_the_failed_task_and_its_downstream(
    api: AirflowApi, ops: Ops, dags_folder: Path
) -> None:
    ops("unpause", PROBE)
    run_id = api.trigger(PROBE, logical_date=None)["dag_run_id"]
    wait_for(
        lambda: _run_state(api, PROBE, run_id) == "failed",
        timeout=90,
        interval=2,
        what="the probe run failing",
    )

    dry = ops("clear-failed", PROBE, "--run-id", run_id)
    listed = [line.split()[1:3] for line in dry.stdout.splitlines() if line.startswith("  ")]
    assert sorted(listed) == [["after", "upstream_failed"], ["gate", "failed"]]
    assert "nothing was cleared" in dry.stdout
    assert _run_state(api, PROBE, run_id) == "failed"

    (dags_folder / f"{PROBE}.ready").touch()
    executed = ops("clear-failed", PROBE, "--run-id", run_id, "--execute")
    assert "cleared 2 task instance(s)" in executed.stdout
    wait_for(
        lambda: _run_state(api, PROBE, run_id) == "success",
        timeout=90,
        interval=2,
        what="the rerun succeeding",
    )
    assert {ti["task_id"]: ti["state"] for ti in api.task_instances(PROBE, run_id)} == {
        "gate": "success",
        "after": "success",
    }


def test_import_errors_exit_code_follows_the_dags_folder(
    api: AirflowApi, ops: Ops, dags_folder: Path
) -> None:
    clean = ops("import-errors")
    assert "no import errors" in clean.stdout

    shutil.copy(VIOLATING_DAG, dags_folder)
    wait_for(api.import_errors, timeout=90, what="the violating DAG's import error")
    found = ops("import-errors", expect_exit=1)

    (line,) = [line for line in found.stdout.splitlines() if "policy_violating_dag.py" in line]
    assert "AirflowClusterPolicyViolation" in line


def _listed_paused(api: AirflowApi, dag_id: str) -> bool:
    (dag,) = [d for d in api.dags(dag_id_pattern=dag_id) if d["dag_id"] == dag_id]
    return dag["is_paused"]


def _run_state(api: AirflowApi, dag_id: str, run_id: str) -> str:
    return api.dag_run(dag_id, run_id)["state"]


def _listed_dates(stdout: str) -> list[str]:
    """The dates `ops backfill` prints, one per indented line."""
    return [line.strip() for line in stdout.splitlines() if line.startswith("  ")]
