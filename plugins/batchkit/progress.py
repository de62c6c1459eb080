"""How far a sync has got: the arithmetic behind its per-page and final log lines, without I/O.

`Progress` follows one run over one interval page by page. The counters it is given are the running
totals of the whole interval (the checkpoint's: pages committed by an earlier, resumed try included);
the rate counts only what this run received, over the time since it started, so a resume does not
inflate it. "Page N of M", the percentage and the ETA need a total the source states (Page.total_pages
or Page.total_records); without one they are left out rather than guessed.

    progress = Progress.start(pages_done=0, received=0)
    snapshot = progress.page(page, received=..., staged=..., quarantined=...)
    bound.info("sync_page_committed", **snapshot.log_fields())
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchkit.pages import Page

Clock = Callable[[], float]


@dataclass(frozen=True)
class PageProgress:
    """Where the interval stands after one page: what one `sync_page_committed` line carries."""

    page: int
    total_pages: int | None  # stated by the source, or derived from its stated record total
    total_records: int | None
    received: int  # running totals over the interval
    staged: int
    quarantined: int
    elapsed_s: float  # since this run started on the interval
    records_per_s: float | None  # records this run received / elapsed_s; None before any time passed
    percent: float | None  # of the stated total, 100.0 on the last page; None without a total
    eta_s: float | None  # time left at the current rate; 0.0 on the last page; None when unknown
    last_page: bool

    def describe(self) -> str:
        """One human line: `page 3 of 7 (42.9%), 450 of 1000 records, 1234.5 records/s, ETA 0.4s`."""
        of = f" of {self.total_pages}" if self.total_pages is not None else ""
        text = f"page {self.page}{of}"
        if self.percent is not None:
            text += f" ({self.percent:.1f}%)"
        records = (
            f"{self.received} of {self.total_records}"
            if self.total_records is not None
            else f"{self.received}"
        )
        text += f", {records} records"
        if self.records_per_s is not None:
            text += f", {self.records_per_s:.1f} records/s"
        if self.eta_s is not None:
            text += f", ETA {format_seconds(self.eta_s)}"
        return text

    def log_fields(self) -> dict[str, Any]:
        """Structured fields for the page's log line (the caller adds the page's own counts)."""
        return {
            "page": self.page,
            "pages_total": self.total_pages,
            "records_total": self.total_records,
            "progress": self.describe(),
            "rows_received_total": self.received,
            "rows_staged_total": self.staged,
            "rows_quarantined_total": self.quarantined,
            "records_per_s": None if self.records_per_s is None else round(self.records_per_s, 1),
            "percent_done": None if self.percent is None else round(self.percent, 1),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "elapsed_s": round(self.elapsed_s, 3),
            "last_page": self.last_page,
        }


@dataclass
class Progress:
    """Tracks one run over an interval; see the module docstring. Not thread-safe (one consumer)."""

    started_at: float
    received_at_start: int  # records of pages committed before this run (a resume), not in the rate
    pages_at_start: int
    clock: Clock = time.monotonic
    total_pages: int | None = None
    total_records: int | None = None
    _largest_page: int = field(default=0, repr=False)

    @classmethod
    def start(cls, *, pages_done: int = 0, received: int = 0, clock: Clock = time.monotonic) -> Progress:
        return cls(started_at=clock(), received_at_start=received, pages_at_start=pages_done, clock=clock)

    def page(self, page: Page, *, received: int, staged: int, quarantined: int) -> PageProgress:
        """The progress once `page` is in; received/staged/quarantined are the interval's running totals."""
        # A total stays known once stated: a page that does not repeat it does not forget it.
        self.total_pages = page.total_pages if page.total_pages is not None else self.total_pages
        self.total_records = page.total_records if page.total_records is not None else self.total_records
        self._largest_page = max(self._largest_page, len(page.records))
        last_page = page.next_state is None
        elapsed = max(0.0, self.clock() - self.started_at)
        received_now = received - self.received_at_start
        rate = received_now / elapsed if elapsed > 0 else None
        pages_now = page.number - self.pages_at_start
        total_pages = self._total_pages(page.number, received, last_page)

        if last_page:
            percent, eta = (
                (100.0, 0.0) if total_pages is not None or self.total_records is not None else (None, None)
            )
        elif self.total_records:
            percent = min(100.0, 100.0 * received / self.total_records)
            eta = eta_seconds(self.total_records - received, rate)
        elif total_pages:
            percent = min(100.0, 100.0 * page.number / total_pages)
            page_rate = pages_now / elapsed if elapsed > 0 else None
            eta = eta_seconds(total_pages - page.number, page_rate)
        else:
            percent = eta = None
        return PageProgress(
            page=page.number,
            total_pages=total_pages,
            total_records=self.total_records,
            received=received,
            staged=staged,
            quarantined=quarantined,
            elapsed_s=elapsed,
            records_per_s=rate,
            percent=percent,
            eta_s=eta,
            last_page=last_page,
        )

    def _total_pages(self, number: int, received: int, last_page: bool) -> int | None:
        if last_page and (self.total_pages is not None or self.total_records is not None):
            return number  # the source said so: this is the last page, whatever was planned
        if self.total_pages is not None:
            return max(self.total_pages, number)
        if self.total_records is not None and self._largest_page:
            # Records stated, pages not: the pages still to come are full pages of the largest seen so
            # far (a server's effective limit), which is exact for offset/limit paging.
            remaining = max(0, self.total_records - received)
            return number + math.ceil(remaining / self._largest_page)
        return None


def eta_seconds(remaining: float, rate: float | None) -> float | None:
    """Seconds to do `remaining` units at `rate` units/s; None without a positive rate."""
    if rate is None or rate <= 0:
        return None
    return max(0.0, remaining) / rate


def format_seconds(seconds: float) -> str:
    """`0.04s`, `4.2s`, `42s`, `3m05s`, `2h01m`: short enough for a log line."""
    if seconds < 1:
        return f"{seconds:.2f}s"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class SyncSummary:
    """What the merge, the step that ends the interval, reports about it on its final line."""

    pages: int
    received: int
    staged: int
    quarantined: int
    inserted: int | None
    updated: int | None
    deleted: int | None
    merge_s: float  # the merge task's own time
    interval_s: float | None  # since the interval's staging started (its checkpoint), to the merge's commit

    @property
    def reconciled(self) -> bool:
        """received = staged + quarantined: every record the source sent is accounted for."""
        return self.received == self.staged + self.quarantined

    def describe(self) -> str:
        """`received 2500 = staged 2498 + quarantined 2 (reconciled); inserted 2400, updated 98, ...`."""
        relation = "=" if self.reconciled else "!="
        verdict = "reconciled" if self.reconciled else "NOT RECONCILED"
        text = (
            f"received {self.received} {relation} staged {self.staged} + quarantined {self.quarantined} "
            f"({verdict}); inserted {self.inserted}, updated {self.updated}, deleted {self.deleted}; "
            f"{self.pages} pages, merge {format_seconds(self.merge_s)}"
        )
        if self.interval_s is not None:
            text += f", interval {format_seconds(self.interval_s)} since staging started"
        return text

    def log_fields(self) -> dict[str, Any]:
        return {
            "summary": self.describe(),
            "reconciled": self.reconciled,
            "pages": self.pages,
            "rows_received": self.received,
            "rows_staged": self.staged,
            "rows_quarantined": self.quarantined,
            "rows_inserted": self.inserted,
            "rows_updated": self.updated,
            "rows_deleted": self.deleted,
            "duration_s": round(self.merge_s, 3),
            "interval_duration_s": None if self.interval_s is None else round(self.interval_s, 3),
        }
