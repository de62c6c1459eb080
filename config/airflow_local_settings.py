"""Cluster policies: the DAG rules of batchkit.policy, enforced live by every Airflow component.

Airflow imports this module at start-up (it is on sys.path through $AIRFLOW_HOME/config or PYTHONPATH) after
putting plugins/ on sys.path, so the rules come from the shared package the tests also use. A violation
makes the DAG file an import error, listed in the UI and in /api/v2/importErrors with every broken rule.
"""

from __future__ import annotations

from typing import Any

from airflow.exceptions import AirflowClusterPolicyViolation

from batchkit.policy import dag_problems, describe, task_problems


def dag_policy(dag: Any) -> None:
    problems = dag_problems(dag)
    for task in dag.tasks:
        problems.extend(f"task {task.task_id!r}: {problem}" for problem in task_problems(task))
    if problems:
        raise AirflowClusterPolicyViolation(describe(f"DAG {dag.dag_id!r} ({dag.fileloc})", problems))
