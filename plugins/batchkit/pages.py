"""One page of records from a source, and where to resume after it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Page:
    number: int  # 1-based position in this extraction (continues after a resume)
    records: list[dict[str, Any]]  # the page's records as parsed JSON objects
    # JSON-able state that requests the page after this one; None = last page
    next_state: Mapping[str, Any] | None
    # The fields below describe the fetch, not the page: two fetches of one page compare equal.
    # What the source states about the whole extraction, when its response says (None: it does not):
    # the number of pages (page_number pagination with total_pages_field) or of records (offset
    # pagination with total_field). Used for "page N of M" and an ETA (batchkit.progress).
    total_pages: int | None = field(default=None, compare=False)
    total_records: int | None = field(default=None, compare=False)
    # How the fetch went: wall time of the request (retries and backoff included) and retries taken.
    latency_ms: float | None = field(default=None, compare=False)
    retries: int = field(default=0, compare=False)
