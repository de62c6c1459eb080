"""The demo upstream as a client sees it: auth, deterministic data, the four pagination styles, faults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from tests.upstream import REPO_ROOT, Upstream, running_upstream
from tools.demo_upstream import Volumes, select

WINDOW = {"updated_since": "2026-05-10T00:00:00Z", "updated_before": "2026-05-12T00:00:00Z"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream("--orders-per-day", "300", "--customers-per-day", "40") as server:
        yield server


@pytest.fixture
def api(upstream: Upstream) -> Iterator[requests.Session]:
    upstream.reset()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {upstream.token}"
        yield session


def get(api: requests.Session, upstream: Upstream, path: str, **params: Any) -> requests.Response:
    return api.get(f"{upstream.url}{path}", params={**WINDOW, **params}, timeout=10)


def all_records(api: requests.Session, upstream: Upstream, resource: str, **params: Any) -> list[dict]:
    """Every record of a window through the page-number style, until an empty page."""
    records, page = [], 1
    while batch := get(api, upstream, f"/v1/{resource}", page=page, page_size=97, **params).json()["data"]:
        records.extend(batch)
        page += 1
    return records


def test_health_is_open_and_data_needs_the_token(upstream: Upstream) -> None:
    assert requests.get(f"{upstream.url}/healthz", timeout=5).status_code == 200
    no_token = requests.get(f"{upstream.url}/v1/orders", params=WINDOW, timeout=5)
    wrong = requests.get(
        f"{upstream.url}/v1/orders", params=WINDOW, headers={"Authorization": "Bearer nope"}, timeout=5
    )
    assert (no_token.status_code, wrong.status_code) == (401, 401)
    assert no_token.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{upstream.url}/_stats", timeout=5).status_code == 401


def test_records_are_deterministic_and_inside_the_window(api, upstream) -> None:
    first = get(api, upstream, "/v1/orders", page=2, page_size=50)
    again = get(api, upstream, "/v1/orders", page=2, page_size=50)
    assert first.content == again.content
    assert first.headers["ETag"] == again.headers["ETag"]

    orders = all_records(api, upstream, "orders")
    assert len(orders) == 2 * 300
    assert len({order["order_id"] for order in orders}) == len(orders)
    assert all("2026-05-10T00:00:00Z" <= order["updated_at"] < "2026-05-12T00:00:00Z" for order in orders)
    # An order's id starts with its day (yyyymmdd) and its order_ts lies in that day.
    assert all(order["order_ts"][:10].replace("-", "") == str(order["order_id"])[:8] for order in orders)
    assert [order["updated_at"] for order in orders] == sorted(order["updated_at"] for order in orders)
    assert all(float(order["amount"]) > 0 for order in orders)
    assert {order["customer_id"] for order in orders} <= {
        c["customer_id"] for c in all_records(api, upstream, "customers")
    }


@pytest.mark.parametrize("resource", ["orders", "customers"])
def test_the_fast_json_encoding_matches_json_dumps(resource) -> None:
    selection = select(
        resource,
        datetime(2026, 5, 10, 23, tzinfo=UTC),
        datetime(2026, 5, 11, 2, tzinfo=UTC),
        Volumes(900, 70),
    )
    records_json, count = selection.records_json(2, 200)
    assert count == len(selection.records(2, 200)) > 0
    assert records_json == json.dumps(selection.records(2, 200), separators=(",", ":"))


def test_adjacent_windows_partition_the_records(api, upstream) -> None:
    """Half-open windows: splitting one at any instant loses and duplicates nothing."""
    whole = all_records(api, upstream, "customers")
    cut = "2026-05-11T07:13:21.5+00:00"
    left = all_records(api, upstream, "customers", updated_before=cut)
    right = all_records(api, upstream, "customers", updated_since=cut)
    assert left + right == whole
    assert left
    assert right
    assert all(c["updated_at"] < "2026-05-11T07:13:21.5" for c in left)


def test_the_four_styles_serve_the_same_records(api, upstream) -> None:
    expected = all_records(api, upstream, "customers")

    by_offset, offset = [], 0
    while batch := get(api, upstream, "/v1/offset/customers", offset=offset, limit=33).json()["data"]:
        by_offset += batch
        offset += len(batch)

    by_cursor, params = [], {"limit": 33}
    while True:
        body = get(api, upstream, "/v1/cursor/customers", **params).json()
        by_cursor += body["data"]
        if body["next_cursor"] is None:
            break
        params = {"limit": 33, "cursor": body["next_cursor"]}

    by_link = []
    response = get(api, upstream, "/v1/link/customers", page_size=33)
    while True:
        by_link += response.json()
        if "next" not in response.links:
            break
        response = api.get(response.links["next"]["url"], timeout=10)

    assert by_offset == by_cursor == by_link == expected


def test_page_number_body_states_its_totals(api, upstream) -> None:
    body = get(api, upstream, "/v1/orders", page=3, page_size=250).json()
    assert {key: body[key] for key in ("page", "page_size", "total_pages", "total_records")} == {
        "page": 3,
        "page_size": 250,
        "total_pages": 3,
        "total_records": 600,
    }
    assert len(body["data"]) == 100


def test_per_day_override_and_etag_304(api, upstream) -> None:
    response = get(api, upstream, "/v1/offset/orders", per_day=5000, limit=10_000)
    assert response.json()["total_records"] == 10_000
    etag = response.headers["ETag"]
    not_modified = api.get(response.url, headers={"If-None-Match": etag}, timeout=10)
    assert (not_modified.status_code, not_modified.content, not_modified.headers["ETag"]) == (304, b"", etag)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"updated_since": None}, "'updated_since' is required"),
        ({"updated_before": "yesterday"}, "'updated_before' is not ISO 8601"),
        ({"updated_before": "2026-05-12T00:00:00"}, "needs a UTC offset"),
        ({"page_size": 10_001}, "'page_size' must be in"),
    ],
)
def test_bad_queries_are_refused_clearly(api, upstream, params, message) -> None:
    response = get(api, upstream, "/v1/orders", **params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_status_faults_hit_exactly_times_matching_requests(api, upstream) -> None:
    upstream.set_faults(
        {"kind": "status", "status": 503, "path": "/v1/orders", "page": 2, "times": 2},
        {"kind": "status", "status": 429, "path": "/v1/orders", "page": 3, "retry_after": 7},
        {
            "kind": "status",
            "status": 429,
            "path": "/v1/orders",
            "page": 4,
            "retry_after": 60,
            "retry_after_format": "http_date",
        },
    )
    statuses = [get(api, upstream, "/v1/orders", page=page).status_code for page in (1, 2, 2, 2, 1)]
    assert statuses == [200, 503, 503, 200, 200]

    seconds_form = get(api, upstream, "/v1/orders", page=3)
    assert (seconds_form.status_code, seconds_form.headers["Retry-After"]) == (429, "7")
    date_form = get(api, upstream, "/v1/orders", page=4)
    retry_at = parsedate_to_datetime(date_form.headers["Retry-After"])
    assert date_form.status_code == 429
    assert 58 <= (retry_at - datetime.now(UTC)).total_seconds() <= 61
    assert get(api, upstream, "/v1/orders", page=3).status_code == 200

    assert upstream.page_requests("/v1/orders") == {1: 2, 2: 3, 3: 2, 4: 1}
    assert upstream.stats()["total"] == 8


def test_reset_slow_and_malformed_faults(api, upstream) -> None:
    upstream.set_faults(
        {"kind": "reset", "path": "/v1/cursor/orders"},
        {"kind": "slow", "delay": 0.5, "path": "/v1/offset/orders"},
        {"kind": "malformed_json", "path": "/v1/link/orders"},
    )
    with pytest.raises(requests.ConnectionError):
        get(api, upstream, "/v1/cursor/orders")
    assert get(api, upstream, "/v1/cursor/orders").status_code == 200

    with pytest.raises(requests.ReadTimeout):
        api.get(f"{upstream.url}/v1/offset/orders", params=WINDOW, timeout=(2, 0.2))
    started = time.monotonic()
    assert get(api, upstream, "/v1/offset/orders").status_code == 200
    assert time.monotonic() - started < 0.5

    malformed = get(api, upstream, "/v1/link/orders")
    assert malformed.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        malformed.json()
    assert get(api, upstream, "/v1/link/orders").json()


def test_bad_records_fault_corrupts_the_given_positions(api, upstream) -> None:
    clean = get(api, upstream, "/v1/offset/orders", limit=100).json()["data"]
    upstream.set_faults(
        {"kind": "bad_records", "record_indices": [3], "defect": "negative_amount"},
        {"kind": "bad_records", "record_indices": [5], "defect": "missing_id"},
        {"kind": "bad_records", "record_indices": [7, 150], "defect": "wrong_type"},
    )
    dirty = get(api, upstream, "/v1/offset/orders", limit=100).json()["data"]

    assert dirty[3]["amount"] == "-" + clean[3]["amount"]
    assert "order_id" not in dirty[5]
    assert dirty[7]["order_id"] == f"not-a-number-{clean[7]['order_id']}"
    changed = [i for i in range(100) if dirty[i] != clean[i]]
    assert changed == [3, 5, 7]
    assert (
        get(api, upstream, "/v1/offset/orders", offset=100, limit=100)
        .json()["data"][50]["order_id"]
        .startswith("not-a-number-")
    )


def test_an_invalid_fault_plan_is_refused(api, upstream) -> None:
    response = api.post(f"{upstream.url}/_faults", json={"rules": [{"kind": "explode"}]}, timeout=5)
    assert response.status_code == 400
    assert "invalid fault plan" in response.json()["error"]


def test_faults_can_be_planned_at_start_and_keep_alive_is_on() -> None:
    plan = '{"rules": [{"kind": "status", "status": 500, "times": 1}]}'
    with running_upstream("--faults", plan) as server, requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {server.token}"
        statuses = [
            session.get(f"{server.url}/v1/orders", params=WINDOW, timeout=5).status_code for _ in range(4)
        ]

        assert statuses == [500, 200, 200, 200]
        assert server.stats()["connections"] == 2  # one for the session's four requests, one for /_stats


def test_the_token_is_required_to_start() -> None:
    env = {key: value for key, value in os.environ.items() if key != "DEMO_API_TOKEN"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "tools.demo_upstream", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "DEMO_API_TOKEN" in result.stderr


def test_the_alert_inbox_takes_webhooks_without_a_token_and_lists_them(upstream: Upstream) -> None:
    before = len(upstream.alerts())
    posted = requests.post(f"{upstream.url}/alerts", json={"kind": "task_failed", "dag_id": "d"}, timeout=5)
    garbage = requests.post(f"{upstream.url}/alerts", data=b"not json", timeout=5)

    assert (posted.status_code, garbage.status_code) == (200, 400)
    assert upstream.alerts()[before:] == [{"kind": "task_failed", "dag_id": "d"}]
    assert requests.get(f"{upstream.url}/alerts", timeout=5).status_code == 401


def test_the_report_inbox_is_its_own_and_lists_with_a_token(upstream: Upstream) -> None:
    alerts_before, reports_before = len(upstream.alerts()), len(upstream.reports())
    posted = requests.post(f"{upstream.url}/reports", json={"kind": "sales_daily_report"}, timeout=5)
    secret_path = requests.post(f"{upstream.url}/reports/T0/B0/x", json={"kind": "other_report"}, timeout=5)
    garbage = requests.post(f"{upstream.url}/reports", data=b"not json", timeout=5)

    assert (posted.status_code, secret_path.status_code, garbage.status_code) == (200, 200, 400)
    assert upstream.reports()[reports_before:] == [{"kind": "sales_daily_report"}, {"kind": "other_report"}]
    assert len(upstream.alerts()) == alerts_before, "a report landed in the alerts inbox"
    assert requests.get(f"{upstream.url}/reports", timeout=5).status_code == 401
