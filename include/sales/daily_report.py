"""The daily sales report as plain functions: which days a run reports, the aggregate, the files, the delivery.

Used by dags/sales/sales_daily_report.py; every function here runs without an Airflow context. What
any report shares (where files go, writing them, chart style, delivery through the ledger, retention)
is the platform library's: batchkit.report_files, batchkit.report_charts, batchkit.report_delivery.

- Which days: a load of [start, end) completes the UTC days whose end (the next midnight) falls in
  (start, end]. The report DAG runs when the syncs' tables change and reports the days completed by the
  sales.orders loads that triggered it (`report_days`); see the DAG's docs for the fallbacks.
- The aggregate (include/sales/sql/daily_sales_aggregate.sql) replaces the day's rows of
  reports.daily_sales in ONE transaction, under a lock per day, so a reader or a concurrent run of the
  same day never sees half a report, and a rerun leaves the table as one run would.
- The files (CSV and HTML, in the folder `sales_daily` under the reports base) are named after the day
  only and hold nothing but the day's numbers and the trend of the TREND_DAYS days up to it, so a rerun
  over unchanged data rewrites byte-identical files in the same place. The HTML stands alone: inline
  CSS, and the trend chart (matplotlib, batchkit.report_charts) as inline SVG.
- The delivery is keyed by the day (`delivery_key`): at most once across retries, clears and reruns,
  again only with `force=True`; a one-line summary and a link to the HTML, to the reports target.
- Retention: include/sales/retention.py declares the files to platform_cleanup (batchkit.retention).
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from airflow.sdk import ObjectStoragePath

from batchkit.ledger import LedgerOutcome
from batchkit.report_charts import chart_style, inline_svg
from batchkit.report_delivery import deliver_once
from batchkit.report_files import dated_file_name, day_of_dated_file, public_link, write_files
from batchkit.sql_files import apply_sql_file, resolve_sql_path

# Under include/ (batchkit.sql_files.include_dir), next to this module.
REPORT_DDL = "sales/sql/daily_sales.sql"
AGGREGATE_SQL = "sales/sql/daily_sales_aggregate.sql"
# The report's name: its folder under the reports base, its file names' prefix, its lock's name.
REPORT_NAME = "sales_daily"
REPORT_FORMATS = ("csv", "html")
# Days in the HTML's trend chart and table, ending with the report day.
TREND_DAYS = 14
REPORT_DAY_PARAM = "report_day"
CSV_COLUMNS = ("report_day", "country", "orders", "revenue", "customers")


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


# -- the trend ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayTotals:
    """One day of the trend: the day's totals, or None for a day never reported (no row in the table)."""

    day: date
    orders: int | None
    revenue: Decimal | None

    @property
    def reported(self) -> bool:
        return self.orders is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "orders": self.orders,
            "revenue": None if self.revenue is None else str(self.revenue),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> DayTotals:
        return cls(
            day=date.fromisoformat(document["day"]),
            orders=None if document.get("orders") is None else int(document["orders"]),
            revenue=None if document.get("revenue") is None else Decimal(document["revenue"]),
        )


@dataclass(frozen=True)
class Change:
    """Day-over-day change of one measure: None fields when there is nothing to compare with."""

    delta: Decimal | None
    percent: Decimal | None

    @classmethod
    def between(cls, current: Decimal | int | None, previous: Decimal | int | None) -> Change:
        if current is None or previous is None:
            return cls(None, None)
        delta = Decimal(current) - Decimal(previous)
        percent = None if previous == 0 else (delta * 100 / Decimal(previous)).quantize(Decimal("0.1"))
        return cls(delta, percent)

    def describe(self, money: bool = False) -> str:
        """`+12 (+5.3%)`, `-3.50 (-1.2%)`, `+5 (new)` (previous day zero), `n/a` (no previous day)."""
        if self.delta is None:
            return "n/a"
        delta = f"{self.delta:+,.2f}" if money else f"{self.delta:+,.0f}"
        return f"{delta} ({'new' if self.percent is None else f'{self.percent:+}%'})"

    def to_json(self) -> dict[str, Any]:
        return {
            "delta": None if self.delta is None else str(self.delta),
            "percent": None if self.percent is None else str(self.percent),
        }


def read_trend(conn: psycopg.Connection, sales: DailySales, days: int = TREND_DAYS) -> list[DayTotals]:
    """The `days` days ending with `sales.day`, oldest first: earlier days from reports.daily_sales (None
    where a day was never reported), the last one from `sales` itself, so a dry run's trend ends with
    the numbers it just computed. Reads only."""
    first = sales.day - timedelta(days=days - 1)
    known: dict[date, tuple[int, Decimal]] = {}
    if conn.execute("SELECT to_regclass('reports.daily_sales')").fetchone()[0] is not None:
        rows = conn.execute(
            """
            SELECT report_day, sum(orders)::bigint, sum(revenue)
              FROM reports.daily_sales
             WHERE report_day >= %s AND report_day < %s
             GROUP BY report_day
            """,
            (first, sales.day),
        ).fetchall()
        known = {day: (int(orders), Decimal(revenue)) for day, orders, revenue in rows}
    trend = [
        DayTotals(day, *known.get(day, (None, None)))
        for day in (first + timedelta(days=offset) for offset in range(days - 1))
    ]
    totals = sales.totals()
    return [*trend, DayTotals(sales.day, totals.orders, totals.revenue)]


def day_over_day(trend: Sequence[DayTotals]) -> dict[str, Change]:
    """The last day of `trend` against the one before: {"orders": Change, "revenue": Change}."""
    if not trend:
        return {"orders": Change(None, None), "revenue": Change(None, None)}
    previous = trend[-2] if len(trend) > 1 else DayTotals(trend[-1].day, None, None)
    return {
        "orders": Change.between(trend[-1].orders, previous.orders),
        "revenue": Change.between(trend[-1].revenue, previous.revenue),
    }


def summary_line(sales: DailySales, trend: Sequence[DayTotals]) -> str:
    """The delivery message: `Sales 2026-03-01: 6 orders, revenue 368.84 (+12.50 (+3.5%) vs 2026-02-28)`."""
    totals = sales.totals()
    line = f"Sales {sales.day.isoformat()}: {totals.orders:,} orders, revenue {totals.revenue:,.2f}"
    change = day_over_day(trend)["revenue"]
    if change.delta is not None:
        line += f" ({change.describe(money=True)} vs {(sales.day - timedelta(days=1)).isoformat()})"
    return line


# -- the files ---------------------------------------------------------------------------------------


def report_folder(base: ObjectStoragePath) -> ObjectStoragePath:
    return base / REPORT_NAME


def report_files(base: ObjectStoragePath, day: date) -> dict[str, ObjectStoragePath]:
    """The day's files by format; the names depend on the day alone, so a rerun overwrites them."""
    return {
        file_format: report_folder(base) / dated_file_name(REPORT_NAME, day, file_format)
        for file_format in REPORT_FORMATS
    }


def report_link(html_url: str, *, public_base: str | None = None) -> str:
    """What the delivery message links to (batchkit.report_files.public_link in the report's folder)."""
    return public_link(html_url, folder=REPORT_NAME, public_base=public_base)


def report_day_of(file_name: str) -> date | None:
    """The day a report file is for, from its name; None for any other file."""
    return day_of_dated_file(file_name, prefix=REPORT_NAME, formats=REPORT_FORMATS)


def render_csv(sales: DailySales) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in sales.by_country:
        writer.writerow((sales.day.isoformat(), row.country, row.orders, row.revenue, row.customers))
    return out.getvalue()


def money(value: Decimal) -> str:
    """1234.5 -> `1,234.50`: how the HTML shows revenue."""
    return f"{value:,.2f}"


def render_trend_svg(trend: Sequence[DayTotals]) -> str:
    """The trend chart as an inline <svg> element: orders (bars) and revenue (line) per day, the report
    day highlighted and labelled with its day-over-day change. Deterministic (batchkit.report_charts)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import StrMethodFormatter

    days = [point.day for point in trend]
    x = range(len(trend))
    orders = [point.orders or 0 for point in trend]
    revenue = [float(point.revenue) if point.revenue is not None else float("nan") for point in trend]
    change = day_over_day(trend)
    with chart_style():
        figure = Figure(figsize=(8.0, 3.4), layout="constrained")
        bars = figure.add_subplot()
        colors = [_ACCENT if i == len(trend) - 1 else _MUTED for i in x]
        bars.bar(x, orders, color=colors, width=0.7, label="orders")
        for i, point in enumerate(trend):
            if not point.reported:
                bars.text(
                    i, 0, "no report", rotation=90, ha="center", va="bottom", color="#9aa0a6", fontsize=7
                )
        bars.set_ylabel("orders")
        bars.set_ylim(bottom=0)
        bars.yaxis.get_major_locator().set_params(integer=True)
        line = bars.twinx()
        line.spines["right"].set_visible(True)
        line.plot(x, revenue, color=_LINE, marker="o", markersize=3.5, linewidth=1.8, label="revenue")
        line.set_ylabel("revenue")
        line.set_ylim(bottom=0)
        line.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        step = max(1, len(trend) // 7)
        ticks = list(range(len(trend) - 1, -1, -step))[::-1]  # always label the report day
        bars.set_xticks(ticks, [days[i].strftime("%b %d") for i in ticks])
        bars.set_title(
            f"Last {len(trend)} days — {days[-1].isoformat()}: orders {change['orders'].describe()}, "
            f"revenue {change['revenue'].describe(money=True)} vs the day before",
            loc="left",
            fontsize=9,
        )
        figure.legend(loc="outside lower center", ncols=2, frameon=False)
        return inline_svg(figure)


def render_html(sales: DailySales, trend: Sequence[DayTotals] = ()) -> str:
    trend = list(trend) or [DayTotals(sales.day, sales.totals().orders, sales.totals().revenue)]
    day = html.escape(sales.day.isoformat())
    totals = sales.totals()
    change = day_over_day(trend)
    revenue_total = totals.revenue or Decimal("0")

    def share(row: CountrySales) -> str:
        return f"{row.revenue * 100 / revenue_total:.1f}%" if revenue_total else "–"

    rows = (
        "\n".join(
            f'<tr><td>{html.escape(row.country)}</td><td class="num">{row.orders}</td>'
            f'<td class="num">{money(row.revenue)}</td><td class="num">{share(row)}</td>'
            f'<td class="num">{row.customers}</td></tr>'
            for row in sales.by_country
        )
        or '<tr><td colspan="5" class="empty">No orders that day.</td></tr>'
    )
    trend_rows = []
    for previous, point in zip([None, *trend[:-1]], trend, strict=True):
        if point.reported:
            dod_orders = Change.between(point.orders, previous.orders if previous else None).describe()
            dod_revenue = Change.between(point.revenue, previous.revenue if previous else None).describe(True)
            cells = (
                f'<td class="num">{point.orders}</td><td class="num">{dod_orders}</td>'
                f'<td class="num">{money(point.revenue)}</td><td class="num">{dod_revenue}</td>'
            )
        else:
            cells = '<td colspan="4" class="empty">no report for this day</td>'
        trend_rows.append(f"<tr><td>{point.day.isoformat()}</td>{cells}</tr>")
    kpis = "".join(
        f'<div class="kpi"><div class="label">{label}</div><div class="value">{value}</div>'
        f'<div class="change {_direction(delta)}">{html.escape(text)}</div></div>'
        for label, value, delta, text in (
            (
                "Orders",
                f"{totals.orders:,}",
                change["orders"].delta,
                f"{change['orders'].describe()} vs day before",
            ),
            (
                "Revenue",
                money(totals.revenue),
                change["revenue"].delta,
                f"{change['revenue'].describe(money=True)} vs day before",
            ),
            ("Customers", f"{totals.customers:,}", None, "distinct, that day"),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Daily sales {day}</title>
<style>
{_CSS}
</style>
</head>
<body>
<main>
<h1>Daily sales {day} <small>UTC</small></h1>
<p class="lead">Orders placed that day, cancelled orders excluded; country from crm.customers.</p>
<section class="kpis">{kpis}</section>
<section>
<h2>Trend, last {len(trend)} days</h2>
<figure class="chart">
{render_trend_svg(trend)}
</figure>
</section>
<section>
<h2>By country</h2>
<table class="by-country">
<thead><tr><th>Country</th><th class="num">Orders</th><th class="num">Revenue</th><th class="num">Share of revenue</th><th class="num">Customers</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot><tr><th>Total</th><th class="num">{totals.orders}</th><th class="num">{money(totals.revenue)}</th><th class="num">{"100.0%" if revenue_total else "–"}</th><th class="num">{totals.customers}</th></tr></tfoot>
</table>
</section>
<section>
<h2>Day by day</h2>
<table class="trend">
<thead><tr><th>Day</th><th class="num">Orders</th><th class="num">Change</th><th class="num">Revenue</th><th class="num">Change</th></tr></thead>
<tbody>
{chr(10).join(trend_rows)}
</tbody>
</table>
</section>
<footer>sales_daily_report · reports.daily_sales · the same numbers as {REPORT_NAME}_{day}.csv</footer>
</main>
</body>
</html>
"""


def _direction(delta: Decimal | None) -> str:
    if delta is None or delta == 0:
        return "flat"
    return "up" if delta > 0 else "down"


_ACCENT = "#1a73e8"
_MUTED = "#a8c7fa"
_LINE = "#e8710a"
_CSS = """\
:root { color-scheme: light; }
body { margin: 0; background: #f6f8fa; color: #1f2328;
  font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 880px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; } h1 small { color: #656d76; font-size: 14px; font-weight: normal; }
h2 { font-size: 16px; margin: 28px 0 8px; }
.lead { color: #656d76; margin: 0 0 16px; }
.kpis { display: flex; gap: 12px; flex-wrap: wrap; }
.kpi { flex: 1 1 180px; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 16px; }
.kpi .label { color: #656d76; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.kpi .value { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.change { font-size: 12px; } .change.up { color: #1a7f37; } .change.down { color: #cf222e; }
.change.flat { color: #656d76; }
figure.chart { margin: 0; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 8px; }
figure.chart svg { width: 100%; height: auto; display: block; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid #d0d7de; }
th, td { padding: 6px 12px; border-bottom: 1px solid #eaeef2; text-align: left; }
thead th { background: #f6f8fa; font-size: 12px; color: #656d76; text-transform: uppercase; }
tbody tr:nth-child(even) { background: #fafbfc; }
tfoot th { border-top: 2px solid #d0d7de; border-bottom: 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.empty { color: #8c959f; font-style: italic; }
footer { color: #8c959f; font-size: 12px; margin-top: 24px; }
@media print { body { background: #fff; } .kpi, figure.chart, table { border-color: #999; } }"""


def render_report(sales: DailySales, trend: Sequence[DayTotals]) -> dict[str, str]:
    """The day's files' contents by format."""
    return {"csv": render_csv(sales), "html": render_html(sales, trend)}


def write_report_files(
    base: ObjectStoragePath, sales: DailySales, trend: Sequence[DayTotals] = ()
) -> dict[str, str]:
    """Write the day's CSV and HTML (overwriting a previous run's); returns their URLs by format."""
    return write_files(report_files(base, sales.day), render_report(sales, trend))


# -- the delivery ------------------------------------------------------------------------------------


def delivery_key(day: date) -> str:
    # Named `webhook` since the first version: kept, so days sent before stay sent.
    return f"sales_daily_report:{day.isoformat()}:webhook"


def delivery_payload(
    sales: DailySales, files: Mapping[str, str], *, summary: str, link: str, trend: Sequence[DayTotals] = ()
) -> dict[str, Any]:
    change = day_over_day(trend) if trend else {}
    return {
        "kind": "sales_daily_report",
        **sales.to_json(),
        "summary": summary,
        "link": link,
        "files": dict(files),
        "day_over_day": {measure: value.to_json() for measure, value in change.items()},
    }


def deliver_report(
    conn: psycopg.Connection,
    sales: DailySales,
    files: Mapping[str, str],
    *,
    trend: Sequence[DayTotals] = (),
    public_base: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    send: Callable[..., dict[str, Any]] | None = None,
) -> LedgerOutcome:
    """Send the day's report to the reports target unless the ledger says it was sent; `force` sends
    again. `send` is batchkit.alert_channels.send_report unless given (tests)."""
    summary = summary_line(sales, trend)
    link = report_link(files["html"], public_base=public_base)
    payload = delivery_payload(sales, files, summary=summary, link=link, trend=trend)
    return deliver_once(
        conn,
        delivery_key(sales.day),
        payload,
        summary=summary,
        link=link,
        force=force,
        dry_run=dry_run,
        send=send,
    )
