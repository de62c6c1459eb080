"""Client-side rate limit per Airflow connection: a thread-safe token bucket, shared within a process.

Every hook on the same connection (and the same settings) in one worker process draws from one bucket,
so parallel tasks in a process cannot add up past the upstream's limit. Limits across processes or
machines are out of scope: use an Airflow pool on the task for those.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` requests per second on average, at most `burst` back to back after an idle spell."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds slept."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            # Taking the token before sleeping (the balance may go negative) reserves this caller's
            # slot, so concurrent callers queue up one interval apart instead of racing.
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


_buckets: dict[tuple[str, float, int], TokenBucket] = {}
_buckets_lock = threading.Lock()


def bucket_for(conn_id: str, rate: float, burst: int = 1) -> TokenBucket:
    """The process-wide bucket of a connection id at the given settings."""
    key = (conn_id, float(rate), burst)
    with _buckets_lock:
        bucket = _buckets.get(key)
        if bucket is None:
            bucket = _buckets[key] = TokenBucket(rate, burst)
        return bucket
