"""platform_smoke: proves the loop (parse, schedule, run, log, alert wiring) with no external system."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import get_current_context, task

from batchkit.dag_factory import standard_dag
from batchkit.observability import get_logger, run_fields
from batchkit.taxonomy import Tag

DOC = """
# platform_smoke

Runs one task that logs its run and data interval. It touches no external system, so when it fails the
platform itself is broken (scheduler, executor, workers or the metadata database), not a source.

- **Inputs:** none. **Outputs:** one structured log line (`smoke_ok`).
- **Schedule:** hourly, no catchup. Trigger it by hand after a deploy.

## Runbook
- Failed: open the task log. An import error means a broken `plugins/batchkit`; "no healthy executor"
  or a task stuck in *queued* means the scheduler or workers are down (`/api/v2/monitor/health`).
- Deadline missed (10 min): the run waited in the queue; check pool slots and executor parallelism.
- Rerun: clear the failed task in the UI; the task has no side effects.
"""

with standard_dag(
    "platform_smoke",
    owner="platform-team",
    tags=[Tag.DOMAIN_PLATFORM, Tag.KIND_SMOKE, Tag.TIER_3],
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    deadline=timedelta(minutes=10),
    doc_md=DOC,
):

    @task
    def smoke() -> dict:
        fields = run_fields(get_current_context())
        get_logger(__name__).info("smoke_ok", **fields)
        return fields

    smoke()
