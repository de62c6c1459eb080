"""batchkit.sync (stage, verify, merge) end to end against the session's real warehouse database.

The last section holds the sync's log lines, end to end: one line per page with "page N of M", running
totals, rate and ETA, and the final line that reconciles the counts. Real demo upstream on loopback
(tests/upstream.py), real RestApiHook and real warehouse; the lines are captured from structlog as the task
would log them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import structlog

from batchkit.checkpoints import RunIdentity
from batchkit.errors import DataRejectedError, IntervalBusyError, StagingIncompleteError
from batchkit.extract.pagination import OffsetPagination, PageNumberPagination
from batchkit.intervals import DataInterval
from batchkit.load.postgres import MergeMode, staging_table_name
from batchkit.operators.sync import IntervalSource
from batchkit.pages import Page
from batchkit.sync import SyncResult, merge_interval, stage_interval, verify_interval
from include.contracts.orders import CONTRACT, TARGET
from tests.upstream import Upstream, running_upstream
from tools import REPO_ROOT

DAY_1 = DataInterval(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))
DAY_2 = DataInterval(datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))
BY_ORDER_DAY = dataclasses.replace(TARGET, mode=MergeMode.REPLACE_INTERVAL, interval_column="order_ts")


def order(order_id: int, *, day: DataInterval = DAY_1, amount: str = "10.00", status: str = "paid") -> dict:
    placed = day.start + timedelta(minutes=order_id % 1000)
    return {
        "order_id": order_id,
        "customer_id": 500 + order_id,
        "order_ts": placed.isoformat(),
        "updated_at": (placed + timedelta(hours=1)).isoformat(),
        "amount": amount,
        "status": status,
    }


class PagedSource:
    """A paged API stand-in: fixed pages; state {"next_page": n} asks for page n. Records every call."""

    def __init__(
        self, pages: list[list[Any]], *, kill_after: int | None = None, fail_after: int | None = None
    ):
        self.pages = pages
        self.kill_after = kill_after
        self.fail_after = fail_after
        self.calls: list[tuple[Mapping[str, Any] | None, int]] = []

    def __call__(self, resume_state: Mapping[str, Any] | None, pages_done: int) -> Iterator[Page]:
        self.calls.append((resume_state, pages_done))
        first = resume_state["next_page"] if resume_state else 1
        for number in range(first, len(self.pages) + 1):
            # Reached only when the consumer asks for the page after `number - 1`: by then it committed it.
            if number - 1 == self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if number - 1 == self.fail_after:
                raise ConnectionError(f"source went away before page {number}")
            last = number == len(self.pages)
            yield Page(number, self.pages[number - 1], None if last else {"next_page": number + 1})


def run_identity(dag_id: str, interval: DataInterval = DAY_1, run_id: str = "scheduled__1") -> RunIdentity:
    return RunIdentity(dag_id=dag_id, sync_key="load_orders", run_id=run_id, interval=interval)


def sync_interval(conn: psycopg.Connection, *, fetch_pages: Any, **options: Any) -> SyncResult:
    """Stage the interval, then merge it (re-staging from `fetch_pages` if the staging was lost): what
    the sync's tasks do one after the other. A dry run stops after staging."""
    merge_options = {
        key: options[key] for key in ("target", "max_quarantine_ratio", "lock_wait") if key in options
    }

    def stage() -> SyncResult:
        return stage_interval(conn, fetch_pages=fetch_pages, **options)

    staged = stage()
    if options.get("dry_run"):
        return staged
    merged = merge_interval(conn, identity=options["identity"], restage=stage, **merge_options)
    return dataclasses.replace(merged, resumed_from_page=staged.resumed_from_page)


def sync(conn: psycopg.Connection, identity: RunIdentity, source: PagedSource, **options: Any) -> SyncResult:
    options.setdefault("target", TARGET)
    options.setdefault("max_quarantine_ratio", 0.5)
    return sync_interval(conn, contract=CONTRACT, identity=identity, fetch_pages=source, **options)


def orders(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT order_id, amount, status FROM sales.orders ORDER BY order_id").fetchall()


def checksum(conn: psycopg.Connection) -> tuple[int, str]:
    return conn.execute(
        "SELECT count(*), md5(coalesce(string_agg(o::text, '|' ORDER BY order_id), '')) FROM sales.orders o"
    ).fetchone()


def checkpoint(conn: psycopg.Connection, identity: RunIdentity) -> tuple | None:
    return conn.execute(
        "SELECT state, pages_done, rows_received, rows_staged, rows_quarantined, next_state "
        "FROM batch_meta.checkpoints WHERE dag_id = %s AND interval_start = %s",
        (identity.dag_id, identity.interval.start),
    ).fetchone()


def quarantined(conn: psycopg.Connection, identity: RunIdentity) -> list[tuple]:
    return conn.execute(
        "SELECT page_number, record_index, run_id FROM batch_meta.quarantine "
        "WHERE dag_id = %s AND interval_start = %s ORDER BY page_number, record_index",
        (identity.dag_id, identity.interval.start),
    ).fetchall()


def staging_exists(conn: psycopg.Connection, identity: RunIdentity, target=TARGET) -> bool:
    name = staging_table_name(target, identity.scope())
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


@pytest.fixture
def dag_id(warehouse: psycopg.Connection) -> str:
    warehouse.execute("CREATE SCHEMA IF NOT EXISTS sales")
    warehouse.execute("DROP TABLE IF EXISTS sales.orders")
    return f"orders_sync_{uuid.uuid4().hex[:8]}"


def test_sync_loads_pages_and_records_a_complete_checkpoint(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    identity = run_identity(dag_id)
    source = PagedSource([[order(1), order(2)], [order(3), order(2, status="shipped")], []])

    result = sync(warehouse, identity, source)

    assert (result.pages, result.resumed_from_page, result.received, result.staged, result.quarantined) == (
        3,
        1,
        4,
        4,
        0,
    )
    assert (result.inserted, result.updated, result.deleted) == (3, 0, 0)
    assert orders(warehouse) == [
        (1, Decimal("10.00"), "paid"),
        (2, Decimal("10.00"), "shipped"),
        (3, Decimal("10.00"), "paid"),
    ]
    assert checkpoint(warehouse, identity) == ("complete", 3, 4, 4, 0, None)
    assert not staging_exists(warehouse, identity)
    assert source.calls == [(None, 0)]


def test_contract_violations_and_malformed_records_are_quarantined_and_reconcile(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    identity = run_identity(dag_id)
    pages = [
        [order(1), {**order(2), "amount": "ten"}, "not even an object", order(3)],
        [None, {**order(4), "order_id": "4"}, order(5), [order(6)]],
    ]
    result = sync(warehouse, identity, PagedSource(pages), max_quarantine_ratio=0.75)

    assert (result.received, result.staged, result.quarantined) == (8, 3, 5)
    assert result.received == result.staged + result.quarantined
    assert [row[0] for row in orders(warehouse)] == [1, 3, 5]
    assert quarantined(warehouse, identity) == [
        (1, 1, "scheduled__1"),
        (1, 2, "scheduled__1"),
        (2, 0, "scheduled__1"),
        (2, 1, "scheduled__1"),
        (2, 3, "scheduled__1"),
    ]
    assert checkpoint(warehouse, identity)[2:5] == (8, 3, 5)
    payloads = warehouse.execute(
        "SELECT payload ->> 'amount', payload_text, error FROM batch_meta.quarantine "
        "WHERE dag_id = %s ORDER BY page_number, record_index LIMIT 2",
        (dag_id,),
    ).fetchall()
    assert payloads[0][:2] == ("ten", None)
    assert "amount: Input should be an amount with at most 10 digits" in payloads[0][2]
    assert payloads[1][:2] == (None, '"not even an object"')


def test_too_many_rejects_fail_without_retry_and_the_next_run_starts_clean(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    identity = run_identity(dag_id)
    bad = {"order_id": -1}
    source = PagedSource(
        [[order(1), bad, order(2), bad], [order(3), bad, order(4), order(5), order(6), order(7)]]
    )

    with pytest.raises(DataRejectedError) as failure:
        sync(warehouse, identity, source, max_quarantine_ratio=0.2)

    message = str(failure.value)
    assert "3 of 10 records quarantined (30.00%)" in message
    assert "max_quarantine_ratio=20.00%" in message
    assert checkpoint(warehouse, identity)[0] == "rejected"
    assert len(quarantined(warehouse, identity)) == 3
    assert warehouse.execute("SELECT count(*) FROM sales.orders").fetchone() == (0,)
    assert not staging_exists(warehouse, identity)

    rerun = run_identity(dag_id, run_id="manual__rerun")
    result = sync(warehouse, rerun, PagedSource(source.pages), max_quarantine_ratio=0.3)
    assert (result.resumed_from_page, result.staged, result.quarantined) == (1, 7, 3)
    assert {row[2] for row in quarantined(warehouse, identity)} == {"manual__rerun"}
    assert len(quarantined(warehouse, identity)) == 3


def snapshot(conn: psycopg.Connection) -> dict[str, tuple]:
    """Every table of batch_meta, sales and crm with its row count and a checksum of its rows."""
    tables = conn.execute(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname IN ('batch_meta', 'sales', 'crm') ORDER BY 1"
    ).fetchall()
    state = {}
    for (table,) in tables:
        schema, name = table.split(".")
        state[table] = conn.execute(
            psycopg.sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
            ).format(psycopg.sql.Identifier(schema, name))
        ).fetchone()
    return state


def test_dry_run_validates_everything_and_writes_nothing(warehouse: psycopg.Connection, dag_id: str) -> None:
    sync(warehouse, run_identity(dag_id), PagedSource([[order(1), order(2)]]))
    half_done = run_identity(dag_id, DAY_2)
    with pytest.raises(ConnectionError):
        sync(
            warehouse, half_done, PagedSource([[order(10, day=DAY_2)], [order(11, day=DAY_2)]], fail_after=1)
        )
    before = snapshot(warehouse)
    assert "sales.orders" in before
    assert any(table.startswith("batch_meta.stg_") for table in before)

    source = PagedSource([[order(30), order(2, amount="1.00"), {"order_id": "x"}], [order(20)]])
    result = sync(warehouse, run_identity(dag_id), source, dry_run=True)
    result_2 = sync(warehouse, half_done, PagedSource([[order(12, day=DAY_2)]]), dry_run=True)

    assert snapshot(warehouse) == before
    assert (result.dry_run, result.pages, result.received, result.staged, result.quarantined) == (
        True,
        2,
        4,
        3,
        1,
    )
    assert result.key_range == ((2,), (30,))
    assert (result.inserted, result.updated, result.deleted) == (None, None, None)
    assert result_2.staged == 1
    assert source.calls == [(None, 0)]


def test_dry_run_over_the_threshold_fails_like_the_real_run_would(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    with pytest.raises(
        DataRejectedError, match="1 of 2 records quarantined .*dry run: a real run would fail"
    ):
        sync(
            warehouse,
            run_identity(dag_id),
            PagedSource([[order(1), "junk"]]),
            dry_run=True,
            max_quarantine_ratio=0.1,
        )
    assert warehouse.execute("SELECT to_regclass('sales.orders')").fetchone() == (None,)


def _run_until_killed(conninfo: str, dag_id: str, kill_after: int) -> None:
    """Child process: sync a 5-page interval and SIGKILL itself once `kill_after` pages are committed."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        sync(
            conn,
            run_identity(dag_id, run_id="scheduled__killed"),
            PagedSource(FIVE_PAGES, kill_after=kill_after),
        )


FIVE_PAGES = [
    [order(1), order(2)],
    [order(3), "garbage", order(1, status="refunded")],
    [order(4), order(5)],
    [order(2, amount="2.50"), order(6)],
    [order(7)],
]


def test_a_killed_run_resumes_after_its_last_committed_page(
    warehouse: psycopg.Connection, warehouse_conninfo: str, dag_id: str
) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from tests.batchkit.test_sync import _run_until_killed as r; r({warehouse_conninfo!r}, {dag_id!r}, 2)",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    identity = run_identity(dag_id, run_id="scheduled__retry")
    assert checkpoint(warehouse, identity) == ("in_progress", 2, 5, 4, 1, {"next_page": 3})
    assert staging_exists(warehouse, identity)
    assert warehouse.execute("SELECT count(*) FROM sales.orders").fetchone() == (0,)

    source = PagedSource(FIVE_PAGES)
    result = sync(warehouse, identity, source)

    assert source.calls == [({"next_page": 3}, 2)]
    assert result.resumed_from_page == 3
    assert (result.pages, result.received, result.staged, result.quarantined) == (5, 10, 9, 1)
    assert orders(warehouse) == [
        (1, Decimal("10.00"), "refunded"),
        (2, Decimal("2.50"), "paid"),
        (3, Decimal("10.00"), "paid"),
        (4, Decimal("10.00"), "paid"),
        (5, Decimal("10.00"), "paid"),
        (6, Decimal("10.00"), "paid"),
        (7, Decimal("10.00"), "paid"),
    ]
    assert len(quarantined(warehouse, identity)) == 1
    assert checkpoint(warehouse, identity)[0] == "complete"


# A day of the demo upstream's orders, read through the real RestApiHook four pages at a time.
DEMO_ORDERS, DEMO_PAGE_SIZE, DEMO_CONCURRENCY = 1_000, 100, 4
DEMO_ENDPOINT = "/v1/orders"
DEMO_QUERY = {
    "per_day": DEMO_ORDERS,
    "updated_since": DAY_1.start.isoformat(),
    "updated_before": DAY_1.end.isoformat(),
}


def demo_fetcher(conn_id: str, *, kill_after: int | None = None):
    """fetch_pages over the demo upstream through RestApiHook, max_concurrency 4. With `kill_after`, the
    process SIGKILLs itself when asked for the page after that one: by then it is committed, and the
    next pages' requests are in flight on the hook's fetch threads."""
    from batchkit.extract.pagination import PageNumberPagination
    from batchkit.hooks.rest_api import RestApiHook

    pagination = PageNumberPagination(page_size=DEMO_PAGE_SIZE, total_pages_field="total_pages")
    calls: list[tuple[Mapping[str, Any] | None, int]] = []

    def fetch(state: Mapping[str, Any] | None, pages_done: int) -> Iterator[Page]:
        calls.append((state, pages_done))
        with RestApiHook(conn_id) as api:
            for page in api.iter_pages(
                DEMO_ENDPOINT,
                pagination=pagination,
                params=DEMO_QUERY,
                resume_from=state,
                max_concurrency=DEMO_CONCURRENCY,
            ):
                if page.number - 1 == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield page

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


def _run_demo_until_killed(conninfo: str, dag_id: str, kill_after: int) -> None:
    """Child process: sync the demo day through the real hook, SIGKILLed after `kill_after` pages."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        sync(
            conn,
            run_identity(dag_id, run_id="scheduled__killed"),
            demo_fetcher("demo_api", kill_after=kill_after),
        )


def test_a_run_killed_while_fetching_concurrently_resumes_without_a_missing_or_duplicated_page(
    warehouse: psycopg.Connection, warehouse_conninfo: str, dag_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.upstream import running_upstream

    total_pages, kill_after = DEMO_ORDERS // DEMO_PAGE_SIZE, 3
    with running_upstream() as upstream:
        connection = upstream.connection_json()
        # Slow pages keep several requests in flight when the kill lands.
        upstream.set_faults({"kind": "slow", "delay": 0.05, "times": None})
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "from tests.batchkit.test_sync import _run_demo_until_killed as r; "
                f"r({warehouse_conninfo!r}, {dag_id!r}, {kill_after})",
            ],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
                "AIRFLOW_CONN_DEMO_API": connection,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr
        requested_before_kill = upstream.page_requests(DEMO_ENDPOINT)
        identity = run_identity(dag_id, run_id="scheduled__retry")
        state = checkpoint(warehouse, identity)
        assert state[:5] == (
            "in_progress",
            kill_after,
            kill_after * DEMO_PAGE_SIZE,
            kill_after * DEMO_PAGE_SIZE,
            0,
        )
        # Pages beyond the committed ones had been requested: the kill came mid-concurrent-fetch.
        assert max(requested_before_kill) > kill_after + 1

        upstream.reset()
        monkeypatch.setenv("AIRFLOW_CONN_DEMO_API", connection)
        fetch = demo_fetcher("demo_api")
        result = sync(warehouse, identity, fetch)
        requested_on_resume = upstream.page_requests(DEMO_ENDPOINT)

    assert fetch.calls == [(state[5], kill_after)]
    assert requested_on_resume == {page: 1 for page in range(kill_after + 1, total_pages + 1)}
    assert result.resumed_from_page == kill_after + 1
    # Received counts every page once: a duplicated page would count 100 more, a missing one 100 fewer.
    assert (result.pages, result.received, result.staged, result.quarantined) == (
        total_pages,
        DEMO_ORDERS,
        DEMO_ORDERS,
        0,
    )
    day_key = 20240501 * 10**7
    assert [row[0] for row in orders(warehouse)] == [day_key + i for i in range(DEMO_ORDERS)]
    assert checkpoint(warehouse, identity)[0] == "complete"


def test_staging_lost_in_a_server_crash_restarts_the_interval(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    identity = run_identity(dag_id)
    with pytest.raises(ConnectionError):
        sync(warehouse, identity, PagedSource(FIVE_PAGES, fail_after=2))
    lose_staging(warehouse, identity)

    source = PagedSource(FIVE_PAGES)
    result = sync(warehouse, identity, source)

    assert source.calls == [(None, 0)]
    assert (result.resumed_from_page, result.received, result.staged, result.quarantined) == (1, 10, 9, 1)
    assert len(quarantined(warehouse, identity)) == 1


def lose_staging(conn: psycopg.Connection, identity: RunIdentity) -> None:
    """What crash recovery does to an unlogged table: its rows are gone, the logged checkpoint is not."""
    conn.execute(
        psycopg.sql.SQL("TRUNCATE {}").format(
            psycopg.sql.Identifier(*staging_table_name(TARGET, identity.scope()).split("."))
        )
    )


@pytest.mark.parametrize("step", [verify_interval, merge_interval])
def test_staging_lost_between_stage_and_merge_is_restaged_by_the_next_step(
    warehouse: psycopg.Connection, dag_id: str, step
) -> None:
    identity = run_identity(dag_id)
    first_fetch = PagedSource(FIVE_PAGES)
    stage_interval(warehouse, target=TARGET, contract=CONTRACT, identity=identity, fetch_pages=first_fetch)
    lose_staging(warehouse, identity)
    refetch = PagedSource(FIVE_PAGES)

    def restage():
        return stage_interval(
            warehouse, target=TARGET, contract=CONTRACT, identity=identity, fetch_pages=refetch
        )

    result = step(warehouse, target=TARGET, identity=identity, max_quarantine_ratio=0.5, restage=restage)
    merged = merge_interval(warehouse, target=TARGET, identity=identity, max_quarantine_ratio=0.5)

    assert refetch.calls == [(None, 0)]
    assert (result.received, result.staged, result.quarantined) == (10, 9, 1)
    assert (merged.received, merged.staged, merged.quarantined) == (10, 9, 1)
    assert [row[0] for row in orders(warehouse)] == [1, 2, 3, 4, 5, 6, 7]
    assert len(quarantined(warehouse, identity)) == 1
    assert checkpoint(warehouse, identity)[0] == "complete"


def test_lost_staging_without_a_way_to_restage_asks_for_the_staging_step_and_rejects_nothing(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    identity = run_identity(dag_id)
    stage_interval(
        warehouse, target=TARGET, contract=CONTRACT, identity=identity, fetch_pages=PagedSource(FIVE_PAGES)
    )
    lose_staging(warehouse, identity)

    with pytest.raises(StagingIncompleteError, match="rows do not reconcile.*run the staging step again"):
        merge_interval(warehouse, target=TARGET, identity=identity, max_quarantine_ratio=0.5)

    assert checkpoint(warehouse, identity)[0] == "in_progress"
    assert sync(warehouse, identity, PagedSource(FIVE_PAGES)).staged == 9


def test_a_backfill_of_older_days_never_moves_rows_back_to_an_older_version(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    versioned = dataclasses.replace(TARGET, version_column="updated_at")
    day_1 = [[order(1, status="paid"), order(2, status="paid")]]
    day_2 = [[order(1, day=DAY_2, status="refunded", amount="0.00")]]

    def load(day: DataInterval, pages: list, run: str) -> None:
        sync(warehouse, run_identity(dag_id, day, run_id=run), PagedSource(pages), target=versioned)

    load(DAY_2, day_2, "scheduled__2")
    load(DAY_1, day_1, "backfill__1")
    newest_first = checksum(warehouse)
    warehouse.execute("TRUNCATE sales.orders")
    load(DAY_1, day_1, "scheduled__1b")
    load(DAY_2, day_2, "scheduled__2b")

    assert checksum(warehouse) == newest_first
    assert orders(warehouse) == [(1, Decimal("0.00"), "refunded"), (2, Decimal("10.00"), "paid")]


def test_a_seven_day_backfill_after_newer_days_leaves_every_row_at_its_newest_version(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    """The same 20 orders change every day; days 8-10 load first (today's runs), then days 1-7 (the
    backfill, run twice). The table must equal loading the ten days in order."""
    versioned = dataclasses.replace(TARGET, version_column="updated_at")
    days = [DataInterval(DAY_1.start + timedelta(days=n), DAY_1.end + timedelta(days=n)) for n in range(10)]

    def load(day_numbers: list[int], run: str) -> None:
        for n in day_numbers:
            changes = [
                order(i, day=days[n], amount=f"{n}.{i:02d}", status=f"day_{'abcdefghij'[n]}")
                for i in range(1, 21)
            ]
            identity = run_identity(dag_id, days[n], run_id=f"{run}__{n}")
            sync(warehouse, identity, PagedSource([changes[:10], changes[10:]]), target=versioned)

    load(list(range(10)), "in_order")
    in_order = checksum(warehouse)
    warehouse.execute("TRUNCATE sales.orders")

    load([7, 8, 9], "scheduled")
    load(list(range(7)), "backfill")
    load(list(range(7)), "backfill_again")

    assert checksum(warehouse) == in_order
    assert {row[2] for row in orders(warehouse)} == {"day_j"}


def test_a_fresh_run_over_a_complete_interval_replaces_it(warehouse: psycopg.Connection, dag_id: str) -> None:
    first = run_identity(dag_id, DAY_1, run_id="scheduled__1")
    sync(warehouse, run_identity(dag_id, DAY_2), PagedSource([[order(90, day=DAY_2)]]), target=BY_ORDER_DAY)
    sync(warehouse, first, PagedSource([[order(1), order(2), "bad"], [order(3)]]), target=BY_ORDER_DAY)

    backfill = run_identity(dag_id, DAY_1, run_id="backfill__1")
    source = PagedSource([[order(2, status="refunded"), order(4)], ["still bad"]])
    result = sync(warehouse, backfill, source, target=BY_ORDER_DAY)

    assert (result.resumed_from_page, result.deleted, result.inserted) == (1, 3, 2)
    assert [(row[0], row[2]) for row in orders(warehouse)] == [(2, "refunded"), (4, "paid"), (90, "paid")]
    assert quarantined(warehouse, first) == [(2, 0, "backfill__1")]
    assert checkpoint(warehouse, backfill)[:5] == ("complete", 2, 3, 2, 1)


def test_replace_mode_quarantines_rows_outside_the_interval(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    identity = run_identity(dag_id)
    result = sync(warehouse, identity, PagedSource([[order(1), order(2, day=DAY_2)]]), target=BY_ORDER_DAY)
    assert (result.staged, result.quarantined) == (1, 1)
    error = warehouse.execute(
        "SELECT error FROM batch_meta.quarantine WHERE dag_id = %s", (dag_id,)
    ).fetchone()[0]
    assert "order_ts 2024-05-02T00:02:00+00:00 is outside the interval being replaced" in error


def test_the_same_interval_synced_twice_leaves_an_identical_table(
    warehouse: psycopg.Connection, dag_id: str
) -> None:
    pages = [[order(i, amount=f"{i}.10") for i in range(1, 40)], [order(5, status="cancelled"), "junk"]]
    for mode_target in (TARGET, BY_ORDER_DAY):
        sync(warehouse, run_identity(dag_id, run_id="one"), PagedSource(pages), target=mode_target)
        once = checksum(warehouse)
        again = sync(warehouse, run_identity(dag_id, run_id="two"), PagedSource(pages), target=mode_target)
        assert checksum(warehouse) == once
        assert once[0] == 39
        assert again.quarantined == 1
        assert len(quarantined(warehouse, run_identity(dag_id))) == 1


def test_two_intervals_sync_concurrently_without_interfering(
    warehouse: psycopg.Connection, warehouse_conninfo: str, dag_id: str
) -> None:
    days = {
        DAY_1: [[order(i) for i in range(1, 51)], [order(i) for i in range(51, 101)]],
        DAY_2: [
            [order(i, day=DAY_2) for i in range(101, 151)],
            [order(i, day=DAY_2) for i in range(151, 201)],
        ],
    }
    seen_staging: list[list[bool]] = []

    def count_staging() -> None:
        seen_staging.append([staging_exists(warehouse, run_identity(dag_id, day)) for day in days])

    both_staged = threading.Barrier(2, action=count_staging, timeout=30)
    results, errors = {}, []

    class MeetingSource(PagedSource):
        def __call__(self, resume_state, pages_done):
            for page in super().__call__(resume_state, pages_done):
                if page.number == 2:
                    both_staged.wait()  # both runs have committed page 1 into their own staging
                yield page

    def run(interval: DataInterval) -> None:
        try:
            with psycopg.connect(warehouse_conninfo, autocommit=True) as conn:
                results[interval] = sync(conn, run_identity(dag_id, interval), MeetingSource(days[interval]))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(interval,)) for interval in days]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert seen_staging == [[True, True]]
    assert [results[day].inserted for day in days] == [100, 100]
    assert [row[0] for row in orders(warehouse)] == list(range(1, 201))
    assert [checkpoint(warehouse, run_identity(dag_id, day))[0] for day in days] == ["complete", "complete"]


def test_a_run_blocked_past_its_wait_gives_up_as_busy_and_writes_nothing(
    warehouse: psycopg.Connection, warehouse_conninfo: str, dag_id: str
) -> None:
    identity = run_identity(dag_id)
    with psycopg.connect(warehouse_conninfo, autocommit=True) as zombie:
        zombie.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"batchkit:sync:{identity.scope()}",)
        )
        with pytest.raises(IntervalBusyError, match="another run held .* for all of the 1s"):
            sync(warehouse, identity, PagedSource([[order(1)]]), lock_wait=timedelta(seconds=1))
    assert checkpoint(warehouse, identity) is None
    assert sync(warehouse, identity, PagedSource([[order(1)]])).staged == 1


def test_a_second_run_of_the_same_interval_waits_for_the_first_and_both_succeed(
    warehouse: psycopg.Connection, warehouse_conninfo: str, dag_id: str
) -> None:
    """A scheduled run and a backfill of the same day: the second waits, the outcome is exactly-once."""
    identity = run_identity(dag_id, run_id="scheduled__1")
    backfill = run_identity(dag_id, run_id="backfill__1")
    first_page_served = threading.Event()
    release = threading.Event()

    def slow_source(resume_state, pages_done):
        yield Page(1, [order(1), order(2)], {"next_page": 2})
        first_page_served.set()
        release.wait(10)
        yield Page(2, [order(3)], None)

    outcome: dict[str, Any] = {}

    def first_run() -> None:
        with psycopg.connect(warehouse_conninfo, autocommit=True) as conn:
            outcome["first"] = sync(conn, identity, slow_source)

    first = threading.Thread(target=first_run)
    first.start()
    assert first_page_served.wait(10)
    second_source = PagedSource([[order(1), order(2)], [order(3)]])
    second = threading.Thread(
        target=lambda: outcome.setdefault("second", sync(warehouse, backfill, second_source))
    )
    second.start()
    time.sleep(1.0)  # the second run is now waiting on the interval's lock
    assert "second" not in outcome
    release.set()
    first.join(20)
    second.join(20)

    assert outcome["first"].staged == 3
    assert outcome["second"].received == 3  # it found the interval merged and reloaded it cleanly
    assert [row[0] for row in orders(warehouse)] == [1, 2, 3]
    assert checkpoint(warehouse, identity)[:2] == ("complete", 2)


def test_a_source_that_skips_a_page_is_refused(warehouse: psycopg.Connection, dag_id: str) -> None:
    def skipping(resume_state, pages_done):
        yield Page(1, [order(1)], {"next_page": 3})
        yield Page(3, [order(3)], None)

    with pytest.raises(ValueError, match="source returned page 3, expected page 2"):
        sync_interval(
            warehouse, target=TARGET, contract=CONTRACT, identity=run_identity(dag_id), fetch_pages=skipping
        )


def test_sync_needs_an_autocommit_connection(warehouse_conninfo: str, dag_id: str) -> None:
    with (
        psycopg.connect(warehouse_conninfo) as conn,
        pytest.raises(ValueError, match="needs an autocommit connection"),
    ):
        sync(conn, run_identity(dag_id), PagedSource([]))


def test_the_phases_run_as_separate_tasks_and_a_rerun_merge_changes_nothing(warehouse) -> None:
    identity = run_identity(f"split_{uuid.uuid4().hex[:8]}")
    source = PagedSource([[order(1), order(2)], [order(3)]])

    with pytest.raises(StagingIncompleteError, match="the interval is not staged"):
        merge_interval(warehouse, target=TARGET, identity=identity)
    staged = stage_interval(
        warehouse, target=TARGET, contract=CONTRACT, identity=identity, fetch_pages=source
    )
    verified = verify_interval(warehouse, target=TARGET, identity=identity)
    assert (staged.pages, staged.received, staged.staged, staged.inserted) == (2, 3, 3, None)
    assert (verified.received, verified.staged, verified.quarantined) == (3, 3, 0)
    assert checkpoint(warehouse, identity)[0] == "in_progress"
    assert staging_exists(warehouse, identity)

    merged = merge_interval(warehouse, target=TARGET, identity=identity)
    after_first_merge = checksum(warehouse)
    again = merge_interval(warehouse, target=TARGET, identity=identity)

    assert merged.inserted == 3
    assert checkpoint(warehouse, identity)[0] == "complete"
    assert not staging_exists(warehouse, identity)
    assert (again.received, again.staged, again.inserted) == (3, 3, None)
    assert checksum(warehouse) == after_first_merge


def test_a_sync_file_declares_max_concurrency_for_pages_with_a_stated_total() -> None:
    import yaml
    from pydantic import ValidationError

    from batchkit.sync_dag import build_sync_dag
    from batchkit.sync_spec import SyncSpec

    document = yaml.safe_load((REPO_ROOT / "include/automations/sales_orders_sync.yaml").read_text())
    assert SyncSpec.model_validate(document).source.max_concurrency == 1  # the default

    document["source"]["endpoint"] = "/v1/orders"
    document["source"]["pagination"] = {
        "style": "page_number",
        "page_size": 1000,
        "total_pages_field": "total_pages",
    }
    document["source"]["max_concurrency"] = 4
    dag = build_sync_dag(SyncSpec.model_validate(document))
    assert dag.get_task("extract_stage").source.max_concurrency == 4

    document["source"]["pagination"] = {"style": "cursor", "size_param": "limit", "page_size": 1000}
    with pytest.raises(ValidationError, match="max_concurrency above 1 needs pagination that states"):
        SyncSpec.model_validate(document)
    document["source"]["max_concurrency"] = 17
    with pytest.raises(ValidationError, match="max_concurrency"):
        SyncSpec.model_validate(document)


# --- the sync's log lines: one per page, and the final one ------------------------------------

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
    assert (final["rows_received"], final["rows_staged"], final["rows_quarantined"]) == (
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
        f"received {ORDERS_PER_DAY} = staged {ORDERS_PER_DAY} + quarantined 0 (reconciled); "
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
