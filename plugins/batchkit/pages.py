"""One page of records from a source, and where to resume after it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Page:
    number: int  # 1-based position in this extraction (continues after a resume)
    records: list[dict[str, Any]]  # the page's records as parsed JSON objects
    # JSON-able state that requests the page after this one; None = last page
    next_state: Mapping[str, Any] | None
