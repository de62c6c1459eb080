"""A policy-violating DAG is rejected by the live dag-processor and shows in /api/v2/importErrors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools import REPO_ROOT
from tools.airflow_api import wait_for

FIXTURES = REPO_ROOT / "tests" / "fixtures"

pytestmark = pytest.mark.e2e


def test_violating_dag_is_an_import_error_in_the_live_stack(tmp_path: Path, start_stack) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(FIXTURES / "dags_violating" / "policy_violating_dag.py", dags)
    shutil.copytree(REPO_ROOT / "dags" / "platform", dags / "platform")
    _, api = start_stack(dags)

    errors = wait_for(api.import_errors, timeout=120, what="an import error for the violating DAG")
    by_file = {Path(e["filename"]).name: e["stack_trace"] for e in errors}
    assert "policy_violating_dag.py" in by_file, by_file
    message = by_file["policy_violating_dag.py"]
    assert "AirflowClusterPolicyViolation" in message
    assert "owner" in message
    assert "Runbook" in message or "doc_md" in message

    # The compliant DAG next to it is parsed and registered: the policy rejects only the violator.
    smoke = wait_for(
        lambda: _dag_or_none(api, "platform_smoke"), timeout=60, what="platform_smoke registered"
    )
    assert smoke["dag_id"] == "platform_smoke"
    assert "platform_smoke.py" not in by_file


def _dag_or_none(api, dag_id: str):
    from tools.airflow_api import AirflowApiError

    try:
        return api.dag(dag_id)
    except AirflowApiError:
        return None
