"""One sync DAG from its YAML file: stage -> verify/quarantine -> merge -> data-quality checks -> Asset.

A DAG file in dags/<domain>/<dag_id>.py is two lines: it calls `sync_dag(__file__)`, which reads
include/automations/<dag_id>.yaml (the only I/O at parse time), validates it, and builds the DAG with
standard_dag's house defaults. A file that does not validate raises SyncSpecError naming the file and
field, so that DAG file alone becomes an import error.

Each run owns [data_interval_start, data_interval_end) of a CronDataIntervalTimetable. A manual run
without a logical date loads the last complete interval before it was triggered
(batchkit.intervals.task_interval); the checks read the interval the merge actually loaded from its XCom.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable

from batchkit.assets import table_asset
from batchkit.dag_factory import standard_dag
from batchkit.operators.quality import SQLColumnCheckOperator, SQLTableCheckOperator
from batchkit.operators.sync import (
    IntervalSource,
    MergeIntervalOperator,
    StageIntervalOperator,
    VerifyIntervalOperator,
)
from batchkit.sync_spec import SyncSpec, load_spec, spec_path

SYNC_KEY = "sync"
MERGED_INTERVAL = "ti.xcom_pull(task_ids='merge')"


def sync_dag(dag_file: str | Path) -> DAG:
    """The DAG declared by include/automations/<stem of dag_file>.yaml."""
    spec = load_spec(spec_path(Path(dag_file).stem))
    return build_sync_dag(spec)


def build_sync_dag(spec: SyncSpec) -> DAG:
    target = spec.target_spec()
    source = spec.source
    common = {
        "source": IntervalSource(
            http_conn_id=source.conn_id,
            endpoint=source.endpoint,
            pagination=source.pagination,
            contract=spec.record_contract(),
            interval_params=(source.interval_params.start, source.interval_params.end),
            query_params=source.params,
            retry_policy=source.retry.policy(),
            max_concurrency=source.max_concurrency,
        ),
        "target": target,
        "sync_key": SYNC_KEY,
        "warehouse_conn_id": spec.target.conn_id,
        "max_quarantine_ratio": spec.max_quarantine_ratio,
    }
    with standard_dag(
        spec.dag_id,
        owner=spec.owner,
        tags=spec.tags,
        schedule=CronDataIntervalTimetable(spec.schedule.cron, timezone=spec.schedule.timezone),
        start_date=spec.start_datetime,
        catchup=spec.schedule.catchup,
        max_active_runs=spec.schedule.max_active_runs,
        deadline=spec.deadline,
        retries=spec.retries,
        retry_delay=spec.retry_delay,
        doc_md=sync_doc_md(spec),
        description=spec.description,
        alert_route=spec.alerts.route(),
    ) as dag:
        # Where a task runs is decided by what it waits on: the upstream API or the warehouse.
        on_source = {"pool": source.pool, "queue": str(source.queue)}
        on_warehouse = {"pool": spec.target.pool, "queue": str(spec.target.queue)}
        extract_stage = StageIntervalOperator(task_id="extract_stage", **on_source, **common)
        verify_quarantine = VerifyIntervalOperator(task_id="verify_quarantine", **on_warehouse, **common)
        merge = MergeIntervalOperator(task_id="merge", **on_warehouse, **common)
        interval_column = spec.target.interval_column
        in_interval = (
            f"{interval_column} >= '{{{{ {MERGED_INTERVAL}['interval_start'] }}}}'::timestamptz "
            f"AND {interval_column} < '{{{{ {MERGED_INTERVAL}['interval_end'] }}}}'::timestamptz"
        )
        # A failing check is bad data: a retry would check the same rows again, so fail at once
        # (common-sql's AirflowFailException). A check that cannot run (connection, SQL) is retried.
        checks_fail_for_good = {"retry_on_failure": False}
        check_keys = SQLColumnCheckOperator(
            task_id="check_keys",
            conn_id=spec.target.conn_id,
            **on_warehouse,
            **checks_fail_for_good,
            table=target.table,
            column_mapping={column: {"null_check": {"equal_to": 0}} for column in target.key},
            partition_clause=in_interval,
        )
        column_checks = spec.quality.column_mapping()
        check_columns = (
            SQLColumnCheckOperator(
                task_id="check_columns",
                conn_id=spec.target.conn_id,
                **on_warehouse,
                table=target.table,
                column_mapping=column_checks,
                partition_clause=in_interval,
            )
            if column_checks
            else None
        )
        interval_checks = {
            name: {"check_statement": statement, "partition_clause": in_interval}
            for name, statement in spec.quality.table_checks().items()
        }
        check_rows_and_freshness = SQLTableCheckOperator(
            task_id="check_rows_and_freshness",
            conn_id=spec.target.conn_id,
            **on_warehouse,
            **checks_fail_for_good,
            table=target.table,
            checks={
                **interval_checks,
                "freshness": {
                    "check_statement": (
                        f"MAX({interval_column}) >= '{{{{ {MERGED_INTERVAL}['interval_end'] }}}}'::timestamptz"
                        f" - interval '{spec.quality.max_staleness_hours} hours'"
                    ),
                },
            },
            outlets=[table_asset(target.table, conn_id=spec.target.conn_id)],
            counts_from="merge",
        )
        checks = [check_keys, check_columns] if check_columns else [check_keys]
        extract_stage >> verify_quarantine >> merge >> checks >> check_rows_and_freshness
    return dag


def tier_channels(tags: list[str]) -> str:
    """`tier:2 -> slack`: the alert channels batchkit.alert_channels.TIER_CHANNELS gives the DAG's tier."""
    from batchkit.alert_channels import TIER_CHANNELS

    tier = next((tag for tag in tags if tag in TIER_CHANNELS), None)
    return f"{tier} -> {' + '.join(TIER_CHANNELS[tier])}" if tier else "no tier tag"


def quality_summary(spec: SyncSpec) -> str:
    """The declared checks in one line, by task: what a failing check's name in an alert refers to."""
    columns = [
        f"{column}: {', '.join(sorted([*checks.column_mapping(), *(['accepted_values'] if checks.accepted_values else [])]))}"
        for column, checks in spec.quality.columns.items()
    ]
    table = [*spec.quality.table_checks(), "freshness"]
    parts = [f"`check_keys`: {', '.join(spec.target_spec().key)} not null"]
    if spec.quality.column_mapping():
        parts.append(f"`check_columns`: {'; '.join(columns)}")
    parts.append(f"`check_rows_and_freshness`: {', '.join(table)}")
    return "; ".join(parts)


def sync_doc_md(spec: SyncSpec) -> str:
    """The DAG's docs, from its YAML: purpose, inputs/outputs, backfill, rerun, alerts, runbook."""
    # The table and key are the contract's (the YAML may leave them out): read them from its TARGET.
    target, source, declared = spec.target, spec.source, spec.target_spec()
    return f"""# {spec.dag_id}

{spec.description}

Declared in `include/automations/{spec.dag_id}.yaml`; contract `include/contracts/{source.contract}.py`.

| | |
|---|---|
| **Input** | `GET {source.endpoint}` on connection `{source.conn_id}` ({source.pagination.style} pagination), records with `{source.interval_params.start}` <= t < `{source.interval_params.end}` |
| **Output** | `{declared.table}` ({target.merge} on {", ".join(declared.key)}), Asset `{table_asset(declared.table, conn_id=target.conn_id).uri}` |
| **Rejects** | `batch_meta.quarantine` (raw record + error); the run fails without retry above {spec.max_quarantine_ratio:.0%} |
| **Schedule** | `{spec.schedule.cron}` ({spec.schedule.timezone}), each run owns [data_interval_start, data_interval_end) |
| **Owner** | {spec.owner} |

Tasks: `extract_stage` (pages -> validate -> staging + quarantine, checkpointed per page) ->
`verify_quarantine` (received = loaded + quarantined, ratio) -> `merge` (one transaction) ->
`check_keys`{", `check_columns`" if spec.quality.columns else ""}, `check_rows_and_freshness` (at least {spec.quality.min_rows} rows in the interval; newest
`{target.interval_column}` within {spec.quality.max_staleness_hours} h of the interval end) -> the Asset.
Data-quality checks of the interval's rows (`quality:` in the YAML; results in `batch_meta.quality_results`):
{quality_summary(spec)}.
A manual run without a logical date loads the last complete interval before it was triggered.
`dry_run=true` validates every page and writes nothing.

## How to backfill
`make backfill DAG={spec.dag_id} FROM=YYYY-MM-DD TO=YYYY-MM-DD` prints the runs it would create; add
`EXECUTE=1` to create them (UI: *Trigger -> Backfill*). Use reprocess behaviour *completed* to reload
intervals: each reload replaces the interval's data, it never appends.

## How to rerun
Clear the failed task *with downstream* (`make clear-failed DAG={spec.dag_id}`), whichever it is.
`extract_stage` resumes after its last committed page; `verify_quarantine` and `merge` fetch the
interval again themselves if its staging was lost (a Postgres crash restart empties it); `merge` is one
transaction, so a failed merge left nothing half-written, and a merge that already succeeded is not
repeated. A backfill may run beside the scheduled runs: a run waits for another run of the same
interval, and a merge never replaces a row with an older version of it.

## Alerts
Routed by the DAG's tier ({tier_channels(spec.tags)}); one alert per task and error signature within
the dedup window (60 min by default), so a new kind of failure still alerts.
- `task_failed`: a task failed its last retry. Transient HTTP errors were already retried with backoff
  inside each try (for up to {source.retry.budget_seconds:g} s) and by Airflow; this is persistent.
- `deadline_missed`: the run was not done {spec.deadline_minutes} min after it was queued.

## Runbook
{spec.runbook}
"""
