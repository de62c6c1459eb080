"""A demo upstream REST API with switchable faults, for tests, benchmarks and `make run`.

    DEMO_API_TOKEN=... python -m tools.demo_upstream --host 127.0.0.1 --port 8081

Data: resources `orders` and `customers`, a fixed number of records per UTC day (`--orders-per-day`,
`--customers-per-day`, env DEMO_ORDERS_PER_DAY / DEMO_CUSTOMERS_PER_DAY, or `?per_day=` per request).
Record i of a day is a pure function of (resource, day, i, per-day counts): its updated_at is
day + floor(i * 86400 / per_day) seconds, and `?updated_since=&updated_before=` (ISO 8601 with an offset,
half-open, any number of days) selects records by updated_at, ordered by updated_at then id.

Every data path needs `Authorization: Bearer <DEMO_API_TOKEN>` (401 otherwise), control paths too.
Pagination, one style per path:
    GET /v1/<resource>           ?page=&page_size=   body {data, page, page_size, total_pages, total_records}
    GET /v1/offset/<resource>    ?offset=&limit=     body {data, offset, limit, total_records}
    GET /v1/cursor/<resource>    ?cursor=&limit=     body {data, next_cursor}  (null on the last page)
    GET /v1/link/<resource>      ?page=&page_size=   body [records...], `Link: <...>; rel="next"`
Pages carry a strong ETag and answer If-None-Match with 304. GET /healthz needs no token.

Control:
    POST /_faults   {"rules": [...]} replaces the fault plan (see FaultRule); GET /_faults shows it
    GET  /_stats    request counts per path and per (path, page position), TCP connections accepted
    GET  /_arrivals [[path, seconds], ...]: when each data request arrived (monotonic clock, the latest
                    ARRIVALS_KEPT), to check a client's rate limit (max requests in any 1-s window)
    POST /_reset    clears faults and stats
Inboxes (the default `alerts_webhook` and `reports_webhook` targets of `make run` and compose, so alerts
and report deliveries are visible offline), one per path, never mixed:
    POST /alerts    stores the JSON body, no token (a webhook receiver; also POST /alerts/<secret path>);
                    GET /alerts lists them (token)
    POST /reports   the same for report deliveries; GET /reports lists them (token)
Faults are count-based, so a test knows exactly which request fails. A rule matches a data path
(`path`, any if omitted) and a page position (`page`, 1-based in the result, any if omitted): page
number for page/link styles, offset // limit + 1 for offset/cursor.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationError

TOKEN_ENV = "DEMO_API_TOKEN"
RESOURCES = ("orders", "customers")
STYLES = {"": "page_number", "offset": "offset", "cursor": "cursor", "link": "link"}
DEFAULT_PER_DAY = {"orders": 500, "customers": 200}
MAX_PAGE_SIZE = 10_000
MAX_DAYS = 3660
# Ids are yyyymmdd * ID_DAY_FACTOR + index: unique across days, and readable.
ID_DAY_FACTOR = 10_000_000
SECONDS_PER_DAY = 86_400
ORDER_STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled")
UNKNOWN_STATUS = "refunded"
COUNTRIES = ("DE", "FR", "NL", "US", "GB", "ES", "IT", "PL", "SE", "JP")
ARRIVALS_KEPT = 100_000


class RequestError(Exception):
    """A request the API refuses, with the status and message to send back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Volumes:
    """Records per day of each resource; orders reference customers of the same day."""

    orders: int
    customers: int

    def per_day(self, resource: str) -> int:
        return self.orders if resource == "orders" else self.customers


@functools.cache
def _clock() -> tuple[str, ...]:
    """Every second of a day as HH:MM:SS: formatting the time per record would cost more than the rest."""
    return tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(SECONDS_PER_DAY))


@functools.lru_cache(maxsize=4096)
def _day_constants(day: date) -> tuple[int, str, int]:
    """(id base, timestamp prefix, ordinal) of a day."""
    return (
        (day.year * 10_000 + day.month * 100 + day.day) * ID_DAY_FACTOR,
        f"{day.isoformat()}T",
        day.toordinal(),
    )


# Field names and how each value is written into JSON: %d for numbers, "%s" for strings. The generated
# strings are plain ASCII without quotes or backslashes, so a %-template renders them as json.dumps would,
# about three times faster than building dicts and dumping them.
FIELDS = {
    "orders": (
        ("order_id", "%d"),
        ("customer_id", "%d"),
        ("order_ts", '"%s"'),
        ("amount", '"%s"'),
        ("status", '"%s"'),
        ("updated_at", '"%s"'),
    ),
    "customers": (
        ("customer_id", "%d"),
        ("name", '"%s"'),
        ("email", '"%s"'),
        ("country", '"%s"'),
        ("updated_at", '"%s"'),
    ),
}
JSON_TEMPLATES = {
    resource: "{" + ",".join(f'"{name}":{spec}' for name, spec in fields) + "}"
    for resource, fields in FIELDS.items()
}


def record_values(resource: str, day: date, index: int, volumes: Volumes) -> tuple[Any, ...]:
    """Record `index` of `day`, in FIELDS order: the same arguments always give the same values."""
    day_key, day_prefix, ordinal = _day_constants(day)
    updated_at = day_prefix + _clock()[index * SECONDS_PER_DAY // volumes.per_day(resource)] + "Z"
    if resource == "orders":
        cents = (index * 7919 + ordinal) % 100_000 + 100
        return (
            day_key + index,
            day_key + (index * 31) % max(volumes.customers, 1),
            updated_at,
            f"{cents // 100}.{cents % 100:02d}",
            ORDER_STATUSES[index % len(ORDER_STATUSES)],
            updated_at,
        )
    customer_id = day_key + index
    return (
        customer_id,
        f"Customer {customer_id}",
        f"customer{customer_id}@example.com",
        COUNTRIES[(index + ordinal) % len(COUNTRIES)],
        updated_at,
    )


@dataclass(frozen=True)
class Selection:
    """The records of one resource with updated_at in [since, before): (day, first, end) index runs."""

    resource: str
    volumes: Volumes
    runs: tuple[tuple[date, int, int], ...]

    @property
    def total(self) -> int:
        return sum(end - first for _, first, end in self.runs)

    def values(self, offset: int, limit: int) -> Iterator[tuple[Any, ...]]:
        """The records at positions [offset, offset + limit) of the selection, as FIELDS-ordered tuples."""
        for day, first, end in self.runs:
            if limit <= 0:
                return
            size = end - first
            if offset >= size:
                offset -= size
                continue
            stop = min(end, first + offset + limit)
            for index in range(first + offset, stop):
                yield record_values(self.resource, day, index, self.volumes)
            limit -= stop - first - offset
            offset = 0

    def records(self, offset: int, limit: int) -> list[dict[str, Any]]:
        names = [name for name, _ in FIELDS[self.resource]]
        return [dict(zip(names, values, strict=True)) for values in self.values(offset, limit)]

    def records_json(self, offset: int, limit: int) -> tuple[str, int]:
        """The JSON array of the records at [offset, offset + limit), and how many it holds."""
        template = JSON_TEMPLATES[self.resource]
        items = [template % values for values in self.values(offset, limit)]
        return "[" + ",".join(items) + "]", len(items)


def select(resource: str, since: datetime, before: datetime, volumes: Volumes) -> Selection:
    per_day = volumes.per_day(resource)
    runs: list[tuple[date, int, int]] = []
    if per_day > 0 and since < before:
        day = since.date()
        if (before.date() - day).days > MAX_DAYS:
            raise RequestError(400, f"updated_since..updated_before spans more than {MAX_DAYS} days")
        while True:
            day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if day_start >= before:
                break
            low = _seconds_ceil(since - day_start)
            high = _seconds_ceil(before - day_start)
            # updated_at(i) = floor(i * 86400 / per_day): the first i at or after `low`, the first at `high`.
            first = _ceil_div(max(low, 0) * per_day, SECONDS_PER_DAY)
            end = min(per_day, _ceil_div(min(high, SECONDS_PER_DAY) * per_day, SECONDS_PER_DAY))
            if first < end:
                runs.append((day, first, end))
            day += timedelta(days=1)
    return Selection(resource, volumes, tuple(runs))


def _seconds_ceil(delta: timedelta) -> int:
    microseconds = (delta.days * SECONDS_PER_DAY + delta.seconds) * 1_000_000 + delta.microseconds
    return -(-microseconds // 1_000_000)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


# --- faults -------------------------------------------------------------------------------------


class FaultRule(BaseModel):
    """One injected fault. `times` counts the matching requests it hits (null: every one).

    kind=status          respond `status` (with Retry-After `retry_after` seconds, as delta-seconds or
                         an HTTP-date per `retry_after_format`, when given)
    kind=slow            sleep `delay` seconds, then answer normally
    kind=reset           close the connection without a response
    kind=malformed_json  200 with a body that is not JSON: truncated (`json_defect` truncated), or
                         carrying a NaN literal (nan), which Python's json module would accept
    kind=bad_records     corrupt the records at `record_indices` (0-based positions in the result) with
                         `defect`: negative_amount, missing_id (drops the first field), wrong_type
                         (the first field becomes a string), unknown_status (a well-formed status the
                         shop never sends: passes the contract, fails the sync's accepted_values check)
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["status", "slow", "reset", "malformed_json", "bad_records"]
    path: str | None = None
    page: PositiveInt | None = None
    times: PositiveInt | None = 1
    status: int = Field(default=503, ge=400, le=599)
    retry_after: NonNegativeFloat | None = None
    retry_after_format: Literal["seconds", "http_date"] = "seconds"
    delay: NonNegativeFloat = 0.0
    defect: Literal["negative_amount", "missing_id", "wrong_type", "unknown_status"] = "negative_amount"
    json_defect: Literal["truncated", "nan"] = "truncated"
    record_indices: list[int] = Field(default_factory=list)


_MALFORMED_BODIES = {
    "truncated": b'{"data": [{"id": 1, "amount": ',
    "nan": b'{"data": [{"id": 1, "amount": NaN}], "next_cursor": null, "next_page": null}',
}


class FaultPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule] = Field(default_factory=list)


class Faults:
    """The current plan and how many hits each rule has left; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._left: list[int | None] = []

    def replace(self, plan: FaultPlan) -> None:
        with self._lock:
            self._rules = list(plan.rules)
            self._left = [rule.times for rule in plan.rules]

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {**rule.model_dump(), "left": left}
                for rule, left in zip(self._rules, self._left, strict=True)
            ]

    def take(self, path: str, page: int) -> FaultRule | None:
        """The first request-level rule matching this request that has hits left; uses one hit."""
        with self._lock:
            for position, rule in enumerate(self._rules):
                if rule.kind == "bad_records" or not _matches(rule, path, page):
                    continue
                left = self._left[position]
                if left is None:
                    return rule
                if left > 0:
                    self._left[position] = left - 1
                    return rule
        return None

    def record_defects(self, path: str) -> list[FaultRule]:
        with self._lock:
            return [rule for rule in self._rules if rule.kind == "bad_records" and _matches(rule, path, None)]


def _matches(rule: FaultRule, path: str, page: int | None) -> bool:
    return (rule.path is None or rule.path == path) and (
        rule.page is None or page is None or rule.page == page
    )


def corrupt(records: list[dict[str, Any]], offset: int, rules: list[FaultRule]) -> list[dict[str, Any]]:
    """A copy of a page's records with the defects of `rules` applied at their result positions."""
    records = [dict(item) for item in records]
    for rule in rules:
        for position in rule.record_indices:
            if not offset <= position < offset + len(records):
                continue
            item = records[position - offset]
            id_field = next(iter(item))
            if rule.defect == "negative_amount" and "amount" in item:
                item["amount"] = f"-{item['amount']}"
            elif rule.defect == "missing_id":
                del item[id_field]
            elif rule.defect == "wrong_type":
                item[id_field] = f"not-a-number-{item[id_field]}"
            elif rule.defect == "unknown_status" and "status" in item:
                item["status"] = UNKNOWN_STATUS
    return records


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: Counter[str] = Counter()
        self._pages: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self._arrivals: deque[tuple[str, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._connections = 0

    def connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    def count(self, path: str, page: int | None) -> None:
        arrived = time.monotonic()
        with self._lock:
            self._arrivals.append((path, arrived))
            self._paths[path] += 1
            if page is not None:
                self._pages[path][page] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self._paths.values()),
                "connections": self._connections,
                "paths": dict(self._paths),
                "pages": {path: {str(k): v for k, v in sorted(c.items())} for path, c in self._pages.items()},
            }

    def arrivals(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._arrivals)

    def clear(self) -> None:
        with self._lock:
            self._arrivals.clear()
            self._paths.clear()
            self._pages.clear()
            self._connections = 0


# --- pages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageQuery:
    """A data request, parsed: which records, which slice, and how the style numbers it."""

    style: str
    resource: str
    since: datetime
    before: datetime
    per_day: int
    offset: int
    limit: int
    base_url: str
    query: tuple[tuple[str, str], ...]

    @property
    def position(self) -> int:
        return self.offset // self.limit + 1


@dataclass(frozen=True)
class RenderedPage:
    body: bytes
    etag: str
    headers: tuple[tuple[str, str], ...]


def parse_query(style: str, resource: str, raw_query: str, base_url: str, volumes: Volumes) -> PageQuery:
    values = {name: items[-1] for name, items in parse_qs(raw_query, keep_blank_values=True).items()}
    since = _instant(values, "updated_since")
    before = _instant(values, "updated_before")
    per_day = _integer(values, "per_day", volumes.per_day(resource), minimum=0, maximum=ID_DAY_FACTOR - 1)
    if style in ("page_number", "link"):
        limit = _integer(values, "page_size", 100, minimum=1, maximum=MAX_PAGE_SIZE)
        offset = (_integer(values, "page", 1, minimum=1) - 1) * limit
    else:
        limit = _integer(values, "limit", 100, minimum=1, maximum=MAX_PAGE_SIZE)
        if style == "offset":
            offset = _integer(values, "offset", 0, minimum=0)
        else:
            offset = _decode_cursor(values["cursor"]) if values.get("cursor") else 0
    return PageQuery(
        style, resource, since, before, per_day, offset, limit, base_url, tuple(sorted(values.items()))
    )


def _instant(values: dict[str, str], name: str) -> datetime:
    if name not in values:
        raise RequestError(400, f"query parameter {name!r} is required (ISO 8601 with a UTC offset)")
    try:
        value = datetime.fromisoformat(values[name])
    except ValueError:
        raise RequestError(400, f"query parameter {name!r} is not ISO 8601: {values[name]!r}") from None
    if value.tzinfo is None:
        raise RequestError(400, f"query parameter {name!r} needs a UTC offset: {values[name]!r}")
    return value.astimezone(UTC)


def _integer(
    values: dict[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    if name not in values:
        return default
    try:
        value = int(values[name])
    except ValueError:
        raise RequestError(400, f"query parameter {name!r} is not an integer: {values[name]!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise RequestError(400, f"query parameter {name!r} must be in [{minimum}, {maximum or '∞'}]: {value}")
    return value


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, offset = text.split(":")
        if prefix != "offset" or int(offset) < 0:
            raise ValueError(text)
        return int(offset)
    except ValueError:
        raise RequestError(400, f"invalid cursor {cursor!r}") from None


# Stands in for the records array while the envelope is dumped; the array is spliced in as text.
_RECORDS_SLOT = "@@records@@"


def page_envelope(query: PageQuery, count: int, total: int) -> tuple[Any, list[tuple[str, str]]]:
    """The JSON document (records in _RECORDS_SLOT) and extra headers of a page in the query's style."""
    after = query.offset + count
    if query.style == "page_number":
        body = {
            "data": _RECORDS_SLOT,
            "page": query.position,
            "page_size": query.limit,
            "total_pages": _ceil_div(total, query.limit),
            "total_records": total,
        }
        return body, []
    if query.style == "offset":
        return {
            "data": _RECORDS_SLOT,
            "offset": query.offset,
            "limit": query.limit,
            "total_records": total,
        }, []
    if query.style == "cursor":
        return {"data": _RECORDS_SLOT, "next_cursor": _encode_cursor(after) if after < total else None}, []
    headers = []
    if after < total:
        params = {k: v for k, v in query.query if k not in ("page", "page_size")}
        params.update(page=str(query.position + 1), page_size=str(query.limit))
        next_url = f"{query.base_url}?{urlencode(sorted(params.items()))}"
        headers.append(("Link", f'<{next_url}>; rel="next"'))
    return _RECORDS_SLOT, headers


def render(query: PageQuery, volumes: Volumes, defects: list[FaultRule]) -> RenderedPage:
    if not defects:
        return _render_cached(query, volumes)
    selection = select(query.resource, query.since, query.before, _with_per_day(volumes, query))
    records = corrupt(selection.records(query.offset, query.limit), query.offset, defects)
    return _encode(query, json.dumps(records, separators=(",", ":")), len(records), selection.total)


@functools.lru_cache(maxsize=256)
def _render_cached(query: PageQuery, volumes: Volumes) -> RenderedPage:
    selection = select(query.resource, query.since, query.before, _with_per_day(volumes, query))
    return _encode(query, *selection.records_json(query.offset, query.limit), selection.total)


def _with_per_day(volumes: Volumes, query: PageQuery) -> Volumes:
    if query.resource == "orders":
        return Volumes(orders=query.per_day, customers=volumes.customers)
    return Volumes(orders=volumes.orders, customers=query.per_day)


def _encode(query: PageQuery, records_json: str, count: int, total: int) -> RenderedPage:
    document, headers = page_envelope(query, count, total)
    envelope = json.dumps(document, separators=(",", ":"))
    body = envelope.replace(f'"{_RECORDS_SLOT}"', records_json, 1).encode()
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    return RenderedPage(body, etag, tuple(headers))


# --- HTTP ---------------------------------------------------------------------------------------


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], token: str, volumes: Volumes) -> None:
        super().__init__(address, Handler)
        self.token = token
        self.volumes = volumes
        self.faults = Faults()
        self.stats = Stats()
        self.alerts: list[Any] = []
        self.reports: list[Any] = []
        self.alerts_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up is business as usual here, not a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"
    # Header and body go out in separate writes; without TCP_NODELAY, Nagle + delayed ACK stall each.
    disable_nagle_algorithm = True
    timeout = 120

    def setup(self) -> None:
        super().setup()
        self.server.stats.connection_opened()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a log line per request would cost more than serving the page."""

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, handler: Callable[[str, str], None]) -> None:
        parts = urlsplit(self.path)
        try:
            handler(parts.path, parts.query)
        except RequestError as error:
            self._send_json(error.status, {"error": str(error)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _get(self, path: str, raw_query: str) -> None:
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
            return
        route = _route(path)
        query: PageQuery | None = None
        invalid: RequestError | None = None
        if route is not None:
            try:
                query = parse_query(*route, raw_query, self._base_url(path), self.server.volumes)
            except RequestError as error:
                invalid = error
            self.server.stats.count(path, None if query is None else query.position)
        self._authorize()
        if path == "/_stats":
            self._send_json(200, self.server.stats.snapshot())
        elif path == "/_arrivals":
            self._send_json(200, {"arrivals": self.server.stats.arrivals()})
        elif path == "/_faults":
            self._send_json(200, {"rules": self.server.faults.describe()})
        elif path in INBOXES:
            with self.server.alerts_lock:
                self._send_json(200, {path[1:]: list(getattr(self.server, path[1:]))})
        elif invalid is not None:
            raise invalid
        elif query is None:
            raise RequestError(404, f"no such path: {path}")
        else:
            self._serve_page(path, query)

    def _post(self, path: str, raw_query: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # `/alerts/<secret path>` too: a webhook whose secret is its path, as Slack's are.
        inbox = _inbox(path)
        if inbox is not None:
            self._receive(inbox, body)
            return
        self._authorize()
        if path == "/_faults":
            try:
                plan = FaultPlan.model_validate_json(body or b"{}")
            except ValidationError as error:
                raise RequestError(400, f"invalid fault plan: {error}") from None
            self.server.faults.replace(plan)
            self._send_json(200, {"rules": self.server.faults.describe()})
        elif path == "/_reset":
            self.server.faults.replace(FaultPlan())
            self.server.stats.clear()
            self._send_json(200, {"status": "reset"})
        else:
            raise RequestError(404, f"no such path: {path}")

    def _receive(self, inbox: str, body: bytes) -> None:
        what = INBOXES[inbox]
        try:
            document = json.loads(body)
        except json.JSONDecodeError as error:
            raise RequestError(400, f"{inbox}: the body must be a JSON document: {error}") from None
        with self.server.alerts_lock:
            getattr(self.server, inbox[1:]).append(document)
        print(f"{what} received: {json.dumps(document)[:500]}", file=sys.stderr, flush=True)
        self._send_json(200, {"status": "received"})

    def _authorize(self) -> None:
        expected = f"Bearer {self.server.token}".encode()
        given = self.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise RequestError(401, "missing or invalid bearer token")

    def _serve_page(self, path: str, query: PageQuery) -> None:
        fault = self.server.faults.take(path, query.position)
        if fault is not None:
            if fault.kind == "reset":
                # Linger 0: closing sends a TCP RST, as a crashed proxy or server would.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            if fault.kind == "status":
                headers = [] if fault.retry_after is None else [("Retry-After", _retry_after(fault))]
                self._send_json(fault.status, {"error": f"injected fault: HTTP {fault.status}"}, headers)
                return
            if fault.kind == "malformed_json":
                self._send(200, _MALFORMED_BODIES[fault.json_defect], [("Content-Type", "application/json")])
                return
            time.sleep(fault.delay)
        page = render(query, self.server.volumes, self.server.faults.record_defects(path))
        if page.etag in _etags(self.headers.get("If-None-Match")):
            self._send(304, b"", [("ETag", page.etag)])
            return
        self._send(200, page.body, [("Content-Type", "application/json"), ("ETag", page.etag), *page.headers])

    def _base_url(self, path: str) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}{path}"

    def _send_json(self, status: int, document: Any, headers: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(document).encode()
        self._send(status, body, [("Content-Type", "application/json"), *(headers or [])])

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        for name, value in headers:
            self.send_header(name, value)
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


# Inbox path -> what it receives (in messages). The DemoServer attribute is the path without its slash.
INBOXES = {"/alerts": "alert", "/reports": "report"}


def _inbox(path: str) -> str | None:
    """The inbox a POST to `path` lands in: `/alerts`, `/alerts/<secret path>`, `/reports`, ..."""
    for inbox in INBOXES:
        if path == inbox or path.startswith(inbox + "/"):
            return inbox
    return None


def _route(path: str) -> tuple[str, str] | None:
    """(style, resource) of a data path, None for any other path."""
    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3) or parts[0] != "v1" or parts[-1] not in RESOURCES:
        return None
    style = STYLES.get(parts[1] if len(parts) == 3 else "")
    return None if style is None else (style, parts[-1])


def _retry_after(fault: FaultRule) -> str:
    seconds = fault.retry_after or 0.0
    if fault.retry_after_format == "http_date":
        return formatdate(time.time() + seconds, usegmt=True)
    return str(round(seconds))


def _etags(header: str | None) -> set[str]:
    return {tag.strip() for tag in header.split(",")} if header else set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port (printed on start)")
    parser.add_argument(
        "--orders-per-day",
        type=int,
        default=int(os.environ.get("DEMO_ORDERS_PER_DAY", DEFAULT_PER_DAY["orders"])),
    )
    parser.add_argument(
        "--customers-per-day",
        type=int,
        default=int(os.environ.get("DEMO_CUSTOMERS_PER_DAY", DEFAULT_PER_DAY["customers"])),
    )
    parser.add_argument("--faults", help="a JSON fault plan to start with, as POST /_faults takes it")
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"set {TOKEN_ENV}: the bearer token clients must send")
    server = DemoServer((args.host, args.port), token, Volumes(args.orders_per_day, args.customers_per_day))
    if args.faults:
        server.faults.replace(FaultPlan.model_validate_json(args.faults))
    host, port = server.server_address[:2]
    print(f"demo upstream listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
