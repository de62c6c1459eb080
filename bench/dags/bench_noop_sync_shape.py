"""Airflow DAG for bench.backfill_vs_noop: sales_orders_sync's shape with tasks that do nothing.

The same task ids, dependencies, pools, schedule and house defaults as the sync; every task is a Python
task that returns at once, so timing a backfill of each under the same scheduler separates the sync's
own work from Airflow's per-task overhead. The bench compares both shapes through the REST API before
it measures, so a change to the sync that this file misses stops the bench. Kept under bench/, never
in dags/.
"""

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, chain, task

from batchkit.dag_factory import standard_dag
from batchkit.taxonomy import Tag

# (task_id, pool) of sales_orders_sync, upstream first: batchkit.sync_dag.build_sync_dag. The
# data-quality checks run side by side between the merge and the last check.
PIPELINE = (
    ("extract_stage", "demo_api"),
    ("verify_quarantine", "warehouse"),
    ("merge", "warehouse"),
)
CHECKS = (("check_keys", "warehouse"), ("check_columns", "warehouse"))
LAST = ("check_rows_and_freshness", "warehouse")


@task
def noop() -> None:
    """Does nothing: the task's cost is Airflow's alone."""


with standard_dag(
    "bench_noop_sync_shape",
    owner="sales-data",
    tags=[Tag.DOMAIN_SALES, Tag.KIND_SYNC, Tag.TIER_2],
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    deadline=timedelta(minutes=60),
    doc_md=__doc__ + "\n## Runbook\n- Benchmark only: nothing to do when it fails.\n",
):

    def step(task_id: str, pool: str):
        return noop.override(task_id=task_id, pool=pool)()

    chain(*(step(*t) for t in PIPELINE), [step(*t) for t in CHECKS], step(*LAST))
