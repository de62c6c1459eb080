"""platform_cleanup: daily retention for what the batch automations leave in the warehouse and on disk."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, get_current_context, task

from batchkit.dag_factory import dry_run_requested, standard_dag
from batchkit.observability import get_logger, run_fields
from batchkit.report_files import REPORTS_BASE_VARIABLE, configured_reports_base
from batchkit.retention import (
    PARAM_DESCRIPTIONS,
    RetentionPolicy,
    purge_declared_files,
    purge_warehouse,
    sync_targets,
)
from batchkit.taxonomy import Tag

WAREHOUSE_POOL = "warehouse"

DEFAULTS = RetentionPolicy()
DOC = f"""
# platform_cleanup

Removes what is older than its retention age (params, in days; defaults in brackets), measured back
from the run's `run_after`, and logs the count per table (`removed` lines, and the tasks' XComs):

| Task | Removes |
|---|---|
| `purge_warehouse` (pool `warehouse`) | sync staging tables `batch_meta.stg_*` of intervals whose checkpoint was last updated more than `staging_days` [{DEFAULTS.staging_days}] ago (a run that died and was never rerun); rows of `batch_meta.quarantine` [{DEFAULTS.quarantine_days}], `batch_meta.checkpoints` [{DEFAULTS.checkpoint_days}], `batch_meta.side_effects` (the ledger) [{DEFAULTS.ledger_days}], `batch_meta.alert_log` [{DEFAULTS.alert_log_days}] |
| `purge_report_files` | the files each automation declares (`FILE_RETENTION` in `include/<domain>/retention.py`: a folder under `<base>`, the day in a file's name) of days more than their age back, `report_file_days` [{DEFAULTS.report_file_days}] unless declared otherwise; `<base>` and its connection as the reports resolve them (Variable `{REPORTS_BASE_VARIABLE}`, else env; `batchkit.report_files`) |

Logic in `plugins/batchkit/retention.py`; which files exist is declared by their automations, never
listed here. `dry_run=true` counts what each step would remove and removes nothing. A ledger row
removed means a rerun of that old key would perform its action again (e.g. re-send a report older than
`ledger_days`).

Airflow's own metadata (dag runs, task instances, logs, XComs...) is not this DAG's job: its tasks hold
warehouse credentials only, never the metadata DB's. `airflow db clean` is operator maintenance, run as
the metadata DB's role: `make db-clean [DAYS=30] [EXECUTE=1]` locally, the `airflow-db-clean` service
under docker compose (docs/operations.md).

## How to backfill
Nothing to backfill: each run removes what is old relative to itself, and a later run covers what an
earlier one missed (`catchup=False`).

## How to rerun
Clear the failed task. Every step is idempotent: a rerun removes what is still there and old relative
to the same `run_after`, never more.

## Alerts
- `task_failed` on `purge_warehouse`: the warehouse is unreachable or a retention param is invalid.
- `task_failed` on `purge_report_files`: the reports location is unreachable.
- `deadline_missed`: the run was not done 1 h after it was queued.

## Runbook
- Any failure: nothing is half-removed in a way that matters (each table is one statement); clear the
  task. For a first cleanup of a large backlog, trigger with a large age first and lower it step by step.
- `staging_owner_unknown` warning: old checkpoints of a DAG that no longer has a sync file; drop its
  `batch_meta.stg_*` tables by hand if any remain.
- Check before a big change: trigger with `dry_run=true` and read the counts.
"""

log = get_logger(__name__)


def _policy_and_now(context: Any) -> tuple[RetentionPolicy, Any]:
    return RetentionPolicy.from_params(context["params"]), context["dag_run"].run_after


with standard_dag(
    "platform_cleanup",
    owner="platform-team",
    tags=[Tag.DOMAIN_PLATFORM, Tag.KIND_MAINTENANCE, Tag.TIER_3],
    schedule=CronTriggerTimetable("30 4 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    deadline=timedelta(hours=1),
    doc_md=DOC,
    description="Daily retention: staging, quarantine, checkpoints, ledger, alert log, report files.",
    params={
        field.name: Param(
            getattr(DEFAULTS, field.name),
            type="integer",
            minimum=1,
            description=PARAM_DESCRIPTIONS[field.name],
        )
        for field in fields(RetentionPolicy)
    },
):

    @task(task_id="purge_warehouse", pool=WAREHOUSE_POOL)
    def purge_warehouse_leftovers() -> dict[str, int]:
        from batchkit.hooks.warehouse import WarehouseHook

        context = get_current_context()
        policy, now = _policy_and_now(context)
        dry_run = dry_run_requested(context)
        with WarehouseHook().autocommit_connection() as conn:
            removed = purge_warehouse(conn, policy, now=now, targets_by_dag=sync_targets(), dry_run=dry_run)
        for table, count in removed.items():
            log.info("removed", table=table, rows=count, dry_run=dry_run, **run_fields(context))
        return removed

    @task(task_id="purge_report_files")
    def purge_old_report_files() -> dict[str, int]:
        context = get_current_context()
        policy, now = _policy_and_now(context)
        dry_run = dry_run_requested(context)
        removed = purge_declared_files(configured_reports_base(), policy, now=now, dry_run=dry_run)
        for location, count in removed.items():
            log.info("removed", location=location, files=count, dry_run=dry_run, **run_fields(context))
        return removed

    purge_warehouse_leftovers()
    purge_old_report_files()
