"""Run a DAG in-process with dag.test(), and parse DAG files the way the dag processor does.

The Airflow 3.3.2 trap this module works around: `dag.test()` of a DAG that has a `deadline=` crashes
when the run SUCCEEDS. On success DagRun.update_state prunes the run's deadlines and looks up each
entry of `dag.deadline` with DeadlineAlertModel.get_by_id(...). The scheduler's DAG, read from the
metadata DB, holds the ids of DeadlineAlert rows there; the DAG dag.test builds by serializing the SDK
DAG in memory holds each alert's serialized form (a dict) instead, and Postgres rejects it ("can't
adapt type 'dict'"). The real scheduler is not affected.

So run_dag() tests a deep copy of the DAG with `deadline` removed: every task, retry and callback is
the DAG's own, only the deadline bookkeeping is gone. Deadlines (and their alert) are proven under a
real scheduler and triggerer in tests/e2e. dag.test() still parses the DAG's bundle into the metadata
DB first, so the DAG must live in a configured bundle (the repo's dags/ unless a test swaps it).
"""

from __future__ import annotations

import copy
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
    """One dag.test() run of `dag` (without its deadline, see the module docstring); returns the DagRun.

    `logical_date=None` makes a manual run without a logical date (and so without a data interval),
    triggered at `run_after` (default: now), as `airflow dags trigger` without a date does.
    """
    testable = copy.deepcopy(dag)
    testable.deadline = None
    # DAG.__deepcopy__ shares the Param objects, and dag.test() writes the run's conf into them: without
    # fresh copies one run's conf (dry_run=true) would leak into the next run of the same DAG.
    testable.params = copy.deepcopy(dag.params)
    for task in testable.tasks:
        task.params = copy.deepcopy(task.params)
    return testable.test(logical_date=logical_date, run_conf=conf, run_after=run_after)


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
