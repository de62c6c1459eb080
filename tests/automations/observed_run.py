"""Run a sync DAG with dag.test() in a fresh interpreter, with extra Airflow settings.

Airflow reads some settings once per process: the metrics backend when its stats client is first
built, and OpenLineage when plugins load (the provider registers its listener only if a transport is
configured at that moment). The test session has neither, and must not (normal tests stay quiet), so
the observed run gets an interpreter of its own with the settings in its environment, as a task
process under `make run` or compose does. It inherits the session's environment: metadata DB,
warehouse and the `demo_api` connection to the test's upstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tools import REPO_ROOT

_PROGRAM = """
import sys
from datetime import datetime
from pathlib import Path

from tests.dagrun import parse_dag, run_dag

path, dag_id, logical_date = sys.argv[1:]
run = run_dag(parse_dag(Path(path), dag_id), datetime.fromisoformat(logical_date))
print(f"observed_run state={run.state} run_id={run.run_id}")
sys.exit(0 if run.state == "success" else 1)
"""


def run_sync_in_subprocess(
    dag_file: Path, dag_id: str, logical_date: datetime, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """One dag.test() run of `dag_id` at `logical_date` in a new interpreter with `env` added; raises
    with its output if the run did not succeed."""
    result = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(dag_file), dag_id, logical_date.isoformat()],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"observed run failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result
