"""Which HTTP failures are worth retrying inside the task, and how long to wait before the next try.

Transient: connection errors, timeouts, truncated bodies, 408, 429 and 5xx, and TransientError (the
shared rate limit's store unreachable) — retried with exponential
backoff and full jitter, or after the server's Retry-After (both RFC 9110 forms, capped). Permanent: any
other 4xx (and unexpected 3xx) — PermanentSourceError (batchkit.errors) at once, so neither this loop nor Airflow's task
retries hammer a request that cannot succeed. When the retries run out, RetriesExhaustedError (an
ordinary exception) leaves the decision to the task's own retries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
import tenacity

from batchkit.errors import PermanentSourceError

T = TypeVar("T")

TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
BODY_EXCERPT_CHARS = 200


class TransientHttpError(Exception):
    """A response whose status says "try again later"."""

    def __init__(self, request: str, status: int, reason: str, retry_after: float | None, excerpt: str):
        super().__init__(f"{request} answered HTTP {status} {reason}: {excerpt}")
        self.status = status
        self.retry_after = retry_after


class TransientError(Exception):
    """A failure outside the HTTP exchange that is retried like one, e.g. the shared rate limit's store
    being unreachable (batchkit.extract.ratelimit.RateLimitStoreError)."""


class RetriesExhaustedError(Exception):
    """A request still failed transiently when its attempts or time budget ran out."""


def is_transient_status(status: int) -> bool:
    # 408 is the server closing an idle or slow request: as transient as a timeout on our side.
    return status in (408, 429) or 500 <= status <= 599


def is_transient(error: BaseException) -> bool:
    return isinstance(error, (TransientHttpError, TransientError, *TRANSIENT_EXCEPTIONS))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if absent or invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def body_excerpt(response: requests.Response) -> str:
    text = " ".join(response.text[: BODY_EXCERPT_CHARS * 2].split())
    return text[:BODY_EXCERPT_CHARS] or "(empty body)"


def check_status(response: requests.Response, request: str) -> None:
    """Raise for a failed response: TransientHttpError to retry, PermanentSourceError to stop.

    `request` names what was asked ("GET /v1/orders page 3"), never headers or credentials.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    if is_transient_status(status):
        raise TransientHttpError(
            request,
            status,
            response.reason,
            parse_retry_after(response.headers.get("Retry-After")),
            body_excerpt(response),
        )
    raise PermanentSourceError(
        f"{request} failed with HTTP {status} {response.reason} (permanent, not retried): "
        f"{body_excerpt(response)}"
    )


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """The backoff, but never less than the server's Retry-After (capped) when it sent one.

    Retry-After is a floor, not the whole wait: a server answering `Retry-After: 0` to every request
    would otherwise be retried in a tight loop for the policy's whole time budget.
    """

    def __init__(self, fallback: tenacity.wait.wait_base, retry_after_max: float) -> None:
        self.fallback = fallback
        self.retry_after_max = retry_after_max

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        backoff = self.fallback(retry_state)
        if isinstance(error, TransientHttpError) and error.retry_after is not None:
            return max(min(error.retry_after, self.retry_after_max), backoff)
        return backoff


@dataclass(frozen=True)
class RetryPolicy:
    """How one request is retried: a total time budget, full-jitter backoff, Retry-After cap.

    The n-th retry waits a random time in [0, min(backoff_max, backoff_initial * 2**(n-1))] (AWS "full
    jitter"), and never less than the server's Retry-After (capped). No retry starts once `max_total_seconds` since the
    first attempt would be exceeded: the budget, not a count, decides, so an outage shorter than the
    budget is ridden out inside one Airflow try. `max_attempts` (None: no cap) also bounds the count.
    """

    max_attempts: int | None = None
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    max_total_seconds: float = 300.0
    retry_after_max: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("backoff_initial", "backoff_max", "max_total_seconds", "retry_after_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    def call(
        self,
        attempt: Callable[[], T],
        *,
        request: str,
        on_retry: Callable[[tenacity.RetryCallState], None] | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> T:
        """Run `attempt` until it succeeds, fails permanently, or the policy gives up.

        `on_retry` runs before each sleep (retry_state.upcoming_sleep is the wait about to happen).
        `sleep` waits between attempts (time.sleep by default; an Event's wait ends a wait early).
        """

        def give_up(retry_state: tenacity.RetryCallState) -> T:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            raise RetriesExhaustedError(
                f"{request}: gave up after {retry_state.attempt_number} attempt(s) in "
                f"{retry_state.seconds_since_start or 0.0:.1f}s; last error: {error}"
            ) from error

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=_WaitRetryAfterOrBackoff(
                tenacity.wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
                self.retry_after_max,
            ),
            stop=self._stop(),
            before_sleep=on_retry,
            retry_error_callback=give_up,
            **({} if sleep is None else {"sleep": sleep}),
        )
        return retrying(attempt)

    def _stop(self) -> tenacity.stop.stop_base:
        within_budget = tenacity.stop_before_delay(self.max_total_seconds)
        if self.max_attempts is None:
            return within_budget
        return within_budget | tenacity.stop_after_attempt(self.max_attempts)
