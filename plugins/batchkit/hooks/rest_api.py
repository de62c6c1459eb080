"""RestApiHook: stream pages of JSON records from a REST API, resiliently, over one keep-alive session.

Built on the HTTP provider's HttpHook, which reads the Airflow connection: base URL (host, schema, port),
basic auth (login/password), verify/proxies, and extra keys as request headers. On top of it:

- Bearer auth: a connection with a password and no login sends `Authorization: Bearer <password>`.
- Timeouts (connect, read) on every request: the `timeout` argument, else the connection extra
  `timeout` (seconds, or [connect, read]), else DEFAULT_TIMEOUT.
- A client-side rate limit per connection id, shared by every process on every machine
  (batchkit.extract.ratelimit): connection extra `requests_per_second` (or the argument) and `burst`.
- Retries inside the task (batchkit.extract.retry), pagination (batchkit.extract.pagination), and resume
  from a Page.next_state.

Only the endpoint, query params and status reach logs and errors; headers (credentials) never do, and
the Task SDK masks the connection's password and extra in task logs.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec
import requests
import tenacity
from airflow.providers.http.hooks.http import HttpHook

from batchkit.errors import DataRejectedError
from batchkit.extract.pagination import PageFormatError, PageRequest, PageResponse, Pagination
from batchkit.extract.ratelimit import RateLimiter, limiter_for
from batchkit.extract.retry import TRANSIENT_EXCEPTIONS, RetryPolicy, check_status
from batchkit.observability import count, get_logger, timing
from batchkit.pages import Page

DEFAULT_TIMEOUT = (5.0, 60.0)
RATE_EXTRA_KEY = "requests_per_second"
BURST_EXTRA_KEY = "burst"

log = get_logger(__name__)


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class RestApiHook(HttpHook):
    """GET paginated JSON from the API behind an Airflow HTTP connection."""

    def __init__(
        self,
        http_conn_id: str,
        *,
        retry_policy: RetryPolicy | None = None,
        timeout: float | tuple[float, float] | None = None,
        requests_per_second: float | None = None,
    ) -> None:
        super().__init__(method="GET", http_conn_id=http_conn_id)
        self.retry_policy = retry_policy or RetryPolicy()
        self._timeout_argument = timeout
        self._rate_argument = requests_per_second
        self._session: requests.Session | None = None
        self._send_options: dict[str, Any] = {}
        self._limiter: RateLimiter | None = None

    def _extract_auth(self, connection: Any) -> Any:
        if not connection.login and connection.password:
            return BearerAuth(connection.password)
        return super()._extract_auth(connection)

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        session = super().get_conn(headers, extra_options)
        # HttpHook turns every unrecognised extra key into a header; these configure the rate limit.
        session.headers.pop(RATE_EXTRA_KEY, None)
        session.headers.pop(BURST_EXTRA_KEY, None)
        return session

    @property
    def session(self) -> requests.Session:
        """The hook's one session: connections are kept alive across pages and retries."""
        if self._session is None:
            options = {} if self._timeout_argument is None else {"timeout": self._timeout_argument}
            self._session = self.get_conn(extra_options=options)
            self._send_options = {
                **self.merged_extra,
                "timeout": _as_timeout(self.merged_extra.get("timeout", DEFAULT_TIMEOUT)),
                "check_response": False,
            }
            extra = self.get_connection(self.http_conn_id).extra_dejson
            rate = self._rate_argument if self._rate_argument is not None else extra.get(RATE_EXTRA_KEY)
            burst = extra.get(BURST_EXTRA_KEY, 1)
            # One limit per connection id across the cluster (every thread, process and worker).
            self._limiter = None if rate is None else limiter_for(self.http_conn_id, float(rate), burst)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> RestApiHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def iter_pages(
        self,
        endpoint: str,
        *,
        pagination: Pagination,
        params: Mapping[str, Any] | None = None,
        resume_from: Mapping[str, Any] | None = None,
        max_concurrency: int = 1,
        prefetch: bool = True,
    ) -> Iterator[Page]:
        """Yield the pages of `endpoint` one at a time, in order; the last one has next_state None.

        An empty result is one empty last page. `resume_from` is a next_state of an earlier Page: the
        pages before it are not requested again and numbering continues. `params` are sent with every
        request except server-given next links, which carry their own query.

        Fetching runs ahead of the consumer on worker threads (network I/O only; the caller's thread
        does the validating and staging): with `prefetch` one background thread requests the next
        page as soon as it has parsed the current one and hands pages over through a queue of one, so a
        latency-bound source costs max(latency, processing) per page, not their sum. With `max_concurrency` > 1 and a style whose responses state the total
        (page_number with total_pages_field, offset with total_field), up to that many requests are in
        flight at once. Either way pages are yielded strictly in order, each page's next_state is the
        one a sequential fetch would give (a page whose real next request differs from the plan drops
        the plan and continues sequentially from it), every request goes through the same rate limit
        and retry policy, and an error raised fetching a page is raised here, with its own type, when
        the consumer reaches that page. Closing the generator early cancels what has not started and
        waits for the requests in flight (their retries stop at once). Memory stays flat: at most
        three pages exist at once with prefetch (the consumer's, the queued one, the one in flight), at
        most `max_concurrency` + 1 with concurrent fetching.
        """
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.session  # noqa: B018 - set up the session, send options and rate limit once, on this thread
        if resume_from is None:
            number, request = 1, pagination.first_request()
        else:
            number, request = PageRequest.from_state(resume_from)
        base_params = dict(params or {})
        concurrency = max_concurrency if pagination.plans_ahead else 1
        log.info(
            "extract_started",
            endpoint=endpoint,
            params=base_params,
            pagination=pagination.style,
            first_page=number,
            max_concurrency=concurrency,
            prefetch=prefetch,
        )

        stop = threading.Event()

        def fetch(number: int, request: PageRequest) -> _Fetched:
            return self._fetch_page(endpoint, pagination, base_params, number, request, stop)

        if not prefetch and concurrency == 1:
            while True:
                fetched = fetch(number, request)
                yield fetched.page
                if fetched.next_request is None:
                    return
                number, request = number + 1, fetched.next_request

        if concurrency == 1:
            yield from _fetched_ahead(fetch, number, request, stop, name=f"fetch {endpoint}")
            return

        # Requests in flight, in page order: (number, request, future).
        in_flight: deque[tuple[int, PageRequest, Future[_Fetched]]] = deque()
        plan: Iterator[PageRequest] | None = None  # requests after the last one in flight
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"fetch {endpoint}")
        try:
            in_flight.append((number, request, pool.submit(fetch, number, request)))
            while in_flight:
                number, request, future = in_flight.popleft()
                fetched = future.result()  # the fetch's own exception, raised on this thread
                following = fetched.next_request
                if in_flight and in_flight[0][1] != following:
                    # The response disagrees with the plan (a short page, a changed total): drop the
                    # speculative requests and go on sequentially from what the response says.
                    log.info("extract_plan_dropped", endpoint=endpoint, page=number, dropped=len(in_flight))
                    _cancel(in_flight)
                    plan = None
                if following is not None:
                    if not in_flight:
                        in_flight.append((number + 1, following, pool.submit(fetch, number + 1, following)))
                        if concurrency > 1:
                            remaining = fetched.remaining_requests
                            plan = (
                                iter(remaining[1:])
                                if remaining is not None and remaining[:1] == [following]
                                else None
                            )
                    while plan is not None and len(in_flight) < concurrency:
                        planned = next(plan, None)
                        if planned is None:
                            plan = None
                            break
                        after = in_flight[-1][0] + 1
                        in_flight.append((after, planned, pool.submit(fetch, after, planned)))
                yield fetched.page
        finally:
            stop.set()
            _cancel(in_flight)
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_page(
        self,
        endpoint: str,
        pagination: Pagination,
        base_params: Mapping[str, Any],
        number: int,
        request: PageRequest,
        stop: threading.Event,
    ) -> _Fetched:
        """One page: request (retried per the policy), parse, and what comes after it."""
        session = self.session
        what = f"GET {endpoint} page {number}"
        started = time.monotonic()
        if request.url is not None:
            url, query = request.url, None
        else:
            url, query = (
                self.url_from_endpoint(endpoint),
                sorted({**base_params, **request.params}.items()),
            )
        prepared = session.prepare_request(requests.Request("GET", url, params=query))
        response, retries = self._send(prepared, endpoint, what, stop)
        records, next_request, remaining, totals = self._parse(response, pagination, request, what)
        seconds = time.monotonic() - started
        latency_ms = round(seconds * 1000, 1)
        # Debug only: the consumer's one line per page (batchkit.sync, `sync_page_committed`) carries the
        # latency and retries from the Page, next to what became of the page's records.
        log.debug(
            "page_fetched",
            endpoint=endpoint,
            page=number,
            rows=len(records),
            latency_ms=latency_ms,
            retries=retries,
        )
        count("extract.pages", endpoint=endpoint)
        count("extract.records", len(records), endpoint=endpoint)
        timing("extract.page_latency", seconds, endpoint=endpoint)
        page = Page(
            number,
            records,
            None if next_request is None else next_request.to_state(number + 1),
            total_pages=totals[0],
            total_records=totals[1],
            latency_ms=latency_ms,
            retries=retries,
        )
        return _Fetched(page, next_request, remaining)

    def _send(
        self,
        prepared: requests.PreparedRequest,
        endpoint: str,
        what: str,
        stop: threading.Event | None = None,
    ) -> tuple[requests.Response, int]:
        """One page's response, retried per the policy; also returns how many retries it took.

        Once `stop` is set (the consumer closed the pages), no further attempt starts and a backoff
        wait ends early: FetchCancelledError instead.
        """
        session = self.session
        retries = 0

        def attempt() -> requests.Response:
            if stop is not None and stop.is_set():
                raise FetchCancelledError(f"{what}: cancelled, the consumer stopped reading pages")
            if self._limiter is not None:
                # Reserves the next cluster-wide slot and sleeps until it; a closed consumer ends the
                # sleep, and then the request is not sent (its slot is lost, the limit kept).
                self._limiter.acquire(sleep=time.sleep if stop is None else stop.wait)
                if stop is not None and stop.is_set():
                    raise FetchCancelledError(f"{what}: cancelled, the consumer stopped reading pages")
            try:
                response = self.run_and_check(session, prepared, self._send_options)
            except TRANSIENT_EXCEPTIONS as error:
                count("http.errors", endpoint=endpoint, error=type(error).__name__)
                raise
            count("http.requests", endpoint=endpoint, status=response.status_code)
            if response.status_code >= 400:
                count("http.errors", endpoint=endpoint, status=response.status_code)
            check_status(response, what)
            return response

        def on_retry(retry_state: tenacity.RetryCallState) -> None:
            nonlocal retries
            retries += 1
            error = retry_state.outcome.exception() if retry_state.outcome else None
            log.warning(
                "request_retry",
                request=what,
                attempt=retry_state.attempt_number,
                wait_s=round(retry_state.upcoming_sleep, 3),
                error=f"{type(error).__name__}: {error}",
            )
            count("http.retries", endpoint=endpoint)

        sleep = None if stop is None else stop.wait
        return self.retry_policy.call(attempt, request=what, on_retry=on_retry, sleep=sleep), retries

    @staticmethod
    def _parse(
        response: requests.Response, pagination: Pagination, request: PageRequest, what: str
    ) -> tuple[
        list[dict[str, Any]], PageRequest | None, list[PageRequest] | None, tuple[int | None, int | None]
    ]:
        # msgspec (an Airflow core dependency) parses a page in about half the time of json.loads, and
        # holds to RFC 8259: NaN, Infinity and numbers beyond float64 are malformed, not guessed at.
        try:
            body = msgspec.json.decode(response.content)
        except msgspec.DecodeError as error:
            raise DataRejectedError(
                f"{what}: response is not valid JSON ({error}); a data error, not retried"
            ) from error
        try:
            records = pagination.records(body)
            parsed = PageResponse(response.url, body, response.headers)
            return (
                records,
                pagination.next_request(request, parsed, records),
                pagination.remaining_requests(request, parsed, records),
                pagination.stated_totals(parsed),
            )
        except PageFormatError as error:
            raise DataRejectedError(f"{what}: {error}") from error


class FetchCancelledError(Exception):
    """A page request abandoned because the consumer closed the pages; never reaches the consumer."""


@dataclass(frozen=True)
class _Fetched:
    page: Page
    next_request: PageRequest | None  # what the response says comes next (None: last page)
    remaining_requests: list[PageRequest] | None  # every request after this page, if knowable


def _fetched_ahead(
    fetch: Callable[[int, PageRequest], _Fetched],
    number: int,
    request: PageRequest,
    stop: threading.Event,
    *,
    name: str,
) -> Iterator[Page]:
    """The pages from one background thread that fetches one page ahead of the consumer.

    The thread requests page n+1 as soon as it has parsed page n, then hands n over through a queue of
    one: at most three pages exist at once (the consumer's, the queued one, the one being fetched).
    Sending right after parsing, while the consumer usually waits for that very page, also keeps the
    request off the consumer's GIL time slices.
    """
    handoff: queue.Queue[_Fetched | BaseException] = queue.Queue(maxsize=1)

    def run() -> None:
        current, following = number, request
        try:
            while not stop.is_set():
                fetched = fetch(current, following)
                handoff.put(fetched)
                if fetched.next_request is None:
                    return
                current, following = current + 1, fetched.next_request
        except BaseException as error:  # handed to the consumer, raised there with its own type
            handoff.put(error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if isinstance(item, BaseException):
                raise item
            yield item.page
            if item.next_request is None:
                return
    finally:
        stop.set()
        # The thread puts at most one more item after `stop` (its fetch in flight, or that fetch's
        # error); emptying the queue once lets that put through, so the join cannot hang on it.
        with contextlib.suppress(queue.Empty):
            handoff.get_nowait()
        thread.join()


def _cancel(in_flight: deque[tuple[int, PageRequest, Future[_Fetched]]]) -> None:
    """Cancel queued fetches; running ones finish (their result is dropped)."""
    for _, _, future in in_flight:
        future.cancel()
    in_flight.clear()


def _as_timeout(value: Any) -> float | tuple[float, float]:
    """requests' timeout from an argument or JSON extra: seconds, or a (connect, read) pair."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return float(value[0]), float(value[1])
    if isinstance(value, int | float) and value > 0:
        return float(value)
    raise ValueError(f"timeout must be seconds or [connect, read] seconds, got {value!r}")
