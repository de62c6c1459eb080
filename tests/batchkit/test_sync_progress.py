"""The sync's log lines, end to end: one line per page with "page N of M", running totals, rate and
ETA, and the final line that reconciles the counts. Real demo upstream on loopback (tests/upstream.py),
real RestApiHook and real warehouse; the lines are captured from structlog as the task would log them."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import structlog

from batchkit.checkpoints import RunIdentity
from batchkit.extract.pagination import OffsetPagination, PageNumberPagination
from batchkit.intervals import DataInterval
from batchkit.operators.sync import IntervalSource
from batchkit.sync import merge_interval
from include.contracts.orders import CONTRACT, TARGET
from tests.upstream import Upstream, running_upstream

ORDERS_PER_DAY = 500
PAGE_SIZE = 150
DAY = DataInterval(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
PAGES = math.ceil(ORDERS_PER_DAY / PAGE_SIZE)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream("--orders-per-day", str(ORDERS_PER_DAY)) as server:
        yield server


@pytest.fixture
def conn_id(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> str:
    conn_id = f"demo_api_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", upstream.connection_json())
    return conn_id


@pytest.fixture
def identity(warehouse: psycopg.Connection) -> RunIdentity:
    warehouse.execute("CREATE SCHEMA IF NOT EXISTS sales")
    warehouse.execute("DROP TABLE IF EXISTS sales.orders")
    return RunIdentity(
        dag_id=f"progress_{uuid.uuid4().hex[:8]}", sync_key="sync", run_id="manual__progress", interval=DAY
    )


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == name]


@pytest.mark.parametrize(
    ("endpoint", "pagination"),
    [
        ("/v1/orders", PageNumberPagination(page_size=PAGE_SIZE, total_pages_field="total_pages")),
        ("/v1/offset/orders", OffsetPagination(limit=PAGE_SIZE, total_field="total_records")),
    ],
    ids=["stated_total_pages", "stated_total_records"],
)
def test_each_page_logs_one_line_with_page_n_of_m_running_totals_rate_and_eta(
    endpoint: str, pagination: Any, conn_id: str, identity: RunIdentity, warehouse: psycopg.Connection
) -> None:
    source = IntervalSource(http_conn_id=conn_id, endpoint=endpoint, pagination=pagination, contract=CONTRACT)

    with structlog.testing.capture_logs() as logs:
        staged = source.stage(warehouse, target=TARGET, identity=identity, max_quarantine_ratio=0.0)

    assert (staged.pages, staged.received) == (PAGES, ORDERS_PER_DAY)
    lines = events(logs, "sync_page_committed")
    assert [line["page"] for line in lines] == list(range(1, PAGES + 1))
    # One line per page at info: the fetch's own line is debug, its latency travels on the page's line.
    info_about_pages = [line for line in logs if "page" in line and line["log_level"] != "debug"]
    assert info_about_pages == lines
    assert all(line["log_level"] == "info" for line in lines)
    assert all(line["latency_ms"] > 0 for line in lines)
    received = 0
    for line in lines:
        rows = min(PAGE_SIZE, ORDERS_PER_DAY - received)
        received += rows
        number = line["page"]
        assert (line["rows"], line["rows_staged"], line["rows_quarantined"]) == (rows, rows, 0)
        assert (line["rows_received_total"], line["rows_staged_total"], line["rows_quarantined_total"]) == (
            received,
            received,
            0,
        )
        assert line["pages_total"] == PAGES
        assert line["progress"].startswith(f"page {number} of {PAGES} (")
        assert f"{received} " in line["progress"]
        assert line["records_per_s"] > 0
        # Keyed by run and interval like every sync line.
        assert (line["run_id"], line["interval"], line["dag_id"]) == (
            identity.run_id,
            DAY.label(),
            identity.dag_id,
        )
        if number < PAGES:
            assert line["eta_s"] is not None
            assert line["eta_s"] >= 0
            assert line["percent_done"] < 100
            assert line["last_page"] is False
        else:
            assert (line["eta_s"], line["percent_done"], line["last_page"]) == (0.0, 100.0, True)
    if isinstance(pagination, OffsetPagination):
        assert all(line["records_total"] == ORDERS_PER_DAY for line in lines)
        assert f"of {ORDERS_PER_DAY} records" in lines[0]["progress"]

    with structlog.testing.capture_logs() as logs:
        merged = merge_interval(warehouse, target=TARGET, identity=identity, max_quarantine_ratio=0.0)

    [final] = events(logs, "sync_merged")
    assert final["log_level"] == "info"
    assert final["reconciled"] is True
    assert (final["rows_received"], final["rows_loaded"], final["rows_quarantined"]) == (
        ORDERS_PER_DAY,
        ORDERS_PER_DAY,
        0,
    )
    assert (final["rows_inserted"], final["rows_updated"], final["rows_deleted"]) == (
        merged.inserted,
        merged.updated,
        merged.deleted,
    )
    assert merged.inserted == ORDERS_PER_DAY
    assert final["summary"].startswith(
        f"received {ORDERS_PER_DAY} = loaded {ORDERS_PER_DAY} + quarantined 0 (reconciled); "
        f"inserted {ORDERS_PER_DAY}, updated 0, deleted 0; {PAGES} pages, merge "
    )
    assert final["interval_duration_s"] >= final["duration_s"] >= 0


def test_a_resumed_stage_continues_the_page_count_and_the_running_totals(
    conn_id: str, identity: RunIdentity, warehouse: psycopg.Connection
) -> None:
    pagination = PageNumberPagination(page_size=PAGE_SIZE, total_pages_field="total_pages")
    source = IntervalSource(
        http_conn_id=conn_id, endpoint="/v1/orders", pagination=pagination, contract=CONTRACT
    )
    stop_after_two = _StopAfter(2)
    with pytest.raises(_Stopped), structlog.testing.capture_logs(processors=[stop_after_two]):
        source.stage(warehouse, target=TARGET, identity=identity, max_quarantine_ratio=0.0)

    with structlog.testing.capture_logs() as logs:
        source.stage(warehouse, target=TARGET, identity=identity, max_quarantine_ratio=0.0)

    lines = events(logs, "sync_page_committed")
    assert [line["page"] for line in lines] == list(range(3, PAGES + 1))
    assert lines[0]["rows_received_total"] == 3 * PAGE_SIZE
    assert lines[0]["progress"].startswith(f"page 3 of {PAGES} (")
    # The rate counts only this run's records: one page of them so far, not the three the interval has
    # (rate x elapsed comes back near PAGE_SIZE, give or take the rounding of the two logged fields).
    this_run = ORDERS_PER_DAY - 2 * PAGE_SIZE  # what the interval still had after the two pages before
    assert lines[0]["records_per_s"] * lines[0]["elapsed_s"] == pytest.approx(PAGE_SIZE, rel=0.2)
    assert lines[-1]["records_per_s"] * lines[-1]["elapsed_s"] == pytest.approx(this_run, rel=0.2)


class _Stopped(Exception):
    pass


class _StopAfter:
    """A structlog processor that kills the stage (as a crash would) once `pages` pages are committed."""

    def __init__(self, pages: int) -> None:
        self.pages = pages

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("event") == "sync_page_committed" and event["page"] == self.pages:
            raise _Stopped
        return event
