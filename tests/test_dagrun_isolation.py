"""tests/dagrun.run_dag: one run's conf never leaks into the next run of the same DAG object."""

from __future__ import annotations

from bench.parse_time import DAGS_DIR
from tests.dagrun import parse_dag, run_dag


def test_a_dry_run_does_not_leak_into_the_next_run(airflow_db: str) -> None:
    dag = parse_dag(DAGS_DIR / "platform" / "platform_smoke.py", "platform_smoke")

    dry = run_dag(dag, None, {"dry_run": True})

    assert dry.conf == {"dry_run": True}
    assert dag.params["dry_run"] is False
    assert all(task.params["dry_run"] is False for task in dag.tasks)
