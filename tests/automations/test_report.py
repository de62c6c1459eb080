"""sales_daily_report end to end: dag.test() against the real metadata DB and warehouse, report files on
local disk (and, in one test, in a bucket of a real S3 API server on loopback: moto's), deliveries POSTed to the demo upstream's /reports inbox (tests/automations/conftest.py points
the `reports_webhook` connection at it, `alerts_webhook` at its /alerts inbox, and empties the sync
tables before each test). Reports must never reach the alerts inbox.

Orders and customers are inserted straight into the sync targets; every expectation is computed here
from the inserted rows by the aggregate's stated rule, never written down as a number.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batchkit.report_files import CONTENT_TYPES, configured_reports_base, reports_base
from batchkit.sql_files import apply_sql_file
from include.sales.daily_report import (
    REPORT_DDL,
    REPORT_NAME,
    TREND_DAYS,
    Change,
    CountrySales,
    DailySales,
    DayTotals,
    days_completed_by,
    deliver_report,
    delivery_key,
    parse_report_day,
    read_trend,
    render_html,
    report_day_of,
    report_days,
    report_folder,
    report_link,
    summary_line,
    write_report_files,
)
from tests.dagrun import parse_dag, returned, run_dag
from tests.upstream import Upstream, running_upstream
from tools import REPO_ROOT

DAG_FILE = REPO_ROOT / "dags" / "sales" / "sales_daily_report.py"
DAY = date(2026, 3, 1)
OTHER_DAY = date(2026, 3, 2)
REPORT_TASKS = ("report_days", "aggregate", "render", "deliver")
# Every run passes every param: dag.test() writes a run's conf into the Param objects of the DAG's tasks,
# which copy.deepcopy(dag) shares, so a value left out would be the previous run's.
PARAM_DEFAULTS = {"report_day": None, "force_resend": False, "dry_run": False}


@dataclass(frozen=True)
class Order:
    order_id: int
    customer_id: int
    order_ts: datetime
    amount: Decimal
    status: str


CUSTOMERS = {1: "DE", 2: "DE", 3: "FR", 4: "US", 5: "NL"}


def utc(day: date, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def orders_around(day: date) -> list[Order]:
    """Orders of `day` (both boundaries, every country, a cancelled one, a customer not in the CRM) and
    of the days either side, which the report of `day` must ignore."""
    base = day.toordinal() * 100
    return [
        Order(base + 1, 1, utc(day), Decimal("10.50"), "paid"),
        Order(base + 2, 1, utc(day, 8, 15), Decimal("99.99"), "shipped"),
        Order(base + 3, 2, utc(day, 12), Decimal("5.00"), "placed"),
        Order(base + 4, 3, utc(day, 13, 30), Decimal("250.00"), "delivered"),
        Order(base + 5, 3, utc(day, 14), Decimal("40.00"), "cancelled"),
        Order(base + 6, 4, utc(day, 23, 59, 59), Decimal("1.01"), "paid"),
        Order(base + 7, 99, utc(day, 9), Decimal("12.34"), "paid"),
        Order(base + 8, 5, utc(day) - timedelta(seconds=1), Decimal("70.00"), "paid"),
        Order(base + 9, 5, utc(day) + timedelta(days=1), Decimal("80.00"), "paid"),
    ]


def expected_report(orders: list[Order], day: date) -> dict[str, tuple[int, Decimal, int]]:
    """{country: (orders, revenue, distinct customers)}: placed on `day` (UTC), not cancelled, country
    from the customers table or 'unknown'."""
    start = utc(day)
    grouped: dict[str, list[Order]] = defaultdict(list)
    for order in orders:
        if start <= order.order_ts < start + timedelta(days=1) and order.status != "cancelled":
            grouped[CUSTOMERS.get(order.customer_id, "unknown")].append(order)
    return {
        country: (len(rows), sum((o.amount for o in rows), Decimal("0")), len({o.customer_id for o in rows}))
        for country, rows in grouped.items()
    }


def insert_orders(warehouse: psycopg.Connection, orders: list[Order]) -> None:
    with warehouse.cursor() as cur:
        cur.executemany(
            "INSERT INTO sales.orders (order_id, customer_id, order_ts, updated_at, amount, status) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [(o.order_id, o.customer_id, o.order_ts, o.order_ts, o.amount, o.status) for o in orders],
        )


def report_rows(warehouse: psycopg.Connection, day: date) -> dict[str, tuple[int, Decimal, int]]:
    rows = warehouse.execute(
        "SELECT country, orders, revenue, customers FROM reports.daily_sales WHERE report_day = %s", (day,)
    ).fetchall()
    return {country: (orders, revenue, customers) for country, orders, revenue, customers in rows}


def deliveries(upstream: Upstream, day: date) -> list[dict[str, Any]]:
    """The day's report deliveries in the /reports inbox; fails if any report reached the alerts inbox."""
    leaked = [
        alert
        for alert in upstream.alerts()
        if alert.get("kind") == "sales_daily_report" or {"by_country", "summary"} & alert.keys()
    ]
    assert leaked == [], f"a report reached the alerts inbox: {leaked}"
    return [
        report
        for report in upstream.reports()
        if report.get("kind") == "sales_daily_report" and report.get("day") == day.isoformat()
    ]


def html_row(country: str, orders: int, revenue: Decimal, customers: int) -> re.Pattern[str]:
    """A row of the HTML's country table (the revenue share is between revenue and customers)."""
    return re.compile(
        rf'<tr><td>{re.escape(country)}</td><td class="num">{orders}</td><td class="num">{revenue:,.2f}</td>'
        rf'<td class="num">[0-9.]+%</td><td class="num">{customers}</td></tr>'
    )


def assert_standalone(page: str) -> None:
    """One file that opens anywhere: an inline chart, inline CSS, nothing fetched from elsewhere."""
    assert "<svg" in page
    assert "</svg>" in page
    assert "<style>" in page
    assert not re.search(r"<(script|link|img|iframe)\b", page), "the page loads something"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page references another URL"


def ledger_row(warehouse: psycopg.Connection, day: date) -> tuple[str, int, str | None] | None:
    return warehouse.execute(
        "SELECT state, attempts, last_error FROM batch_meta.side_effects WHERE effect_key = %s",
        (delivery_key(day),),
    ).fetchone()


def task_tries(dag_run: Any) -> dict[str, tuple[str, int]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state, TaskInstance.try_number).where(
                TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
            )
        ).all()
    return {task_id: (str(state), tries) for task_id, state, tries in rows}


def run_report(dag: Any, logical_date: datetime | None, **conf: Any) -> Any:
    return run_dag(dag, logical_date, {**PARAM_DEFAULTS, **conf})


def assert_succeeded(dag_run: Any) -> None:
    states = {task_id: state for task_id, (state, _) in task_tries(dag_run).items()}
    assert dag_run.state == "success", states
    assert states == dict.fromkeys(REPORT_TASKS, "success")


def files_of(reports_dir: Path, day: date) -> dict[str, Path]:
    folder = reports_dir / REPORT_NAME
    return {fmt: folder / f"{REPORT_NAME}_{day.isoformat()}.{fmt}" for fmt in ("csv", "html")}


def csv_report(path: Path, day: date) -> dict[str, tuple[int, Decimal, int]]:
    return csv_text_report(path.read_text(), day)


def csv_text_report(text: str, day: date) -> dict[str, tuple[int, Decimal, int]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert all(row["report_day"] == day.isoformat() for row in rows), rows
    return {
        row["country"]: (int(row["orders"]), Decimal(row["revenue"]), int(row["customers"])) for row in rows
    }


def delivered_report(delivery: dict[str, Any]) -> dict[str, tuple[int, Decimal, int]]:
    return {
        row["country"]: (row["orders"], Decimal(row["revenue"]), row["customers"])
        for row in delivery["by_country"]
    }


@pytest.fixture(scope="module")
def report_dag(airflow_db: str) -> Any:
    return parse_dag(DAG_FILE, "sales_daily_report")


@pytest.fixture(autouse=True)
def empty_reports(clean_slate: None, warehouse: psycopg.Connection) -> None:
    """No report rows and no ledger keys from an earlier test (the sync tables are emptied by conftest)."""
    apply_sql_file(warehouse, REPORT_DDL)
    warehouse.execute("TRUNCATE reports.daily_sales, batch_meta.side_effects")
    with warehouse.cursor() as cur:
        cur.executemany(
            "INSERT INTO crm.customers (customer_id, name, email, country, updated_at) VALUES (%s, %s, %s, %s, %s)",
            [
                (cid, f"Customer {cid}", f"c{cid}@example.com", country, utc(date(2026, 1, 1)))
                for cid, country in CUSTOMERS.items()
            ],
        )


# -- which days a run reports (plain functions) -------------------------------------------------------


def test_a_load_completes_the_days_whose_midnight_it_covers() -> None:
    assert days_completed_by(utc(DAY, 2), utc(OTHER_DAY, 2)) == [DAY]
    assert days_completed_by(utc(DAY), utc(OTHER_DAY)) == [DAY]
    assert days_completed_by(utc(DAY, 1), utc(DAY, 2)) == []
    assert days_completed_by(utc(DAY, 23), utc(OTHER_DAY, 0)) == [DAY]
    three_days = days_completed_by(utc(DAY, 2), utc(DAY + timedelta(days=3), 2))
    assert three_days == [DAY, DAY + timedelta(days=1), DAY + timedelta(days=2)]


def test_report_days_prefers_the_param_then_the_triggering_loads_then_the_day_before() -> None:
    loads = [(utc(OTHER_DAY, 2), utc(OTHER_DAY + timedelta(days=1), 2)), (utc(DAY, 2), utc(OTHER_DAY, 2))]
    run_at = utc(date(2026, 3, 10), 2, 5)

    assert report_days(requested="2026-02-14", source_intervals=loads, run_at=run_at) == [date(2026, 2, 14)]
    assert report_days(requested=None, source_intervals=loads, run_at=run_at) == [DAY, OTHER_DAY]
    assert report_days(requested=None, source_intervals=[], run_at=run_at) == [date(2026, 3, 9)]


@pytest.mark.parametrize("bad", ["2026-3-1", "yesterday", "2026-02-30", 20260301])
def test_a_bad_report_day_names_the_param(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"param 'report_day': expected a date YYYY-MM-DD"):
        parse_report_day(bad)


def test_only_report_file_names_carry_a_day() -> None:
    assert report_day_of(f"{REPORT_NAME}_2026-03-01.csv") == DAY
    assert report_day_of(f"{REPORT_NAME}_2026-03-01.html") == DAY
    assert report_day_of(f"{REPORT_NAME}_2026-03-01.csv.tmp") is None
    assert report_day_of("notes_2026-03-01.csv") is None


# -- the files and the message (plain functions) -----------------------------------------------------

SAMPLE = DailySales(
    day=DAY,
    by_country=(
        CountrySales("DE", 1200, Decimal("10234.50"), 800),
        CountrySales("FR", 40, Decimal("3120.00"), 33),
        CountrySales("unknown", 2, Decimal("12.34"), 1),
    ),
)


def sample_trend(days: int = TREND_DAYS) -> list[DayTotals]:
    """Growing days before DAY, one of them never reported, then DAY's own totals."""
    earlier = [
        DayTotals(DAY - timedelta(days=days - 1 - i), 1000 + i, Decimal(9000 + 100 * i))
        if i != 3
        else DayTotals(DAY - timedelta(days=days - 1 - i), None, None)
        for i in range(days - 1)
    ]
    totals = SAMPLE.totals()
    return [*earlier, DayTotals(DAY, totals.orders, totals.revenue)]


def test_the_html_stands_alone_with_a_chart_and_the_numbers() -> None:
    trend = sample_trend()
    page = render_html(SAMPLE, trend)

    assert_standalone(page)
    assert html_row("DE", 1200, Decimal("10234.50"), 800).search(page)
    assert '<td class="num">10,234.50</td><td class="num">76.6%</td>' in page
    assert html_row("unknown", 2, Decimal("12.34"), 1).search(page)
    assert page.count("no report for this day") == 1
    # The day before had 1012 orders and 10200.00 revenue: the day-over-day change, in the cards and table.
    previous = trend[-2]
    orders_change = Change.between(1242, previous.orders)
    assert (orders_change.delta, orders_change.percent) == (Decimal(230), Decimal("22.7"))
    assert "+230 (+22.7%) vs day before" in page
    revenue_change = Change.between(SAMPLE.totals().revenue, previous.revenue)
    assert revenue_change.describe(money=True) == "+3,166.84 (+31.0%)"
    assert "+3,166.84 (+31.0%)" in page
    # Deterministic: the same numbers render the same bytes (a rerun rewrites identical files).
    assert render_html(SAMPLE, trend) == page


def test_the_chart_follows_the_numbers() -> None:
    trend = sample_trend()
    changed = [*trend[:-2], DayTotals(trend[-2].day, 1, Decimal("1.00")), trend[-1]]
    assert render_html(SAMPLE, changed) != render_html(SAMPLE, trend)


def test_the_summary_says_the_day_the_totals_and_the_change() -> None:
    assert summary_line(SAMPLE, sample_trend()) == (
        "Sales 2026-03-01: 1,242 orders, revenue 13,366.84 (+3,166.84 (+31.0%) vs 2026-02-28)"
    )
    alone = [DayTotals(DAY, 1242, SAMPLE.totals().revenue)]
    assert summary_line(SAMPLE, alone) == "Sales 2026-03-01: 1,242 orders, revenue 13,366.84"
    assert Change.between(5, 0).describe() == "+5 (new)"


def test_the_base_path_is_the_variable_then_the_environment_then_airflow_home(tmp_path: Path) -> None:
    env = {"AIRFLOW_HOME": str(tmp_path), "REPORTS_BASE_PATH": "memory://env-bucket/reports"}
    assert str(reports_base("memory://variable/reports", environ=env)) == "memory://variable/reports"
    assert str(reports_base(None, environ=env)) == "memory://env-bucket/reports"
    assert str(reports_base(None, environ={"AIRFLOW_HOME": str(tmp_path)})) == f"file://{tmp_path}/reports"
    s3 = reports_base(None, conn_id="minio", environ={"REPORTS_BASE_PATH": "s3://bucket/prefix"})
    assert (s3.conn_id, s3.as_uri()) == ("minio", "s3://bucket/prefix")


def test_files_go_to_any_object_storage_and_the_message_links_to_them(tmp_path: Path) -> None:
    remote = write_report_files(reports_base("memory://reports-test/daily"), SAMPLE, sample_trend())
    assert remote["html"] == f"memory://reports-test/daily/{REPORT_NAME}/{REPORT_NAME}_2026-03-01.html"
    assert report_link(remote["html"]) == remote["html"]
    # A local folder with a space: ObjectStoragePath takes file:// paths verbatim (no %-quoting).
    local = write_report_files(reports_base(f"file://{tmp_path}/r p"), SAMPLE, sample_trend())
    html_file = tmp_path / "r p" / REPORT_NAME / f"{REPORT_NAME}_2026-03-01.html"
    assert local["html"] == f"file://{html_file}"
    assert report_link(local["html"]) == str(html_file)
    assert "<svg" in html_file.read_text()
    assert report_link(local["html"], public_base="https://reports.example.com/") == (
        f"https://reports.example.com/{REPORT_NAME}/{REPORT_NAME}_2026-03-01.html"
    )
    assert report_link("s3://bucket/prefix/x.html") == "s3://bucket/prefix/x.html"


def test_the_trend_reads_earlier_days_from_the_table_and_ends_with_the_day(
    warehouse: psycopg.Connection,
) -> None:
    with warehouse.cursor() as cur:
        cur.executemany(
            "INSERT INTO reports.daily_sales (report_day, country, orders, revenue, customers, run_id) "
            "VALUES (%s, %s, %s, %s, %s, 'test')",
            [
                (DAY - timedelta(days=1), "DE", 3, Decimal("30.00"), 2),
                (DAY - timedelta(days=1), "FR", 1, Decimal("5.50"), 1),
                (DAY - timedelta(days=3), "DE", 7, Decimal("70.00"), 5),
                (DAY - timedelta(days=TREND_DAYS), "DE", 99, Decimal("99.00"), 9),  # outside the window
                (DAY, "DE", 1, Decimal("1.00"), 1),  # the day's stored rows: its own numbers win
            ],
        )

    trend = read_trend(warehouse, SAMPLE)

    assert [point.day for point in trend] == [
        DAY - timedelta(days=TREND_DAYS - 1 - i) for i in range(TREND_DAYS)
    ]
    by_day = {point.day: (point.orders, point.revenue) for point in trend}
    assert by_day[DAY - timedelta(days=1)] == (4, Decimal("35.50"))
    assert by_day[DAY - timedelta(days=2)] == (None, None)
    assert by_day[DAY - timedelta(days=3)] == (7, Decimal("70.00"))
    assert by_day[DAY] == (1242, SAMPLE.totals().revenue)
    assert [DayTotals.from_json(point.to_json()) for point in trend] == trend


def test_a_reports_webhook_that_is_the_alerts_webhook_is_refused_and_nothing_is_marked_sent(
    warehouse: psycopg.Connection, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_REPORTS_WEBHOOK", json.dumps({"conn_type": "http", "host": upstream.url + "/alerts"})
    )
    reports_before, alerts_before = len(upstream.reports()), len(upstream.alerts())

    with pytest.raises(ValueError, match="alerts webhook"):
        deliver_report(warehouse, SAMPLE, {"html": "file:///tmp/x.html", "csv": "file:///tmp/x.csv"})

    assert ledger_row(warehouse, DAY)[:2] == ("claimed", 0)
    assert (len(upstream.reports()), len(upstream.alerts())) == (reports_before, alerts_before)


# -- the DAG end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_day_is_reported_exactly_and_delivered_once_until_forced(
    report_dag: Any, warehouse: psycopg.Connection, upstream: Upstream, reports_dir: Path
) -> None:
    orders = orders_around(DAY)
    insert_orders(warehouse, orders)
    expected = expected_report(orders, DAY)
    assert {"DE", "FR", "US", "unknown"} <= expected.keys()
    alerts_before = len(upstream.alerts())

    # A run on the day after, with no triggering load: reports the previous UTC day.
    first = run_report(report_dag, utc(OTHER_DAY, 3))
    assert_succeeded(first)
    assert report_rows(warehouse, DAY) == expected
    files = files_of(reports_dir, DAY)
    assert csv_report(files["csv"], DAY) == expected
    page = files["html"].read_text()
    assert_standalone(page)
    for country, (count, revenue, customers) in expected.items():
        assert html_row(country, count, revenue, customers).search(page), (country, page)
    total_orders = sum(count for count, _, _ in expected.values())
    total_revenue = sum((revenue for _, revenue, _ in expected.values()), Decimal("0"))
    assert (
        f'<tfoot><tr><th>Total</th><th class="num">{total_orders}</th><th class="num">{total_revenue:,.2f}</th>'
        in page
    )
    # The trend: no earlier day was reported, the day itself was.
    assert page.count("no report for this day") == TREND_DAYS - 1
    [delivery] = deliveries(upstream, DAY)
    assert delivered_report(delivery) == expected
    assert delivery["files"] == {fmt: path.as_uri() for fmt, path in files.items()}
    # The message links to the report: a local file, so by its path.
    assert delivery["link"] == str(files["html"])
    assert (
        delivery["summary"] == f"Sales {DAY.isoformat()}: {total_orders} orders, revenue {total_revenue:,.2f}"
    )
    assert ledger_row(warehouse, DAY) == ("done", 1, None)
    first_files = {fmt: path.read_bytes() for fmt, path in files.items()}

    # A rerun over the same data (no logical date, the day as a param): same rows, byte-identical files
    # overwritten in place, nothing sent again.
    rerun = run_report(report_dag, None, report_day=DAY.isoformat())
    assert_succeeded(rerun)
    assert report_rows(warehouse, DAY) == expected
    assert {fmt: path.read_bytes() for fmt, path in files.items()} == first_files
    assert sorted(p.name for p in (reports_dir / REPORT_NAME).iterdir()) == sorted(
        p.name for p in files.values()
    )
    assert len(deliveries(upstream, DAY)) == 1
    assert ledger_row(warehouse, DAY) == ("done", 1, None)

    # A late order for the day, then force_resend: the day's rows replaced (not added to), the files
    # rewritten, and the day sent again with the numbers as they are now.
    late = Order(DAY.toordinal() * 100 + 50, 4, utc(DAY, 18), Decimal("3.33"), "paid")
    insert_orders(warehouse, [late])
    corrected = expected_report([*orders, late], DAY)
    assert corrected != expected
    forced = run_report(report_dag, None, report_day=DAY.isoformat(), force_resend=True)
    assert_succeeded(forced)
    assert report_rows(warehouse, DAY) == corrected
    assert csv_report(files["csv"], DAY) == corrected
    first_sent, resent = deliveries(upstream, DAY)
    assert delivered_report(first_sent) == expected
    assert delivered_report(resent) == corrected
    assert ledger_row(warehouse, DAY) == ("done", 2, None)
    # Three successful runs: nothing at all in the alerts inbox.
    assert upstream.alerts()[alerts_before:] == []


@pytest.mark.slow
def test_dry_run_writes_and_delivers_nothing(
    report_dag: Any, warehouse: psycopg.Connection, upstream: Upstream, reports_dir: Path
) -> None:
    orders = orders_around(OTHER_DAY)
    insert_orders(warehouse, orders)

    dry = run_report(report_dag, None, report_day=OTHER_DAY.isoformat(), dry_run=True)

    assert_succeeded(dry)
    # It computed the report and where it would go, and knew it had never been sent...
    [would_deliver] = returned(dry, "render")
    assert delivered_report(would_deliver) == expected_report(orders, OTHER_DAY)
    assert would_deliver["files"] == {
        fmt: path.as_uri() for fmt, path in files_of(reports_dir, OTHER_DAY).items()
    }
    assert returned(dry, "deliver") == [{"day": OTHER_DAY.isoformat(), "status": "dry-run", "attempts": 0}]
    # ...and wrote and sent nothing.
    assert report_rows(warehouse, OTHER_DAY) == {}
    assert not reports_dir.exists()
    assert deliveries(upstream, OTHER_DAY) == []
    assert ledger_row(warehouse, OTHER_DAY) is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def receiver_down_until_first_failure(
    warehouse_conninfo: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Upstream]]:
    """The reports webhook points at a port where nothing listens; once the ledger records the failed send, a
    demo upstream starts on that port. Yields {"receiver": Upstream} once it is up."""
    port = _free_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_REPORTS_WEBHOOK",
        json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{port}/reports"}),
    )
    started: dict[str, Upstream] = {}
    stop = threading.Event()

    def start_after_the_failure() -> None:
        with psycopg.connect(warehouse_conninfo, autocommit=True) as conn:
            while not stop.wait(0.1):
                failed = conn.execute(
                    "SELECT 1 FROM batch_meta.side_effects WHERE effect_key = %s AND last_error IS NOT NULL",
                    (delivery_key(DAY),),
                ).fetchone()
                if failed:
                    break
        if stop.is_set():
            return
        with running_upstream("--port", str(port)) as receiver:
            started["receiver"] = receiver
            stop.wait()

    watcher = threading.Thread(target=start_after_the_failure, daemon=True)
    watcher.start()
    try:
        yield started
    finally:
        stop.set()
        watcher.join(timeout=20)


@pytest.mark.slow
def test_a_failed_delivery_is_retried_and_sent_exactly_once(
    report_dag: Any,
    warehouse: psycopg.Connection,
    reports_dir: Path,
    receiver_down_until_first_failure: dict[str, Upstream],
) -> None:
    orders = orders_around(DAY)
    insert_orders(warehouse, orders)
    dag = copy.deepcopy(report_dag)
    # Airflow's backoff has a 1 s floor plus jitter: the retry comes 1-2 s after the failed try.
    dag.get_task("deliver").retry_delay = timedelta(seconds=0)

    dag_run = run_report(dag, None, report_day=DAY.isoformat())

    assert_succeeded(dag_run)
    state, tries = task_tries(dag_run)["deliver"]
    assert tries >= 2, "the first try should have failed against the unreachable receiver"
    [delivery] = deliveries(receiver_down_until_first_failure["receiver"], DAY)
    assert delivered_report(delivery) == expected_report(orders, DAY)
    done, attempts, last_error = ledger_row(warehouse, DAY)
    assert (done, attempts) == ("done", 1)
    assert "ConnectionError" in last_error


# -- the files on S3 (a real S3 API server on loopback) -----------------------------------------------

S3_BUCKET = "sales-reports"
S3_PREFIX = "daily"
S3_KEY_ID = "reports-test-key"  # pragma: allowlist secret
S3_SECRET = "reports-test-secret"  # pragma: allowlist secret


@dataclass(frozen=True)
class S3Store:
    endpoint: str
    conn_id: str
    client: Any  # boto3 S3 client on the server, with the connection's keys

    def key(self, day: date, fmt: str) -> str:
        return f"{S3_PREFIX}/{REPORT_NAME}/{REPORT_NAME}_{day.isoformat()}.{fmt}"

    def url(self, day: date, fmt: str) -> str:
        return f"s3://{S3_BUCKET}/{self.key(day, fmt)}"

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{S3_PREFIX}/")
        return sorted(item["Key"] for item in listed.get("Contents", ()))

    def get(self, day: date, fmt: str) -> tuple[bytes, str]:
        """The object's bytes and the Content-Type it is served with."""
        stored = self.client.get_object(Bucket=S3_BUCKET, Key=self.key(day, fmt))
        return stored["Body"].read(), stored["ContentType"]

    def put(self, day: date, fmt: str, body: bytes) -> None:
        self.client.put_object(Bucket=S3_BUCKET, Key=self.key(day, fmt), Body=body)


@pytest.fixture
def s3_reports(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    """moto's S3 server on a free loopback port with an empty bucket; the report's base path set as compose
    sets it (env REPORTS_BASE_PATH=s3://bucket/prefix, REPORTS_CONN_ID) and its `aws` connection, with
    endpoint_url, as AIRFLOW_CONN_<ID> JSON. The connection id is new per server: ObjectStoragePath keeps
    one filesystem per connection id for the life of the process (dag.test() runs tasks in this one)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        conn_id = f"reports_s3_{port}"
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": S3_KEY_ID,
                    "password": S3_SECRET,
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            ),
        )
        monkeypatch.delenv("AIRFLOW_VAR_REPORTS_BASE_PATH", raising=False)
        monkeypatch.delenv("AIRFLOW_VAR_REPORTS_CONN_ID", raising=False)
        monkeypatch.delenv("AIRFLOW_VAR_REPORTS_PUBLIC_URL", raising=False)
        monkeypatch.delenv("REPORTS_PUBLIC_URL", raising=False)
        monkeypatch.setenv("REPORTS_BASE_PATH", f"s3://{S3_BUCKET}/{S3_PREFIX}")
        monkeypatch.setenv("REPORTS_CONN_ID", conn_id)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
        )
        client.create_bucket(Bucket=S3_BUCKET)
        yield S3Store(endpoint=endpoint, conn_id=conn_id, client=client)
    finally:
        server.stop()


def test_a_missing_bucket_fails_the_write_and_is_not_created(s3_reports: S3Store) -> None:
    base = reports_base("s3://no-such-bucket/daily", conn_id=s3_reports.conn_id)

    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        write_report_files(base, SAMPLE, sample_trend())

    assert [bucket["Name"] for bucket in s3_reports.client.list_buckets()["Buckets"]] == [S3_BUCKET]


def test_platform_cleanup_purges_old_report_files_from_the_bucket_through_the_reports_connection(
    s3_reports: S3Store,
) -> None:
    from batchkit.retention import purge_report_files

    old, kept = DAY - timedelta(days=40), DAY
    for day in (old, kept):
        for fmt in ("html", "csv"):
            s3_reports.put(day, fmt, b"x")
    # What platform_cleanup's purge_report_files task resolves: the base and its connection, as configured.
    folder = report_folder(configured_reports_base())

    purge = {"day_of": report_day_of, "older_than": DAY - timedelta(days=30)}
    assert purge_report_files(folder, **purge, dry_run=True) == 2
    assert len(s3_reports.keys()) == 4
    assert purge_report_files(folder, **purge, dry_run=False) == 2
    assert s3_reports.keys() == sorted(s3_reports.key(kept, fmt) for fmt in ("html", "csv"))


@pytest.mark.slow
def test_the_report_lands_in_an_s3_bucket_and_a_rerun_overwrites_it_without_sending_again(
    report_dag: Any,
    warehouse: psycopg.Connection,
    upstream: Upstream,
    s3_reports: S3Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    orders = orders_around(DAY)
    insert_orders(warehouse, orders)
    expected = expected_report(orders, DAY)
    # The upstream's inbox lives as long as the module: earlier tests' deliveries of DAY are in it.
    sent_before = len(deliveries(upstream, DAY))

    first = run_report(report_dag, None, report_day=DAY.isoformat())

    assert_succeeded(first)
    assert report_rows(warehouse, DAY) == expected
    # Two objects under the prefix, each served as its type (a browser shows the HTML, not a download).
    assert s3_reports.keys() == sorted(s3_reports.key(DAY, fmt) for fmt in ("csv", "html"))
    csv_bytes, csv_type = s3_reports.get(DAY, "csv")
    html_bytes, html_type = s3_reports.get(DAY, "html")
    assert (csv_type, html_type) == (CONTENT_TYPES["csv"], CONTENT_TYPES["html"])
    assert csv_text_report(csv_bytes.decode(), DAY) == expected
    page = html_bytes.decode()
    assert_standalone(page)
    for country, (count, revenue, customers) in expected.items():
        assert html_row(country, count, revenue, customers).search(page), (country, page)
    # The message names the objects by their s3:// URLs (no connection id in them) and links to the HTML.
    [delivery] = deliveries(upstream, DAY)[sent_before:]
    assert delivered_report(delivery) == expected
    assert delivery["files"] == {fmt: s3_reports.url(DAY, fmt) for fmt in ("csv", "html")}
    assert delivery["link"] == s3_reports.url(DAY, "html")
    assert ledger_row(warehouse, DAY) == ("done", 1, None)

    # A rerun over the same data overwrites the objects in place (a clobbered one comes back as it was),
    # adds none, and sends nothing.
    s3_reports.put(DAY, "html", b"stale")
    rerun = run_report(report_dag, None, report_day=DAY.isoformat())
    assert_succeeded(rerun)
    assert s3_reports.keys() == sorted(s3_reports.key(DAY, fmt) for fmt in ("csv", "html"))
    assert s3_reports.get(DAY, "html") == (html_bytes, html_type)
    assert s3_reports.get(DAY, "csv") == (csv_bytes, csv_type)
    assert deliveries(upstream, DAY)[sent_before:] == [delivery]
    assert ledger_row(warehouse, DAY) == ("done", 1, None)

    # With a public URL for the bucket (an S3 website, a proxy: here the server's path-style URL), a forced
    # resend links there instead.
    public = f"{s3_reports.endpoint}/{S3_BUCKET}/{S3_PREFIX}"
    monkeypatch.setenv("REPORTS_PUBLIC_URL", public)
    forced = run_report(report_dag, None, report_day=DAY.isoformat(), force_resend=True)
    assert_succeeded(forced)
    _, resent = deliveries(upstream, DAY)[sent_before:]
    assert resent["link"] == f"{public}/{REPORT_NAME}/{REPORT_NAME}_{DAY.isoformat()}.html"
    assert resent["files"] == delivery["files"]
    assert ledger_row(warehouse, DAY) == ("done", 2, None)
