"""The daily sales report as plain functions: which days a run reports, the aggregate, the files, the delivery.

Used by dags/sales/sales_daily_report.py; every function here runs without an Airflow context.

- Which days: a load of [start, end) completes the UTC days whose end (the next midnight) falls in
  (start, end]. The report DAG runs when the syncs' tables change and reports the days completed by the
  sales.orders loads that triggered it (`report_days`); see the DAG's docs for the fallbacks.
- The aggregate (include/sql/reports/daily_sales_aggregate.sql) replaces the day's rows of
  reports.daily_sales in ONE transaction, under a lock per day, so a reader or a concurrent run of the
  same day never sees half a report, and a rerun leaves the table as one run would.
- The files (CSV and HTML) are named after the day only and hold nothing but the day's numbers, so a
  rerun over unchanged data rewrites byte-identical files in the same place.
- The delivery is a side effect keyed by the day (`delivery_key`) through batchkit.ledger.perform_once:
  at most once across retries, clears and reruns, again only with `force=True`.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from airflow.sdk import ObjectStoragePath

from batchkit.ledger import LedgerOutcome, perform_once
from batchkit.sql_files import apply_sql_file, resolve_sql_path

REPORT_DDL = "sql/reports/daily_sales.sql"
AGGREGATE_SQL = "sql/reports/daily_sales_aggregate.sql"
REPORT_NAME = "sales_daily"
# Airflow Variable holding where report files go (any ObjectStoragePath URL); read at run time only.
REPORTS_BASE_VARIABLE = "reports_base_path"
REPORT_DAY_PARAM = "report_day"
CSV_COLUMNS = ("report_day", "country", "orders", "revenue", "customers")
_REPORT_FILE_NAME = re.compile(rf"^{REPORT_NAME}_(\d{{4}}-\d{{2}}-\d{{2}})\.(csv|html)$")
WEBHOOK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class CountrySales:
    country: str
    orders: int
    revenue: Decimal
    customers: int


@dataclass(frozen=True)
class DailySales:
    """One day's report: the rows of reports.daily_sales for `day`, ordered by country."""

    day: date
    by_country: tuple[CountrySales, ...]

    def totals(self) -> CountrySales:
        # A customer has one country, so per-country distinct customers add up to the day's distinct.
        return CountrySales(
            country="total",
            orders=sum(row.orders for row in self.by_country),
            revenue=sum((row.revenue for row in self.by_country), Decimal("0.00")),
            customers=sum(row.customers for row in self.by_country),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON document (an XCom, the webhook payload's body); money as exact decimal strings."""
        return {
            "day": self.day.isoformat(),
            "by_country": [_row_json(row) for row in self.by_country],
            "totals": _row_json(self.totals()),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> DailySales:
        return cls(
            day=date.fromisoformat(document["day"]),
            by_country=tuple(
                CountrySales(
                    country=row["country"],
                    orders=int(row["orders"]),
                    revenue=Decimal(row["revenue"]),
                    customers=int(row["customers"]),
                )
                for row in document["by_country"]
            ),
        )


def _row_json(row: CountrySales) -> dict[str, Any]:
    return {
        "country": row.country,
        "orders": row.orders,
        "revenue": str(row.revenue),
        "customers": row.customers,
    }


# -- which days a run reports ------------------------------------------------------------------------


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def days_completed_by(start: datetime, end: datetime) -> list[date]:
    """The UTC days whose end (the next midnight) falls in (start, end]: the days a load of [start, end)
    completed. A daily load of [D 02:00, D+1 02:00) completes day D; an hourly one completes a day only
    in the hour that crosses midnight."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(f"interval bounds must be timezone-aware: {start!r}, {end!r}")
    days = []
    day = start.astimezone(UTC).date()
    while day_bounds(day)[1] <= end:
        days.append(day)
        day += timedelta(days=1)
    return days


def parse_report_day(value: Any) -> date:
    """A `report_day` param value ("YYYY-MM-DD") as a date; ValueError naming the param otherwise."""
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"param {REPORT_DAY_PARAM!r}: expected a date YYYY-MM-DD, got {value!r}")


def report_days(
    *,
    requested: str | None,
    source_intervals: Sequence[tuple[datetime, datetime]],
    run_at: datetime,
) -> list[date]:
    """The days a run reports, by the first rule that applies:

    1. `requested` (the `report_day` param): that day only;
    2. `source_intervals` (the data intervals of the loads that triggered the run): the days they
       completed, sorted — possibly none, when no load crossed a midnight;
    3. otherwise the UTC day before `run_at` (the run's logical date, else when it was triggered).
    """
    if requested:
        return [parse_report_day(requested)]
    if source_intervals:
        return sorted({day for start, end in source_intervals for day in days_completed_by(start, end)})
    return [run_at.astimezone(UTC).date() - timedelta(days=1)]


# -- the aggregate -----------------------------------------------------------------------------------


def compute_daily_sales(conn: psycopg.Connection, day: date) -> DailySales:
    """The day's sales by country from sales.orders and crm.customers (reads only)."""
    day_start, day_end = day_bounds(day)
    rows = conn.execute(
        resolve_sql_path(AGGREGATE_SQL).read_text(encoding="utf-8"),
        {"day_start": day_start, "day_end": day_end},
    ).fetchall()
    return DailySales(
        day=day,
        by_country=tuple(
            CountrySales(country=country, orders=orders, revenue=revenue, customers=customers)
            for country, orders, revenue, customers in rows
        ),
    )


def replace_daily_sales(conn: psycopg.Connection, day: date, *, run_id: str) -> DailySales:
    """Recompute `day` and replace its rows of reports.daily_sales, all in one transaction."""
    apply_sql_file(conn, REPORT_DDL)
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"batchkit:report:{REPORT_NAME}:{day.isoformat()}",),
        )
        sales = compute_daily_sales(conn, day)
        conn.execute("DELETE FROM reports.daily_sales WHERE report_day = %s", (day,))
        with conn.cursor() as cur:
            cur.executemany(
                """
                INSERT INTO reports.daily_sales (report_day, country, orders, revenue, customers, run_id)
                VALUES (%s, %s, %s, %s, %s, %s)
                """,
                [
                    (day, row.country, row.orders, row.revenue, row.customers, run_id)
                    for row in sales.by_country
                ],
            )
    return sales


# -- the files ---------------------------------------------------------------------------------------


def reports_base(configured: str | None) -> ObjectStoragePath:
    """Where report files go: `configured` (the Variable's URL, e.g. s3://conn_id@bucket/reports) or
    file://$AIRFLOW_HOME/reports."""
    if configured:
        return ObjectStoragePath(configured)
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return ObjectStoragePath((airflow_home / "reports").resolve().as_uri())


def report_folder(base: ObjectStoragePath) -> ObjectStoragePath:
    return base / REPORT_NAME


def report_files(base: ObjectStoragePath, day: date) -> dict[str, ObjectStoragePath]:
    """The day's files by format; the names depend on the day alone, so a rerun overwrites them."""
    return {
        file_format: report_folder(base) / f"{REPORT_NAME}_{day.isoformat()}.{file_format}"
        for file_format in RENDERERS
    }


def report_day_of(file_name: str) -> date | None:
    """The day a report file is for, from its name; None for any other file."""
    match = _REPORT_FILE_NAME.fullmatch(file_name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def render_csv(sales: DailySales) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in sales.by_country:
        writer.writerow((sales.day.isoformat(), row.country, row.orders, row.revenue, row.customers))
    return out.getvalue()


def render_html(sales: DailySales) -> str:
    day = html.escape(sales.day.isoformat())
    totals = sales.totals()
    body = "\n".join(
        f"<tr><td>{html.escape(row.country)}</td><td>{row.orders}</td><td>{row.revenue}</td>"
        f"<td>{row.customers}</td></tr>"
        for row in sales.by_country
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Daily sales {day}</title></head>
<body>
<h1>Daily sales {day} (UTC)</h1>
<p>Orders placed that day, cancelled orders excluded; country from crm.customers.</p>
<table>
<thead><tr><th>Country</th><th>Orders</th><th>Revenue</th><th>Customers</th></tr></thead>
<tbody>
{body}
</tbody>
<tfoot><tr><th>Total</th><th>{totals.orders}</th><th>{totals.revenue}</th><th>{totals.customers}</th></tr></tfoot>
</table>
</body>
</html>
"""


RENDERERS = {"csv": render_csv, "html": render_html}


def write_report_files(base: ObjectStoragePath, sales: DailySales) -> dict[str, str]:
    """Write the day's CSV and HTML (overwriting a previous run's); returns their URLs by format."""
    written = {}
    for file_format, path in report_files(base, sales.day).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(RENDERERS[file_format](sales), encoding="utf-8")
        written[file_format] = str(path)
    return written


# -- the delivery ------------------------------------------------------------------------------------


def delivery_key(day: date) -> str:
    return f"sales_daily_report:{day.isoformat()}:webhook"


def delivery_payload(sales: DailySales, files: Mapping[str, str]) -> dict[str, Any]:
    return {"kind": "sales_daily_report", **sales.to_json(), "files": dict(files)}


def post_to_webhook(http_conn_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """POST `payload` as JSON to the connection's URL; raises on a non-2xx answer. Returns what the
    ledger records about the send."""
    from airflow.providers.http.hooks.http import HttpHook

    response = HttpHook(method="POST", http_conn_id=http_conn_id).run(
        json=dict(payload),
        headers={"Content-Type": "application/json"},
        extra_options={"timeout": WEBHOOK_TIMEOUT_SECONDS},
    )
    return {"http_conn_id": http_conn_id, "status": response.status_code}


def deliver_report(
    conn: psycopg.Connection,
    sales: DailySales,
    files: Mapping[str, str],
    *,
    http_conn_id: str,
    force: bool = False,
    dry_run: bool = False,
) -> LedgerOutcome:
    """Send the day's report to the webhook unless the ledger says it was sent; `force` sends again."""
    payload = delivery_payload(sales, files)
    return perform_once(
        conn,
        delivery_key(sales.day),
        lambda: post_to_webhook(http_conn_id, payload),
        force=force,
        dry_run=dry_run,
    )
