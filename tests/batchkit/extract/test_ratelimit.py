"""The cluster-wide rate limit (batchkit.extract.ratelimit): its arithmetic, both stores against the real
Redis and Postgres from several OS processes, RestApiHook end to end, and an unreachable store.

Redis: the session's (tests/conftest.py: TEST_REDIS_URL, else 6379 if it answers, else a redis-server
of its own). Postgres: the session's warehouse database
(tests/conftest.py), through Airflow connection `warehouse` as tasks reach it. Every test uses limit
keys of its own, so reruns and parallel sessions never share a schedule.

The bound every window check asserts, from the GCRA formula (slot = max(now, TAT - tau),
TAT = max(TAT, now) + T, tau = (b - 1) * T):
  Each reservation raises TAT by at least T, and the first one in a window, at slot s1, leaves
  TAT >= s1 + T (TAT_new = max(TAT, now) + T and s1 <= max(TAT, now)). So after k reservations from s1
  on, TAT >= s1 + k*T, and the (k+1)-th gets slot >= TAT - tau >= s1 + k*T - (b - 1)*T. N slots inside
  a half-open window [s1, s1 + W) therefore need (N - b) * T < W, i.e. N <= ceil(W / T) + b - 1:
  for W = 1 s and a whole rate r (T = 1/r exactly), r + b - 1. It is tight: a saturated limit grants b
  slots at once, then one every T, and [s1, s1 + 1 s) holds b + (r - 1) of them.
  Requests happen a little AFTER their slot (the store's reply, the sleep's overshoot, the network):
  observed time = slot + d with 0 <= d <= J. N observations in a window of W - J then have slots less
  than W apart, so the same bound holds for windows of W - J; a full 1-s window of observations can
  hold one more when J < T (slots at s1 and s1 + r*T exactly 1 s apart, the first one delayed more).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from batchkit.extract.pagination import OffsetPagination, PageNumberPagination
from batchkit.extract.ratelimit import (
    MICROS,
    REDIS_KEY_PREFIX,
    STORE_ENV,
    PostgresStore,
    RateLimit,
    RateLimiter,
    RateLimitStoreError,
    RedisStore,
    limiter_for,
    max_in_any_window,
    reserve,
    select_store,
)
from batchkit.extract.retry import RetriesExhaustedError, RetryPolicy, is_transient
from batchkit.hooks.rest_api import RestApiHook
from tests.upstream import Upstream, running_upstream

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SPAWN = multiprocessing.get_context("spawn")
STORES = ["redis", "postgres"]
PROCESS_START_TIMEOUT = 120


def unique_key(label: str) -> str:
    return f"test_{label}_{uuid.uuid4().hex[:12]}"


def gcra_bound(limit: RateLimit, window_us: int) -> int:
    """Most slots in any half-open window of `window_us` (derived in the module docstring)."""
    return -(-window_us // limit.interval_us) + limit.burst - 1


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # the real server must answer: no Redis is a failure here, never a skip
    yield client
    client.close()


def store_spec(kind: str) -> str:
    return REDIS_URL if kind == "redis" else "postgres"


def make_store(kind: str) -> RedisStore | PostgresStore:
    return RedisStore(REDIS_URL) if kind == "redis" else PostgresStore()


def stored_tat(kind: str, key: str, redis_client: redis.Redis, warehouse: psycopg.Connection) -> int | None:
    """The TAT the store holds for `key`, in microseconds since the epoch; None if it holds none."""
    if kind == "redis":
        value = redis_client.get(REDIS_KEY_PREFIX + key)
        return None if value is None else int(value)
    row = warehouse.execute(
        "SELECT (extract(epoch FROM tat) * 1000000)::bigint FROM batch_meta.rate_limits WHERE limit_key = %s",
        (key,),
    ).fetchone()
    return None if row is None else row[0]


def store_clock(kind: str, redis_client: redis.Redis, warehouse: psycopg.Connection) -> int:
    """The store's own clock now, in microseconds since the epoch."""
    if kind == "redis":
        seconds, micros = redis_client.time()
        return seconds * MICROS + micros
    return warehouse.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint").fetchone()[0]


# --- the pure reservation arithmetic ------------------------------------------------------------


def test_a_first_request_goes_now_and_schedules_the_next_one_interval_later() -> None:
    assert reserve(None, 1_000, 100, 0) == (1_000, 1_100)
    # A stale TAT (the limit idled past it) is the same as none.
    assert reserve(900, 1_000, 100, 0) == (1_000, 1_100)


def test_callers_at_one_instant_queue_one_interval_apart() -> None:
    tat, slots = None, []
    for _ in range(4):
        slot, tat = reserve(tat, 0, 100, 0)
        slots.append(slot)
    assert slots == [0, 100, 200, 300]
    assert tat == 400


def test_burst_callers_go_at_once_then_one_per_interval() -> None:
    tat, slots = None, []
    for _ in range(6):
        slot, tat = reserve(tat, 0, 100, 200)  # burst 3: tolerance 2 intervals
        slots.append(slot)
    assert slots == [0, 0, 0, 100, 200, 300]


def test_an_idle_spell_restores_the_burst_and_no_more() -> None:
    tat = None
    for _ in range(3):
        _, tat = reserve(tat, 0, 100, 200)
    # Idle until 1000: the whole burst is back, and the fourth caller waits one interval.
    slots = []
    for _ in range(4):
        slot, tat = reserve(tat, 1_000, 100, 200)
        slots.append(slot)
    assert slots == [1_000, 1_000, 1_000, 1_100]


@pytest.mark.parametrize(("rate", "burst"), [(10, 1), (10, 4), (7, 2), (3, 1), (50, 10)])
def test_no_arrival_pattern_beats_the_window_bound(rate: int, burst: int) -> None:
    limit = RateLimit(rate, burst)
    rng = random.Random(f"{rate}/{burst}")
    window = MICROS
    for _ in range(50):
        tat, now, slots = None, 0, []
        for _ in range(200):
            # Bursts of callers at one instant, idle spells, and everything in between.
            now += rng.choice([0, 0, 0, rng.randrange(limit.interval_us), rng.randrange(3 * window)])
            slot, tat = reserve(tat, now, limit.interval_us, limit.tolerance_us)
            assert slot >= now
            slots.append(slot)
        assert max_in_any_window(slots, window) <= gcra_bound(limit, window) == rate + burst - 1


def test_a_saturated_limit_reaches_the_bound_exactly() -> None:
    limit = RateLimit(10, 3)
    tat, slots = None, []
    for _ in range(40):
        slot, tat = reserve(tat, 0, limit.interval_us, limit.tolerance_us)
        slots.append(slot)
    assert max_in_any_window(slots, MICROS) == 10 + 3 - 1


def test_the_interval_rounds_up_so_rounding_never_exceeds_the_rate() -> None:
    assert RateLimit(3).interval_us == 333_334
    assert RateLimit(10).interval_us == 100_000
    assert RateLimit(0.5, 2).tolerance_us == 2_000_000
    assert gcra_bound(RateLimit(3), MICROS) == 3


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), ("5", 1), (5, 0), (5, 1.5)])
def test_invalid_settings_are_rejected(rate: Any, burst: Any) -> None:
    with pytest.raises(ValueError, match="requests_per_second|burst"):
        RateLimit(rate, burst)


def test_max_in_any_window_counts_half_open_windows() -> None:
    assert max_in_any_window([], 1.0) == 0
    assert max_in_any_window([0.0, 0.5, 1.0, 1.5], 1.0) == 2
    assert max_in_any_window([0.0, 0.5, 0.999, 1.5], 1.0) == 3
    assert max_in_any_window([3.0, 0.0, 3.0, 3.0], 1.0) == 3


# --- which store --------------------------------------------------------------------------------


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(STORE_ENV, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "executor",
    [
        "CeleryExecutor",
        "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
        "LocalExecutor,CeleryExecutor",
    ],
)
def test_celery_with_a_redis_broker_selects_that_redis(no_override, executor: str) -> None:
    broker = "redis://:broker-secret@127.0.0.1:6379/3"  # pragma: allowlist secret
    no_override.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    no_override.setenv("AIRFLOW__CELERY__BROKER_URL", broker)

    store = select_store()

    assert isinstance(store, RedisStore)
    assert store.url == broker
    assert store.name == "Redis at redis://:***@127.0.0.1:6379/3"


@pytest.mark.parametrize(
    ("executor", "broker"),
    [
        ("LocalExecutor", "redis://127.0.0.1:6379/0"),
        ("CeleryExecutor", "amqp://guest@127.0.0.1:5672//"),
    ],
)
def test_otherwise_the_warehouse_postgres_is_the_store(no_override, executor: str, broker: str) -> None:
    no_override.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    no_override.setenv("AIRFLOW__CELERY__BROKER_URL", broker)

    store = select_store()

    assert isinstance(store, PostgresStore)
    assert store.conn_id == "warehouse"


def test_the_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv(STORE_ENV, "postgres")
    assert isinstance(select_store(), PostgresStore)
    monkeypatch.setenv(STORE_ENV, "postgres:other_db")
    assert select_store().conn_id == "other_db"
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv(STORE_ENV, REDIS_URL)
    assert select_store().url == REDIS_URL
    monkeypatch.setenv(STORE_ENV, "memcached://127.0.0.1")
    with pytest.raises(ValueError, match=STORE_ENV):
        select_store()


def test_one_store_object_per_process_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, REDIS_URL)
    first = limiter_for(unique_key("a"), 5)
    second = limiter_for(unique_key("b"), 7, 2)
    assert first.store is second.store
    assert (second.limit.rate, second.limit.burst) == (7, 2)


# --- the stores implement the same formula, on their own clock ----------------------------------


@pytest.mark.parametrize("kind", STORES)
def test_each_store_reserves_exactly_as_the_formula_on_its_own_clock(
    kind: str, redis_client: redis.Redis, warehouse: psycopg.Connection
) -> None:
    store = make_store(kind)
    limit = RateLimit(20, 3)
    key = unique_key(f"formula_{kind}")
    store.reserve(unique_key("warm_up"), limit)  # the Postgres store creates its table on first use
    for _ in range(8):  # no sleeping: the reservations queue into the future, past the burst
        before_tat = stored_tat(kind, key, redis_client, warehouse)
        before = store_clock(kind, redis_client, warehouse)
        reservation = store.reserve(key, limit)
        after = store_clock(kind, redis_client, warehouse)
        expected_slot, expected_tat = reserve(
            before_tat, reservation.now, limit.interval_us, limit.tolerance_us
        )
        assert before <= reservation.now <= after  # the store's clock, not this process's
        assert reservation.slot == expected_slot
        assert stored_tat(kind, key, redis_client, warehouse) == expected_tat


def test_an_idle_redis_key_expires(redis_client: redis.Redis) -> None:
    key = unique_key("expiry")
    RedisStore(REDIS_URL).reserve(key, RateLimit(20))  # TAT = now + 50 ms
    ttl_ms = redis_client.pttl(REDIS_KEY_PREFIX + key)
    assert 0 < ttl_ms <= 51
    time.sleep(0.2)
    assert redis_client.exists(REDIS_KEY_PREFIX + key) == 0


# --- many processes, one limit ------------------------------------------------------------------


def _acquire_from_threads(
    key: str, rate: int, burst: int, threads: int, each: int, ready, start, out
) -> None:
    """A worker process: `threads` threads take `each` slots of one limit after `start`."""
    import threading

    try:
        limiter = limiter_for(key, rate, burst)  # the store BATCHKIT_RATE_LIMIT_STORE names
        taken: list[tuple[int, int]] = []
        lock = threading.Lock()

        def take() -> None:
            for _ in range(each):
                reservation = limiter.acquire()
                woke = time.time_ns() // 1_000
                with lock:
                    taken.append((reservation.slot, woke))

        workers = [threading.Thread(target=take) for _ in range(threads)]
        ready.put(os.getpid())
        start.wait()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        out.put((os.getpid(), taken))
    except BaseException:
        ready.put(-1)
        out.put((os.getpid(), traceback.format_exc()))


def run_processes(target, per_process: list[tuple[Any, ...]]) -> list[tuple[int, Any]]:
    """Spawn one process of `target(*args, ready, start, out)` per args tuple; start them together.

    Each reports `ready` once imported and set up, then waits for `start`, so all of them contend at once.
    """
    ready, start, out = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    children = [SPAWN.Process(target=target, args=(*args, ready, start, out)) for args in per_process]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=PROCESS_START_TIMEOUT)
        start.set()
        results = [out.get(timeout=PROCESS_START_TIMEOUT) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    for pid, result in results:
        assert not isinstance(result, str), f"worker {pid} failed:\n{result}"
    return results


@pytest.mark.slow  # spawns processes that import Airflow
@pytest.mark.parametrize("kind", STORES)
def test_processes_and_threads_share_one_limit(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, store_spec(kind))
    rate, burst, processes, threads, each = 20, 3, 3, 3, 8
    limit = RateLimit(rate, burst)
    total = processes * threads * each

    key = unique_key(f"procs_{kind}")
    results = run_processes(_acquire_from_threads, [(key, rate, burst, threads, each)] * processes)

    slots = [slot for _, taken in results for slot, _ in taken]
    woken = [woke for _, taken in results for _, woke in taken]
    assert len(slots) == total
    bound = gcra_bound(limit, MICROS)
    assert bound == rate + burst - 1
    # The slots the store granted, on its one clock: the exact bound.
    slots_max = max_in_any_window(slots, MICROS)
    # When the callers actually woke (this machine's clock): the bound over windows shortened by the
    # jitter allowance J, and at most one more in a full 1-s window (module docstring).
    jitter_us = 20_000
    woken_max_short = max_in_any_window(woken, MICROS - jitter_us)
    woken_max = max_in_any_window(woken, MICROS)
    # Not starved: after the initial burst the store grants one slot per interval, rate per second.
    span = (max(slots) - min(slots)) / MICROS
    throughput = (total - burst) / span
    print(
        f"\n[{kind}] {processes} processes x {threads} threads, rate {rate}/s burst {burst}: "
        f"max in any 1-s window: granted slots {slots_max}, wake-ups {woken_max} "
        f"({woken_max_short} in {1 - jitter_us / MICROS:.2f} s); bound {bound}; "
        f"throughput {throughput:.2f}/s over {span:.2f} s"
    )
    assert slots_max <= bound
    assert woken_max_short <= bound
    assert woken_max <= bound + 1
    assert 0.9 * rate <= throughput <= rate * 1.0001
    # The processes really contended: each one's slots lie between the others' (one shared schedule).
    spans = [(min(s for s, _ in taken), max(s for s, _ in taken)) for _, taken in results]
    assert all(first < max(last for _, last in spans) for first, _ in spans)
    assert all(last > min(first for first, _ in spans) for _, last in spans)


# --- end to end: RestApiHook from several processes against a real HTTP server ------------------

E2E_PAGE_SIZE = 50
E2E_WINDOW = {"updated_since": "2026-03-01T00:00:00Z", "updated_before": "2026-03-03T00:00:00Z"}
E2E_RECORDS = 2 * 500
E2E_FETCHES = {
    # endpoint, pagination, fetch options: concurrent pages, prefetch, and concurrent offsets
    0: ("/v1/orders", PageNumberPagination(page_size=E2E_PAGE_SIZE, total_pages_field="total_pages"), 3),
    1: ("/v1/offset/orders", OffsetPagination(limit=E2E_PAGE_SIZE), 1),
    2: ("/v1/offset/orders", OffsetPagination(limit=E2E_PAGE_SIZE, total_field="total_records"), 3),
}


def _fetch_through_the_hook(conn_id: str, fetch: int, ready, start, out) -> None:
    """A worker process: one RestApiHook reads every page of its endpoint, records counted."""
    try:
        endpoint, pagination, concurrency = E2E_FETCHES[fetch]
        ready.put(os.getpid())
        start.wait()
        with RestApiHook(conn_id) as hook:
            pages = list(
                hook.iter_pages(
                    endpoint, pagination=pagination, params=E2E_WINDOW, max_concurrency=concurrency
                )
            )
        out.put((os.getpid(), (endpoint, len(pages), sum(len(page.records) for page in pages))))
    except BaseException:
        ready.put(-1)
        out.put((os.getpid(), traceback.format_exc()))


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream("--orders-per-day", "500") as server:
        yield server


@pytest.mark.slow  # spawns processes that import Airflow
@pytest.mark.parametrize("selection", ["celery_redis_broker", "warehouse_postgres"])
def test_the_hook_keeps_one_limit_across_processes(
    selection: str, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No override: the store comes from the deployment's settings, as on a real cluster.
    monkeypatch.delenv(STORE_ENV, raising=False)
    if selection == "celery_redis_broker":
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
        monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", REDIS_URL)
        assert isinstance(select_store(), RedisStore)
    else:
        assert isinstance(select_store(), PostgresStore)
    rate, burst = 15, 2
    limit = RateLimit(rate, burst)
    conn_id = unique_key("e2e")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        upstream.connection_json(requests_per_second=rate, burst=burst),
    )
    upstream.reset()

    results = run_processes(_fetch_through_the_hook, [(conn_id, fetch) for fetch in E2E_FETCHES])

    pages_per_fetch = E2E_RECORDS // E2E_PAGE_SIZE
    for _, (endpoint, pages, records) in results:
        assert records == E2E_RECORDS, endpoint
        assert pages in (pages_per_fetch, pages_per_fetch + 1), endpoint  # +1: an empty last page
    arrivals = upstream.arrivals("/v1/orders") + upstream.arrivals("/v1/offset/orders")
    assert len(arrivals) == sum(pages for _, (_, pages, _) in results)
    bound = gcra_bound(limit, MICROS)
    assert bound == rate + burst - 1
    # Server-side arrival times: the bound over 1-s windows shortened by the jitter allowance J
    # (client-to-server latency and sleep overshoot), at most one more in full 1-s windows.
    jitter = 0.03
    arrivals_max = max_in_any_window(arrivals, 1.0)
    arrivals_max_short = max_in_any_window(arrivals, 1.0 - jitter)
    throughput = (len(arrivals) - burst) / (max(arrivals) - min(arrivals))
    print(
        f"\n[{selection}] {len(results)} processes through RestApiHook, rate {rate}/s burst {burst}: "
        f"{len(arrivals)} requests at the server, max in any 1-s window {arrivals_max} "
        f"({arrivals_max_short} in {1 - jitter:.2f} s); bound {bound}; throughput {throughput:.2f}/s"
    )
    assert arrivals_max_short <= bound
    assert arrivals_max <= bound + 1
    assert throughput >= 0.85 * rate


def test_the_limit_settings_never_become_headers(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = unique_key("headers")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", upstream.connection_json(requests_per_second=5, burst=2)
    )
    with RestApiHook(conn_id) as hook:
        headers = {name.lower() for name in hook.session.headers}
        assert hook._limiter is not None
        assert (hook._limiter.limit.rate, hook._limiter.limit.burst) == (5, 2)
    assert not {"requests_per_second", "burst"} & headers


# --- an unreachable store -----------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_an_unreachable_redis_is_a_transient_error_naming_it(closed_port: int) -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{closed_port}/0"  # pragma: allowlist secret
    key = unique_key("down")
    limiter = RateLimiter(key, RateLimit(5), RedisStore(url, timeout=2))

    with pytest.raises(RateLimitStoreError) as raised:
        limiter.acquire()

    message = str(raised.value)
    assert is_transient(raised.value)
    assert f"Redis at redis://:***@127.0.0.1:{closed_port}/0" in message
    assert repr(key) in message
    assert "hunter2" not in message


def test_an_unreachable_postgres_is_a_transient_error_naming_the_connection(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = unique_key("pg_down")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": closed_port, "login": "nobody"}),
    )
    key = unique_key("down")
    limiter = RateLimiter(key, RateLimit(5), PostgresStore(conn_id))

    with pytest.raises(RateLimitStoreError) as raised:
        limiter.acquire()

    assert is_transient(raised.value)
    assert f"Postgres (Airflow connection {conn_id!r}, table batch_meta.rate_limits)" in str(raised.value)
    assert repr(key) in str(raised.value)


def test_the_hook_retries_an_unreachable_store_and_never_sends_unlimited(
    closed_port: int, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_ENV, f"redis://127.0.0.1:{closed_port}/0")
    conn_id = unique_key("hook_down")
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", upstream.connection_json(requests_per_second=5))
    upstream.reset()
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02, max_total_seconds=30)

    with (
        RestApiHook(conn_id, retry_policy=policy) as hook,
        pytest.raises(RetriesExhaustedError, match=r"gave up after 3 attempt\(s\).*unreachable") as raised,
    ):
        list(hook.iter_pages("/v1/orders", pagination=PageNumberPagination(), params=E2E_WINDOW))

    assert isinstance(raised.value.__cause__, RateLimitStoreError)
    assert f"redis://127.0.0.1:{closed_port}/0" in str(raised.value)
    assert conn_id in str(raised.value)
    assert upstream.stats()["total"] == 0  # not one request went out without the shared limit


def test_rate_limit_is_shared_by_threads_on_one_connection() -> None:
    # The limit lives in the shared store (here the warehouse Postgres), so separate limiter objects of
    # one connection id, as separate hooks or processes hold them, draw from one schedule.
    # Processes and both stores: the tests above.
    rate, per_thread, threads = 20.0, 5, 3
    conn_id = f"shared_{uuid.uuid4().hex}"

    def take() -> None:
        limiter = limiter_for(conn_id, rate)
        for _ in range(per_thread):
            limiter.acquire()

    workers = [threading.Thread(target=take) for _ in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert time.monotonic() - started >= (per_thread * threads - 1) / rate
