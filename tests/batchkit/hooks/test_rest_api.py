"""batchkit.hooks.rest_api (RestApiHook) against the demo upstream on loopback: pagination, retries, rate
limit, resume, fetching ahead. The pagination styles' and the retry policy's plain logic, without a server:
tests/batchkit/extract/test_pagination.py and tests/batchkit/extract/test_retry.py.

The hook reads a real Airflow connection (AIRFLOW_CONN_<ID>, resolved by the Task SDK's env-var secrets
backend outside a task); the server injects faults and counts every request it receives.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from batchkit.errors import DataRejectedError, PermanentSourceError
from batchkit.extract.pagination import (
    CursorPagination,
    LinkHeaderPagination,
    OffsetPagination,
    PageNumberPagination,
)
from batchkit.extract.retry import RetriesExhaustedError, RetryPolicy
from batchkit.hooks.rest_api import RestApiHook
from batchkit.pages import Page
from tests.upstream import Upstream, running_upstream

DAYS = ("2026-03-01", "2026-03-02")
WINDOW = {"updated_since": "2026-03-01T00:00:00Z", "updated_before": "2026-03-03T00:00:00+00:00"}
ORDERS_PER_DAY = 500
PAGE_SIZE = 150
# Ids are yyyymmdd * 10**7 + the record's index within its day.
ALL_ORDER_IDS = [int(day.replace("-", "")) * 10**7 + i for day in DAYS for i in range(ORDERS_PER_DAY)]
FAST_RETRIES = RetryPolicy(
    max_attempts=5, backoff_initial=0.01, backoff_max=0.05, max_total_seconds=10, retry_after_max=3
)

STYLES: dict[str, tuple[str, Any, int]] = {
    # name: (endpoint, pagination, pages yielded for 1000 records in pages of 150)
    "page_number_until_empty": ("/v1/orders", PageNumberPagination(page_size=PAGE_SIZE), 8),
    "page_number_total_pages": (
        "/v1/orders",
        PageNumberPagination(page_size=PAGE_SIZE, total_pages_field="total_pages"),
        7,
    ),
    "offset_until_empty": ("/v1/offset/orders", OffsetPagination(limit=PAGE_SIZE), 8),
    "offset_total": (
        "/v1/offset/orders",
        OffsetPagination(limit=PAGE_SIZE, total_field="total_records"),
        7,
    ),
    "cursor": ("/v1/cursor/orders", CursorPagination(size_param="limit", page_size=PAGE_SIZE), 7),
    "link_header": (
        "/v1/link/orders",
        LinkHeaderPagination(size_param="page_size", page_size=PAGE_SIZE),
        7,
    ),
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream("--orders-per-day", str(ORDERS_PER_DAY)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_upstream(upstream: Upstream) -> None:
    upstream.reset()


@pytest.fixture
def connect(upstream: Upstream, monkeypatch: pytest.MonkeyPatch):
    """Define a fresh Airflow connection to the upstream (via env) and return its id."""

    def define(token: str | None = None, **extra: Any) -> str:
        conn_id = f"demo_api_{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", upstream.connection_json(token, **extra))
        return conn_id

    return define


def ids(pages: list[Page]) -> list[int]:
    return [record["order_id"] for page in pages for record in page.records]


def assert_well_formed(pages: list[Page], first_number: int = 1) -> None:
    assert [page.number for page in pages] == list(range(first_number, first_number + len(pages)))
    assert pages[-1].next_state is None
    assert all(page.next_state is not None for page in pages[:-1])


# --- pagination ---------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_each_pagination_style_yields_every_record_once(style, upstream, connect) -> None:
    endpoint, pagination, expected_pages = STYLES[style]
    with RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW))

    assert ids(pages) == ALL_ORDER_IDS
    assert len(pages) == expected_pages
    assert_well_formed(pages)
    stats = upstream.stats()
    assert stats["paths"] == {endpoint: expected_pages}
    assert stats["connections"] == 2  # the hook's one keep-alive connection, and this stats query


@pytest.mark.parametrize("style", ["page_number_until_empty", "offset_total", "cursor", "link_header"])
def test_an_empty_result_is_one_empty_last_page(style, upstream, connect) -> None:
    endpoint, pagination, _ = STYLES[style]
    with RestApiHook(connect()) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params={**WINDOW, "per_day": 0}))

    assert pages == [Page(number=1, records=[], next_state=None)]
    assert upstream.requests_to(endpoint) == 1


@pytest.mark.parametrize("style", ["page_number_until_empty", "offset_total", "cursor", "link_header"])
def test_resume_from_next_state_does_not_refetch_earlier_pages(style, upstream, connect) -> None:
    endpoint, pagination, expected_pages = STYLES[style]
    with RestApiHook(connect()) as hook:
        first_run = hook.iter_pages(endpoint, pagination=pagination, params=WINDOW)
        done = [next(first_run) for _ in range(3)]
        first_run.close()
        upstream.reset()
        rest = list(
            hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, resume_from=done[-1].next_state)
        )

    assert ids(done + rest) == ALL_ORDER_IDS
    assert_well_formed(rest, first_number=4)
    assert sorted(upstream.page_requests(endpoint)) == list(range(4, expected_pages + 1))
    assert upstream.requests_to(endpoint) == expected_pages - 3


# --- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after_format", ["seconds", "http_date"])
def test_429_waits_for_retry_after(retry_after_format, upstream, connect) -> None:
    upstream.set_faults(
        {
            "kind": "status",
            "status": 429,
            "path": "/v1/orders",
            "page": 2,
            "retry_after": 2 if retry_after_format == "http_date" else 1,
            "retry_after_format": retry_after_format,
        }
    )
    started = time.monotonic()
    with RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook:
        pages = list(
            hook.iter_pages("/v1/orders", pagination=STYLES["page_number_total_pages"][1], params=WINDOW)
        )
    elapsed = time.monotonic() - started

    assert ids(pages) == ALL_ORDER_IDS
    assert upstream.page_requests("/v1/orders")[2] == 2
    # An HTTP-date has whole seconds: "now + 2 s" leaves between 1 and 2 s to wait.
    assert 0.95 <= elapsed < 2.8


def test_retry_after_is_capped(upstream, connect) -> None:
    upstream.set_faults({"kind": "status", "status": 429, "path": "/v1/orders", "retry_after": 30})
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01, retry_after_max=0.5)
    started = time.monotonic()
    with RestApiHook(connect(), retry_policy=policy) as hook:
        pages = list(
            hook.iter_pages("/v1/orders", pagination=STYLES["page_number_total_pages"][1], params=WINDOW)
        )

    assert ids(pages) == ALL_ORDER_IDS
    assert 0.5 <= time.monotonic() - started < 2.0


def test_503_burst_recovers(upstream, connect) -> None:
    upstream.set_faults({"kind": "status", "status": 503, "path": "/v1/cursor/orders", "page": 3, "times": 3})
    endpoint, pagination, _ = STYLES["cursor"]
    with RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW))

    assert ids(pages) == ALL_ORDER_IDS
    assert upstream.page_requests(endpoint) == {1: 1, 2: 1, 3: 4, 4: 1, 5: 1, 6: 1, 7: 1}


def test_transient_errors_give_up_after_max_attempts(upstream, connect) -> None:
    upstream.set_faults({"kind": "status", "status": 502, "path": "/v1/orders", "page": 2, "times": None})
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
    with (
        RestApiHook(connect(), retry_policy=policy) as hook,
        pytest.raises(
            RetriesExhaustedError, match=r"GET /v1/orders page 2: gave up after 3 attempt"
        ) as raised,
    ):
        list(hook.iter_pages("/v1/orders", pagination=STYLES["page_number_until_empty"][1], params=WINDOW))

    assert "502" in str(raised.value)
    assert upstream.page_requests("/v1/orders") == {1: 1, 2: 3}


def test_an_outage_shorter_than_the_budget_is_ridden_out_whatever_the_number_of_attempts(
    upstream, connect
) -> None:
    """The default policy caps time, not attempts: 40 failures in a row cost retries, not the task."""
    upstream.set_faults({"kind": "status", "status": 503, "path": "/v1/orders", "page": 2, "times": 40})
    policy = RetryPolicy(backoff_initial=0.01, backoff_max=0.05, max_total_seconds=30)
    assert policy.max_attempts is None
    with RestApiHook(connect(), retry_policy=policy) as hook:
        pages = list(
            hook.iter_pages("/v1/orders", pagination=STYLES["page_number_until_empty"][1], params=WINDOW)
        )

    assert ids(pages) == ALL_ORDER_IDS
    assert upstream.page_requests("/v1/orders")[2] == 41


def test_retries_stop_within_the_total_time_budget(upstream, connect) -> None:
    upstream.set_faults({"kind": "status", "status": 503, "path": "/v1/orders", "times": None})
    policy = RetryPolicy(max_attempts=1000, backoff_initial=0.1, backoff_max=0.1, max_total_seconds=0.5)
    started = time.monotonic()
    with RestApiHook(connect(), retry_policy=policy) as hook, pytest.raises(RetriesExhaustedError):
        list(hook.iter_pages("/v1/orders", pagination=STYLES["page_number_until_empty"][1], params=WINDOW))

    assert time.monotonic() - started < 1.0
    assert upstream.requests_to("/v1/orders") > 2


def test_read_timeout_recovers(upstream, connect) -> None:
    upstream.set_faults({"kind": "slow", "delay": 1.0, "path": "/v1/offset/orders", "page": 2})
    endpoint, pagination, _ = STYLES["offset_total"]
    started = time.monotonic()
    with RestApiHook(connect(), retry_policy=FAST_RETRIES, timeout=(2.0, 0.3)) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW))

    assert ids(pages) == ALL_ORDER_IDS
    assert upstream.page_requests(endpoint)[2] == 2
    assert time.monotonic() - started < 1.0


def test_connection_resets_recover(upstream, connect) -> None:
    upstream.set_faults({"kind": "reset", "path": "/v1/link/orders", "page": 2, "times": 2})
    endpoint, pagination, _ = STYLES["link_header"]
    with RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW))

    assert ids(pages) == ALL_ORDER_IDS
    assert upstream.page_requests(endpoint)[2] == 3


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_permanent_4xx_fails_at_once(status, upstream, connect) -> None:
    upstream.set_faults({"kind": "status", "status": status, "path": "/v1/orders", "page": 2, "times": None})
    started = time.monotonic()
    with (
        RestApiHook(connect(), retry_policy=RetryPolicy(backoff_initial=5)) as hook,
        pytest.raises(
            PermanentSourceError, match=rf"GET /v1/orders page 2 failed with HTTP {status}"
        ) as raised,
    ):
        list(hook.iter_pages("/v1/orders", pagination=STYLES["page_number_until_empty"][1], params=WINDOW))

    assert "injected fault" in str(raised.value)  # the body excerpt
    assert upstream.page_requests("/v1/orders") == {1: 1, 2: 1}
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("json_defect", ["truncated", "nan"])
def test_malformed_json_fails_without_retry(upstream, connect, json_defect: str) -> None:
    """A NaN literal is not JSON (RFC 8259) either, although Python's json module would accept it."""
    upstream.set_faults(
        {"kind": "malformed_json", "json_defect": json_defect, "path": "/v1/cursor/orders", "page": 2}
    )
    endpoint, pagination, _ = STYLES["cursor"]
    with (
        RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook,
        pytest.raises(DataRejectedError, match=r"GET /v1/cursor/orders page 2: response is not valid JSON"),
    ):
        list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW))

    assert upstream.page_requests(endpoint) == {1: 1, 2: 1}


def test_bad_token_fails_with_401_and_no_secret_in_output(upstream, connect, capfd) -> None:
    wrong_token = f"wrong-{uuid.uuid4().hex}"
    with (
        RestApiHook(connect(token=wrong_token), retry_policy=FAST_RETRIES) as hook,
        pytest.raises(PermanentSourceError, match=r"GET /v1/orders page 1 failed with HTTP 401") as raised,
    ):
        list(hook.iter_pages("/v1/orders", pagination=STYLES["page_number_until_empty"][1], params=WINDOW))

    assert upstream.requests_to("/v1/orders") == 1
    output = capfd.readouterr()
    assert wrong_token not in str(raised.value) + output.out + output.err


def test_logs_name_the_page_but_never_the_token(upstream, connect, capfd) -> None:
    upstream.set_faults({"kind": "status", "status": 503, "path": "/v1/orders", "page": 1})
    with RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook:
        pages = list(
            hook.iter_pages("/v1/orders", pagination=STYLES["page_number_total_pages"][1], params=WINDOW)
        )

    output = capfd.readouterr()
    logs = output.out + output.err
    assert "request_retry" in logs
    assert "request='GET /v1/orders page 1'" in logs
    # The per-page fetch line is debug: the retries, latency and stated total travel on the Page to the
    # sync's one line per page (batchkit.sync, sync_page_committed).
    assert pages[0].retries >= 1
    assert pages[0].latency_ms > 0
    assert [page.total_pages for page in pages] == [len(pages)] * len(pages)
    assert upstream.token not in logs


def test_a_bad_records_field_fails_naming_the_page(upstream, connect) -> None:
    with (
        RestApiHook(connect()) as hook,
        pytest.raises(DataRejectedError, match=r"GET /v1/orders page 1: expected a JSON array .* 'items'"),
    ):
        list(
            hook.iter_pages(
                "/v1/orders", pagination=PageNumberPagination(records_field="items"), params=WINDOW
            )
        )


# --- rate limit ---------------------------------------------------------------------------------


def test_rate_limit_spaces_requests(upstream, connect) -> None:
    rate = 10.0
    endpoint, pagination, expected_pages = STYLES["page_number_until_empty"]
    started = time.monotonic()
    with RestApiHook(connect(requests_per_second=rate)) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW))

    assert len(pages) == expected_pages
    assert time.monotonic() - started >= (expected_pages - 1) / rate


# --- fetching ahead: prefetch and concurrent pages ----------------------------------------------

AHEAD_STYLES = ["page_number_total_pages", "offset_total"]


def fetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("fetch /")]


@pytest.mark.parametrize("style", STYLES)
def test_prefetched_and_concurrent_pages_are_identical_to_the_sequential_fetch(
    style, upstream, connect
) -> None:
    endpoint, pagination, expected_pages = STYLES[style]
    with RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook:
        sequential = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, prefetch=False))
        requested_once = upstream.page_requests(endpoint)
        prefetched = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW))
        concurrent = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, max_concurrency=4))

    assert ids(sequential) == ALL_ORDER_IDS
    assert prefetched == sequential
    assert concurrent == sequential
    # Each fetch made the sequential fetch's requests, no more: nothing speculative past the total.
    assert upstream.requests_to(endpoint) == 3 * expected_pages
    assert upstream.page_requests(endpoint) == {page: 3 * n for page, n in requested_once.items()}
    assert fetch_threads() == []


@pytest.mark.parametrize("style", AHEAD_STYLES)
def test_concurrent_pages_resume_from_a_next_state_in_order(style, upstream, connect) -> None:
    endpoint, pagination, expected_pages = STYLES[style]
    with RestApiHook(connect()) as hook:
        first_run = hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, max_concurrency=4)
        done = [next(first_run) for _ in range(2)]
        first_run.close()
        upstream.reset()
        rest = list(
            hook.iter_pages(
                endpoint,
                pagination=pagination,
                params=WINDOW,
                resume_from=done[-1].next_state,
                max_concurrency=3,
            )
        )

    assert ids(done + rest) == ALL_ORDER_IDS
    assert_well_formed(rest, first_number=3)
    assert upstream.page_requests(endpoint) == {page: 1 for page in range(3, expected_pages + 1)}


@pytest.mark.parametrize("style", AHEAD_STYLES)
def test_concurrent_requests_overlap_their_latency(style, upstream, connect) -> None:
    delay = 0.3
    upstream.set_faults({"kind": "slow", "delay": delay, "times": None})
    endpoint, pagination, expected_pages = STYLES[style]
    started = time.monotonic()
    with RestApiHook(connect()) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, max_concurrency=4))
    elapsed = time.monotonic() - started

    assert ids(pages) == ALL_ORDER_IDS
    # Page 1 alone (it states the total), then pages 2-7 four at a time: 3 round trips, not 7.
    assert elapsed < (expected_pages - 2) * delay
    assert upstream.stats()["connections"] >= 3


def test_a_permanent_4xx_in_a_concurrent_fetch_fails_at_once_after_the_pages_before_it(
    upstream, connect
) -> None:
    upstream.set_faults({"kind": "status", "status": 404, "path": "/v1/orders", "page": 3, "times": None})
    endpoint, pagination, _ = STYLES["page_number_total_pages"]
    received: list[Page] = []
    started = time.monotonic()
    with RestApiHook(connect(), retry_policy=RetryPolicy(backoff_initial=5)) as hook:
        pages = hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, max_concurrency=4)
        with pytest.raises(PermanentSourceError, match=r"GET /v1/orders page 3 failed with HTTP 404"):
            received.extend(pages)  # keeps the pages yielded before the error

    assert [page.number for page in received] == [1, 2]
    assert upstream.page_requests(endpoint)[3] == 1  # not retried
    assert time.monotonic() - started < 1.0
    assert fetch_threads() == []


@pytest.mark.parametrize("style", ["cursor", "page_number_total_pages"])
def test_transient_errors_in_a_fetch_thread_are_retried_there(style, upstream, connect) -> None:
    endpoint, pagination, _ = STYLES[style]
    upstream.set_faults({"kind": "status", "status": 503, "path": endpoint, "page": 3, "times": 2})
    with RestApiHook(connect(), retry_policy=FAST_RETRIES) as hook:
        pages = list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, max_concurrency=4))

    assert ids(pages) == ALL_ORDER_IDS
    assert upstream.page_requests(endpoint)[3] == 3


@pytest.mark.parametrize("style", ["link_header", "offset_total"])
def test_retries_exhausted_in_a_fetch_thread_surface_as_retries_exhausted(style, upstream, connect) -> None:
    endpoint, pagination, _ = STYLES[style]
    upstream.set_faults({"kind": "status", "status": 502, "path": endpoint, "page": 2, "times": None})
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
    with (
        RestApiHook(connect(), retry_policy=policy) as hook,
        pytest.raises(RetriesExhaustedError, match=rf"GET {endpoint} page 2: gave up after 3 attempt"),
    ):
        list(hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, max_concurrency=4))

    assert upstream.page_requests(endpoint)[2] == 3
    assert fetch_threads() == []


@pytest.mark.parametrize("style", ["cursor", "page_number_total_pages"])
def test_closing_the_pages_early_stops_the_fetch_threads_even_mid_backoff(style, upstream, connect) -> None:
    endpoint, pagination, _ = STYLES[style]
    # Page 3 keeps failing, and each retry would wait up to 20 s.
    upstream.set_faults({"kind": "status", "status": 503, "path": endpoint, "page": 3, "times": None})
    policy = RetryPolicy(backoff_initial=20, backoff_max=20, max_total_seconds=600)
    with RestApiHook(connect(), retry_policy=policy) as hook:
        pages = hook.iter_pages(endpoint, pagination=pagination, params=WINDOW, max_concurrency=4)
        assert next(pages).number == 1
        assert next(pages).number == 2
        time.sleep(0.3)  # page 3's fetch is in its backoff by now
        assert fetch_threads()
        started = time.monotonic()
        pages.close()
        closed_in = time.monotonic() - started

    assert closed_in < 2.0
    assert fetch_threads() == []
    requests_after_close = upstream.requests_to(endpoint)
    time.sleep(0.2)
    assert upstream.requests_to(endpoint) == requests_after_close


def test_max_concurrency_must_be_positive(connect) -> None:
    with RestApiHook(connect()) as hook, pytest.raises(ValueError, match="max_concurrency"):
        next(hook.iter_pages("/v1/orders", pagination=STYLES["cursor"][1], params=WINDOW, max_concurrency=0))
