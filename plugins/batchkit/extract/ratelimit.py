"""Client-side rate limit of a source, enforced across the whole cluster: every thread, process and machine.

Declared once, on the source's Airflow HTTP connection extra (batchkit.hooks.rest_api):
`requests_per_second` (the sustained rate r) and `burst` (b, default 1: how many requests may go back
to back after an idle spell). Every RestApiHook on that connection id, in any pool slot, LocalExecutor
child or Celery worker, draws from one shared limit keyed by the connection id, so N processes get r
requests per second between them, not N * r.

The algorithm is GCRA (the generic cell rate algorithm, "virtual scheduling") with reservations, the
same formula in three places: `reserve` below (pure; unit tests and the reference), the Lua script of
RedisStore and the one SQL statement of PostgresStore. With T = 1/r (rounded UP to a whole microsecond,
so the limit is never exceeded by rounding) and tolerance tau = (b - 1) * T, the store keeps one value
per limit, the theoretical arrival time TAT, and each acquire atomically does

    slot = max(now, TAT - tau)        # when this caller may send
    TAT  = max(TAT, now) + T          # (a missing TAT counts as now)

then the caller sleeps until `slot`: no polling, no retry loop, and concurrent callers queue up one
interval apart instead of racing. `now` is the store's clock (Redis `TIME`, Postgres
`clock_timestamp()` taken after the row lock), so machines with skewed clocks still agree.
What this guarantees: in any half-open window of W seconds the slots number at most
ceil(W * r) + b - 1; for W = 1 s and a whole r, r + b - 1 (the proof is in
tests/batchkit/extract/test_ratelimit.py). Requests reach the source a little after their slot (the reply
from the store, the sleep's overshoot, the network), unevenly, so a source counting per second can see
one request more than that: declare the rate a little below the source's real limit.

Which store: `select_store` (one rule, documented there) picks Redis when Airflow runs Celery with a
redis:// broker, else the warehouse Postgres; BATCHKIT_RATE_LIMIT_STORE overrides. If the store cannot
be reached, acquire raises RateLimitStoreError, a transient error (batchkit.extract.retry retries it
like a connection error) naming the store and the connection: the limit never silently falls back to
a per-process one.

Verify it: collect the source's request timestamps (its access log, or the demo upstream's
GET /_arrivals) and compute `max_in_any_window(timestamps, 1.0)`: at most r + b - 1 (+ 1 for jitter).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from batchkit.extract.retry import TransientError

STORE_ENV = "BATCHKIT_RATE_LIMIT_STORE"
# The warehouse's Airflow connection id (batchkit.hooks.warehouse.WarehouseHook.default_conn_name).
WAREHOUSE_CONN_ID = "warehouse"
REDIS_KEY_PREFIX = "batchkit:ratelimit:"
MICROS = 1_000_000
# Connect and read timeout of the Redis client: an unreachable store fails the acquire within this.
REDIS_TIMEOUT_SECONDS = 5.0

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class RateLimit:
    """`rate` requests per second sustained, at most `burst` back to back after an idle spell."""

    rate: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.rate, int | float) or isinstance(self.rate, bool) or not self.rate > 0:
            raise ValueError(f"requests_per_second must be a positive number, got {self.rate!r}")
        if not math.isfinite(self.rate):
            raise ValueError(f"requests_per_second must be finite, got {self.rate!r}")
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 1:
            raise ValueError(f"burst must be a whole number of at least 1, got {self.burst!r}")

    @property
    def interval_us(self) -> int:
        """T: microseconds between slots, rounded up (the limit is never exceeded by rounding)."""
        return max(1, math.ceil(MICROS / self.rate))

    @property
    def tolerance_us(self) -> int:
        """tau = (burst - 1) * T: how far ahead of the schedule a caller may go after an idle spell."""
        return (self.burst - 1) * self.interval_us


def reserve(tat: N | None, now: N, interval: N, tolerance: N) -> tuple[N, N]:
    """GCRA with reservations: (the caller's slot, the new TAT), in any one unit of time.

    `tat` is the stored theoretical arrival time (None: nothing stored, e.g. expired), `now` the store's
    clock. The Lua script of RedisStore and the statement of PostgresStore implement exactly this.
    """
    base = now if tat is None or tat < now else tat
    return max(now, base - tolerance), base + interval


def max_in_any_window(times: Iterable[float], window: float) -> int:
    """The most timestamps in any half-open window [t, t + window): how to check a limit was kept."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - window:
            first += 1
        best = max(best, last - first + 1)
    return best


@dataclass(frozen=True)
class Reservation:
    """One acquired slot, in the store's clock (microseconds since the Unix epoch)."""

    slot: int
    now: int

    @property
    def wait(self) -> float:
        """Seconds from the reservation until the slot."""
        return max(0, self.slot - self.now) / MICROS


class RateLimitStoreError(TransientError):
    """The shared store of a rate limit cannot be reached; retried like any transient failure."""


class RateLimitStore(Protocol):
    """Where the TAT of every limit lives; `reserve` is one atomic round trip."""

    @property
    def name(self) -> str:
        """The store for messages: kind and location, never a password."""
        ...

    def reserve(self, key: str, limit: RateLimit) -> Reservation: ...


class RedisStore:
    """The TAT in one Redis key per limit, updated by one Lua script (EVALSHA) on the server's clock.

    The key expires once its TAT has passed (an idle limit is the same as a missing key).
    """

    # KEYS[1]: the limit; ARGV[1]: T, ARGV[2]: tau, in microseconds. The same formula as `reserve`.
    # Microseconds since the epoch (~1.8e15) are exact in Lua's doubles (< 2^53), but Lua's tostring
    # keeps 14 digits, so numbers leave the script through string.format('%.0f').
    SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = math.max(tonumber(stored), now)
end
local slot = math.max(now, tat - tolerance)
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1))
return {string.format('%.0f', slot), string.format('%.0f', now)}
"""

    def __init__(self, url: str, *, timeout: float = REDIS_TIMEOUT_SECONDS) -> None:
        import redis  # the Celery provider's dependency; only needed when Redis is the store

        self.url = url
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        self._client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self._script = self._client.register_script(self.SCRIPT)

    @property
    def name(self) -> str:
        return f"Redis at {redact_url(self.url)}"

    def key(self, key: str) -> str:
        return REDIS_KEY_PREFIX + key

    def reserve(self, key: str, limit: RateLimit) -> Reservation:
        try:
            slot, now = self._script(keys=[self.key(key)], args=[limit.interval_us, limit.tolerance_us])
        except self._errors as error:
            raise _unreachable(self, key, error) from error
        return Reservation(int(slot), int(now))


class PostgresStore:
    """The TAT in table batch_meta.rate_limits of the warehouse, updated by one atomic statement.

    INSERT ... ON CONFLICT DO UPDATE takes the row lock first and only then evaluates its SET, so
    `clock_timestamp()` there is the time the caller's turn came: callers on every machine are ordered
    by the row lock and timed by the database's one clock. The table is UNLOGGED (a crash forgets the
    schedule, which only allows one fresh burst), so an acquire costs no WAL flush. One connection per
    process, shared by its threads; a broken one is replaced on the next acquire.
    """

    # The same formula as `reserve`: greatest(NULL, n) is n, and slot = max(now, TAT_old - tau)
    # = max(now, TAT_new - T - tau), since TAT_new = max(TAT_old, now) + T.
    STATEMENT = """
        INSERT INTO batch_meta.rate_limits AS r (limit_key, tat, updated_at)
        SELECT %(key)s, n + %(interval)s, n FROM (SELECT clock_timestamp() AS n) AS clock
        ON CONFLICT (limit_key) DO UPDATE
           SET (tat, updated_at) = (
               SELECT greatest(r.tat, n) + %(interval)s, n FROM (SELECT clock_timestamp() AS n) AS clock
           )
        RETURNING greatest(updated_at, tat - %(interval)s - %(tolerance)s) AS slot, updated_at AS now
    """

    def __init__(self, conn_id: str = WAREHOUSE_CONN_ID) -> None:
        self.conn_id = conn_id
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()

    @property
    def name(self) -> str:
        return f"Postgres (Airflow connection {self.conn_id!r}, table batch_meta.rate_limits)"

    def reserve(self, key: str, limit: RateLimit) -> Reservation:
        import psycopg

        parameters = {
            "key": key,
            "interval": timedelta(microseconds=limit.interval_us),
            "tolerance": timedelta(microseconds=limit.tolerance_us),
        }
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connection is not ours to use or close
                self._conn, self._pid = None, os.getpid()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                slot, now = self._conn.execute(self.STATEMENT, parameters).fetchone()
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                self._discard()
                raise _unreachable(self, key, error) from error
        return Reservation(_micros(slot), _micros(now))

    def _connect(self) -> Any:
        from batchkit.hooks.warehouse import WarehouseHook
        from batchkit.migrations import require_current

        conn = WarehouseHook(postgres_conn_id=self.conn_id).get_conn()
        try:
            conn.autocommit = True
            require_current(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _discard(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken; the next acquire connects anew
                pass
            self._conn = None


class RateLimiter:
    """One limit (key and settings) in one store; `acquire` before every request."""

    def __init__(self, key: str, limit: RateLimit, store: RateLimitStore) -> None:
        self.key = key
        self.limit = limit
        self.store = store

    def acquire(self, *, sleep: Callable[[float], Any] = time.sleep) -> Reservation:
        """Reserve the next slot of the limit (one atomic round trip) and sleep until it.

        Raises RateLimitStoreError (transient) when the store cannot be reached. `sleep` may end early
        (an Event's wait): the caller must then not send the request, its slot is simply lost.
        """
        reservation = self.store.reserve(self.key, self.limit)
        if reservation.wait > 0:
            sleep(reservation.wait)
        return reservation


def select_store() -> RateLimitStore:
    """The store every process of this deployment uses; the same answer on every machine of it.

    1. BATCHKIT_RATE_LIMIT_STORE, if set: a redis:// (or rediss://, unix://) URL, or `postgres`
       (the warehouse), or `postgres:<conn_id>` (another Postgres connection).
    2. Else, when Airflow's `[core] executor` includes CeleryExecutor and `[celery] broker_url` is a
       redis:// or rediss:// URL: that Redis (tasks run on workers of several machines, which all
       reach the broker already).
    3. Else Postgres through the warehouse connection (`warehouse`), table batch_meta.rate_limits.

    Both settings are read through airflow.configuration.conf (so AIRFLOW__CORE__EXECUTOR and
    AIRFLOW__CELERY__BROKER_URL, and their _cmd/_secret forms, apply). One store object per process
    and setting, shared by all its hooks and threads.
    """
    spec = os.environ.get(STORE_ENV, "").strip()
    if not spec:
        executor, broker_url = _airflow_settings()
        if _runs_celery(executor) and broker_url.startswith(("redis://", "rediss://")):
            spec = broker_url
        else:
            spec = "postgres"
    return _store(spec)


def limiter_for(conn_id: str, rate: float, burst: int = 1) -> RateLimiter:
    """The cluster-wide limit of an HTTP connection id, in the store `select_store` picks."""
    return RateLimiter(conn_id, RateLimit(rate, burst), select_store())


def redact_url(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _airflow_settings() -> tuple[str, str]:
    try:
        from airflow.configuration import conf
    except ImportError:  # a worker with the Task SDK only: the same settings from the environment
        return (
            os.environ.get("AIRFLOW__CORE__EXECUTOR", ""),
            os.environ.get("AIRFLOW__CELERY__BROKER_URL", ""),
        )
    executor = conf.get("core", "executor", fallback="") or ""
    broker_url = conf.get("celery", "broker_url", fallback="") if _runs_celery(executor) else ""
    return executor, broker_url or ""


def _runs_celery(executor: str) -> bool:
    """`[core] executor` names CeleryExecutor: alone, in a list, by alias or by import path."""
    for item in executor.split(","):
        name = item.strip().rpartition(":")[2].rpartition(".")[2]
        if name == "CeleryExecutor":
            return True
    return False


_stores: dict[str, RateLimitStore] = {}
_stores_lock = threading.Lock()


def _store(spec: str) -> RateLimitStore:
    with _stores_lock:
        store = _stores.get(spec)
        if store is None:
            store = _stores[spec] = _new_store(spec)
        return store


def _new_store(spec: str) -> RateLimitStore:
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    kind, _, conn_id = spec.partition(":")
    if kind == "postgres":
        return PostgresStore(conn_id or WAREHOUSE_CONN_ID)
    raise ValueError(
        f"{STORE_ENV} must be a redis:// URL, 'postgres' or 'postgres:<conn_id>', got {redact_url(spec)!r}"
    )


def _reset_after_fork() -> None:
    # A forked child must not share its parent's sockets (or a lock a parent thread held): new stores.
    global _stores_lock
    _stores.clear()
    _stores_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _unreachable(store: RateLimitStore, key: str, error: BaseException) -> RateLimitStoreError:
    return RateLimitStoreError(
        f"rate limit of connection {key!r}: its shared store, {store.name}, is unreachable "
        f"({type(error).__name__}: {error}); retried as a transient error, never replaced by a "
        "per-process limit"
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)
