"""Run a DAG in-process with dag.test(), and parse DAG files the way the dag processor does.

run_dag() tests the DAG as it is, deadline included. On Airflow 3.3.2 dag.test() of a DAG with a
`deadline=` crashes when the run succeeds ("can't adapt type 'dict'" in DeadlineAlertModel.get_by_id);
the AirflowFixesPlugin (plugins/batchkit/airflow_fixes.py, install_dag_test_deadline_fix) fixes that in
every process that loads plugins, and run_dag() makes sure plugins are loaded in this one first.
Deadlines (and their alert) firing is proven under a real scheduler and triggerer in tests/e2e.
dag.test() parses the DAG's bundle into the metadata DB first, so the DAG must live in a configured
bundle (the repo's dags/ unless a test swaps it).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DAG


def run_dag(
    dag: DAG,
    logical_date: datetime | None,
    conf: dict[str, Any] | None = None,
    *,
    run_after: datetime | None = None,
) -> DagRun:
    """One dag.test() run of a copy of `dag` (see the module docstring); returns the DagRun.

    `logical_date=None` makes a manual run without a logical date (and so without a data interval),
    triggered at `run_after` (default: now), as `airflow dags trigger` without a date does.
    """
    from airflow import plugins_manager

    _ensure_migrated()
    # dag.test() loads them anyway (deserializing operators asks for their extra links), as the
    # `airflow dags test` CLI does; loading them here makes the fix's presence independent of that.
    plugins_manager.ensure_plugins_loaded()
    testable = copy.deepcopy(dag)
    # DAG.__deepcopy__ shares the Param objects, and dag.test() writes the run's conf into them: without
    # fresh copies one run's conf (dry_run=true) would leak into the next run of the same DAG.
    testable.params = copy.deepcopy(dag.params)
    for task in testable.tasks:
        task.params = copy.deepcopy(task.params)
    return testable.test(logical_date=logical_date, run_conf=conf, run_after=run_after)


_migrated = False


def _ensure_migrated() -> None:
    """dag.test() needs a migrated metadata DB: migrate it once per process if no test asked for the
    `airflow_db` fixture first (a test's outcome must not depend on which test ran before it)."""
    global _migrated
    if _migrated:
        return
    from airflow import settings
    from sqlalchemy import text

    with settings.engine.connect() as conn:
        migrated = conn.execute(text("SELECT to_regclass('task_instance') IS NOT NULL")).scalar()
    if not migrated:
        # This process's metadata DB, even where a test hides it from the tasks' environment.
        url = settings.engine.url.render_as_string(hide_password=False)
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            check=True,
            env={
                **os.environ,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
                "AIRFLOW__CORE__SQL_ALCHEMY_CONN": url,
            },
            capture_output=True,
        )
    _migrated = True


def returned(dag_run: Any, task_id: str) -> Any:
    """What a task returned (its return_value XCom), as stored in the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        )
    return XComModel.deserialize_value(value) if isinstance(value, str | bytes) else value


def parse_dag(path: Path, dag_id: str) -> DAG:
    """Parse one DAG file with a DagBag, as the dag processor does; fail the test on an import error."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=path)
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]
