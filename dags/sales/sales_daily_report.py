"""sales_daily_report: daily sales by country, built when the orders and customers syncs refresh."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, get_current_context, task

from batchkit.alert_channels import REPORTS_SLACK_CONN_ID, REPORTS_WEBHOOK_CONN_ID
from batchkit.assets import table_asset
from batchkit.dag_factory import dry_run_requested, standard_dag
from batchkit.observability import get_logger, run_fields
from batchkit.report_files import (
    REPORTS_BASE_ENV,
    REPORTS_BASE_VARIABLE,
    REPORTS_CONN_ENV,
    REPORTS_CONN_VARIABLE,
    REPORTS_PUBLIC_URL_ENV,
    REPORTS_PUBLIC_URL_VARIABLE,
    configured_public_url,
    configured_reports_base,
    file_url,
)
from batchkit.taxonomy import Tag
from include.sales.daily_report import (
    REPORT_DAY_PARAM,
    TREND_DAYS,
    DailySales,
    DayTotals,
    compute_daily_sales,
    deliver_report,
    read_trend,
    replace_daily_sales,
    report_days,
    report_files,
    write_report_files,
)

ORDERS = table_asset("sales.orders")
CUSTOMERS = table_asset("crm.customers")
WAREHOUSE_POOL = "warehouse"
FORCE_RESEND_PARAM = "force_resend"

log = get_logger(__name__)

DOC = f"""
# sales_daily_report

Daily sales per customer country (orders, revenue, distinct customers) for each UTC day: a table, a CSV
and a standalone HTML page with the {TREND_DAYS}-day trend, announced once on the reports channel.

| | |
|---|---|
| **Inputs** | `sales.orders` (orders placed that day by `order_ts`, cancelled ones excluded) and `crm.customers` (the customer's country; `unknown` when the customer is missing) — SQL in `include/sales/sql/daily_sales_aggregate.sql` |
| **Outputs** | `reports.daily_sales` (one row per day and country, the day's rows replaced in one transaction); `<base>/sales_daily/sales_daily_<day>.csv` (one row per country) and `.html` (totals with day-over-day change, a chart of the last {TREND_DAYS} days' orders and revenue, the country table and a day-by-day table; CSS and chart inline, the file stands alone); one JSON POST per day to connection `{REPORTS_WEBHOOK_CONN_ID}` (plus a Slack message on `{REPORTS_SLACK_CONN_ID}` when it has a token) with the numbers, a one-line summary and a link to the HTML — never to an alerts connection |
| **Schedule** | when both Assets `{ORDERS.uri}` and `{CUSTOMERS.uri}` were updated since the last run (the syncs emit them after their checks) |
| **Owner** | sales-data |

`<base>`, read when the task runs (never at parse time), is the first of: Variable
`{REPORTS_BASE_VARIABLE}` (or `AIRFLOW_VAR_{REPORTS_BASE_VARIABLE.upper()}`), env `{REPORTS_BASE_ENV}`,
`file://$AIRFLOW_HOME/reports`. Any ObjectStoragePath URL: `file:///srv/reports`, or S3-compatible
`s3://bucket/prefix` with the connection in Variable `{REPORTS_CONN_VARIABLE}` / env `{REPORTS_CONN_ENV}`
(an `aws` connection; `endpoint_url` in its extra for MinIO and the like) or written as
`s3://conn_id@bucket/prefix` (the amazon provider and `s3fs`, both installed; files stored with their
content type, so the HTML opens in a browser; docs/operations.md "Report files on S3"). `make run`
writes to `.local/airflow/reports`; compose to the
`airflow-reports` volume at `/opt/airflow/reports`. File names depend on the day only: a rerun
overwrites them.

The message links to the HTML: under Variable `{REPORTS_PUBLIC_URL_VARIABLE}` / env
`{REPORTS_PUBLIC_URL_ENV}` when set (the browsable URL of `<base>`), else its `s3://` / `http(s)://`
URL, and for local files the path on the machine that ran `render`.

**Which days a run reports** (task `report_days`, first rule that applies):
1. the `{REPORT_DAY_PARAM}` param (`YYYY-MM-DD`): that day only;
2. the days completed by the `sales.orders` loads that triggered the run: a load of [start, end)
   completes each UTC day whose end (midnight) lies in (start, end] — the 02:00 daily sync of
   [D 02:00, D+1 02:00) completes day D, and a backfill of the sync reports each day it reloaded;
3. otherwise (manual run, or events from outside Airflow) the UTC day before the run's logical date,
   or before the moment it was triggered.
Orders drive the days; customers only have to be fresh (the schedule waits for both).

Tasks: `report_days` -> `aggregate` (pool `warehouse`; also reads the previous {TREND_DAYS - 1} days'
totals from `reports.daily_sales` for the trend — a day never reported shows as "no report") ->
`render` (files) -> `deliver` (pool `warehouse`: the ledger holds its row lock while posting).
`dry_run=true` computes and logs the rows, the trend, the file paths and whether each day would be
sent, and writes and sends nothing.

## How to backfill
The DAG runs on Assets, so `airflow backfill` does not apply: trigger one run per day with
`{{"{REPORT_DAY_PARAM}": "YYYY-MM-DD"}}` (UI: *Trigger* with config; CLI:
`airflow dags trigger sales_daily_report -c '{{"{REPORT_DAY_PARAM}": "2026-03-01"}}'`). A backfill of a
sync DAG triggers this DAG by itself and reports the days it reloaded. Days already sent are not sent
again unless `{FORCE_RESEND_PARAM}` is true. Backfill oldest first: each day's trend reads the days
before it from `reports.daily_sales`.

## How to rerun
Clear the run (or the failed task with downstream). `aggregate` replaces the day's rows, `render`
overwrites the files, `deliver` skips every day the ledger (`batch_meta.side_effects`, key
`sales_daily_report:<day>:webhook`) marks as sent. To send corrected numbers again, trigger with
`{REPORT_DAY_PARAM}` and `{FORCE_RESEND_PARAM}=true`.

## Alerts
- `task_failed` on `aggregate`: the warehouse is unreachable or a source table is missing.
- `task_failed` on `render`: the reports location is unreachable or not writable.
- `task_failed` on `deliver`: the reports webhook refused or timed out on every retry, or connection
  `{REPORTS_WEBHOOK_CONN_ID}` is missing or points at the alerts webhook (refused on purpose: reports
  never go to the alerts channel); nothing was marked sent.
- `deadline_missed`: the run was not done 30 min after it was queued (pool `warehouse` full, or the
  webhook hanging).

## Runbook
- Where is the report? The `render` log line `report_files` and the delivery message give its URL or
  path. `make run`: `.local/airflow/reports/sales_daily/`; compose: `docker compose cp
  airflow-scheduler:/opt/airflow/reports ./reports` (with Celery, from `airflow-worker`); S3: the
  bucket under `{REPORTS_BASE_VARIABLE}`.
- `deliver` failed: check connection `{REPORTS_WEBHOOK_CONN_ID}` (its own URL, not the alerts one) and
  the receiver; `last_error` on the day's ledger row says what happened. Clear `deliver`: it sends the
  days not yet sent, once. `make run` and compose point it at the demo upstream's inbox
  (`GET /reports` with the demo token lists what arrived).
- Numbers wrong because a sync loaded late or was corrected: trigger with `{REPORT_DAY_PARAM}` and, to
  notify again, `{FORCE_RESEND_PARAM}=true`. Later days' trend charts pick the corrected total up
  only when they are rendered again.
- `render` failed: fix Variable `{REPORTS_BASE_VARIABLE}` / env `{REPORTS_BASE_ENV}` (or the storage
  connection, or the volume's permissions), clear `render` with downstream.
- Trend shows "no report" for a day: that day was never aggregated; trigger it with
  `{REPORT_DAY_PARAM}`, then rerun the later day.
- Orders under country `unknown`: their customers are not in `crm.customers` yet; check
  `crm_customers_sync`, then rerun the day.

## Code
The report's logic is `include/sales/daily_report.py` (package `include.sales`, owned by sales-data:
under include/ rather than dags/, where every file is parsed as a DAG); what every report shares is the
platform library's (`batchkit.report_files`, `report_charts`, `report_delivery`). `platform_cleanup`
removes files older than `report_file_days` as `include/sales/retention.py` declares.
"""


def _source_intervals(context: Mapping[str, Any]) -> list[tuple[datetime, datetime]]:
    """Data intervals of the sync runs whose sales.orders events triggered this run."""
    intervals = []
    for event in context["triggering_asset_events"].get(ORDERS, ()):
        source_run = event.source_dag_run
        if source_run is not None and source_run.data_interval_start and source_run.data_interval_end:
            intervals.append((source_run.data_interval_start, source_run.data_interval_end))
    return intervals


def _warehouse() -> Any:
    from batchkit.hooks.warehouse import WarehouseHook

    return WarehouseHook().autocommit_connection()


with standard_dag(
    "sales_daily_report",
    owner="sales-data",
    tags=[Tag.DOMAIN_SALES, Tag.KIND_REPORT, Tag.TIER_2],
    schedule=[ORDERS, CUSTOMERS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    deadline=timedelta(minutes=30),
    doc_md=DOC,
    description="Daily sales by country from sales.orders and crm.customers: table, CSV, HTML with trend chart, reports channel.",
    params={
        REPORT_DAY_PARAM: Param(
            None,
            type=["null", "string"],
            format="date",
            description="Report this UTC day (YYYY-MM-DD) instead of the days the triggering loads completed.",
        ),
        FORCE_RESEND_PARAM: Param(
            False, type="boolean", description="Send the report again even if the ledger says it was sent."
        ),
    },
):

    @task(task_id="report_days")
    def resolve_report_days() -> list[str]:
        context = get_current_context()
        days = report_days(
            requested=context["params"][REPORT_DAY_PARAM],
            source_intervals=_source_intervals(context),
            run_at=context.get("logical_date") or context["dag_run"].run_after,
        )
        log.info("report_days", days=[day.isoformat() for day in days], **run_fields(context))
        return [day.isoformat() for day in days]

    @task(pool=WAREHOUSE_POOL)
    def aggregate(days: list[str]) -> list[dict[str, Any]]:
        context = get_current_context()
        dry_run = dry_run_requested(context)
        reports = []
        with _warehouse() as conn:
            for day in map(date.fromisoformat, days):
                sales = (
                    compute_daily_sales(conn, day)
                    if dry_run
                    else replace_daily_sales(conn, day, run_id=context["run_id"])
                )
                trend = read_trend(conn, sales)
                log.info("daily_sales", dry_run=dry_run, **sales.to_json(), **run_fields(context))
                reports.append({**sales.to_json(), "trend": [point.to_json() for point in trend]})
        return reports

    @task
    def render(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        context = get_current_context()
        dry_run = dry_run_requested(context)
        base = configured_reports_base()
        rendered = []
        for document in reports:
            sales = DailySales.from_json(document)
            trend = [DayTotals.from_json(point) for point in document["trend"]]
            if dry_run:
                files = {fmt: file_url(path) for fmt, path in report_files(base, sales.day).items()}
            else:
                files = write_report_files(base, sales, trend)
            log.info("report_files", day=document["day"], files=files, dry_run=dry_run, **run_fields(context))
            rendered.append({**document, "files": files})
        return rendered

    @task(pool=WAREHOUSE_POOL)
    def deliver(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
        context = get_current_context()
        dry_run = dry_run_requested(context)
        public_base = configured_public_url()
        outcomes = []
        with _warehouse() as conn:
            for document in rendered:
                outcome = deliver_report(
                    conn,
                    DailySales.from_json(document),
                    document["files"],
                    trend=[DayTotals.from_json(point) for point in document["trend"]],
                    public_base=public_base,
                    force=context["params"][FORCE_RESEND_PARAM],
                    dry_run=dry_run,
                )
                log.info(
                    "report_delivery",
                    day=document["day"],
                    key=outcome.key,
                    status=str(outcome.status),
                    already_sent=outcome.already_done,
                    attempts=outcome.attempts,
                    **run_fields(context),
                )
                outcomes.append(
                    {"day": document["day"], "status": str(outcome.status), "attempts": outcome.attempts}
                )
        return outcomes

    deliver(render(aggregate(resolve_report_days())))
