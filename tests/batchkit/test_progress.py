"""batchkit.progress: the arithmetic of the per-page and final sync lines, without Airflow or I/O."""

from __future__ import annotations

import pytest

from batchkit.pages import Page
from batchkit.progress import Progress, SyncSummary, eta_seconds, format_seconds


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def page(number: int, rows: int, *, last: bool = False, **totals: int | None) -> Page:
    records = [{"id": i} for i in range(rows)]
    return Page(number, records, None if last else {"page": number + 1}, **totals)


def test_stated_page_total_gives_page_n_of_m_percent_rate_and_eta() -> None:
    clock = FakeClock()
    progress = Progress.start(clock=clock)

    clock.now += 2.0
    first = progress.page(page(1, 100, total_pages=4), received=100, staged=98, quarantined=2)

    assert (first.page, first.total_pages, first.total_records) == (1, 4, None)
    assert (first.received, first.staged, first.quarantined) == (100, 98, 2)
    assert first.records_per_s == pytest.approx(50.0)
    assert first.percent == pytest.approx(25.0)
    # 3 pages left at 1 page / 2 s.
    assert first.eta_s == pytest.approx(6.0)
    assert first.describe() == "page 1 of 4 (25.0%), 100 records, 50.0 records/s, ETA 6.0s"

    clock.now += 2.0
    second = progress.page(page(2, 100), received=200, staged=198, quarantined=2)
    assert second.total_pages == 4, "a total, once stated, is remembered for pages that do not state it"
    assert second.eta_s == pytest.approx(4.0)

    clock.now += 1.0
    last = progress.page(page(3, 10, last=True, total_pages=4), received=210, staged=208, quarantined=2)
    assert (last.total_pages, last.percent, last.eta_s, last.last_page) == (3, 100.0, 0.0, True)


def test_stated_record_total_derives_the_pages_and_the_eta_from_records() -> None:
    clock = FakeClock()
    progress = Progress.start(clock=clock)

    clock.now += 1.0
    first = progress.page(page(1, 150, total_records=1000), received=150, staged=150, quarantined=0)

    # ceil((1000 - 150) / 150) = 6 more full pages of the size the server returned.
    assert (first.total_pages, first.total_records) == (7, 1000)
    assert first.percent == pytest.approx(15.0)
    assert first.eta_s == pytest.approx(850 / 150)
    fields = first.log_fields()
    assert fields["progress"].startswith("page 1 of 7 (15.0%), 150 of 1000 records, 150.0 records/s")
    assert (fields["pages_total"], fields["records_total"], fields["rows_received_total"]) == (7, 1000, 150)


def test_a_resumed_run_rates_only_what_it_received_itself() -> None:
    clock = FakeClock()
    # 5 pages / 500 records were committed by an earlier try.
    progress = Progress.start(pages_done=5, received=500, clock=clock)

    clock.now += 4.0
    sixth = progress.page(page(6, 100, total_pages=10), received=600, staged=600, quarantined=0)

    assert sixth.records_per_s == pytest.approx(25.0)  # 100 records in 4 s, not 600
    assert sixth.percent == pytest.approx(60.0)
    assert sixth.eta_s == pytest.approx(16.0)  # 4 pages left at 1 page / 4 s


def test_without_a_stated_total_there_is_no_m_no_percent_and_no_eta() -> None:
    clock = FakeClock()
    progress = Progress.start(clock=clock)
    clock.now += 0.5
    first = progress.page(page(1, 20), received=20, staged=20, quarantined=0)
    last = progress.page(page(2, 0, last=True), received=20, staged=20, quarantined=0)

    assert (first.total_pages, first.percent, first.eta_s) == (None, None, None)
    assert first.describe() == "page 1, 20 records, 40.0 records/s"
    assert (last.total_pages, last.percent, last.eta_s) == (None, None, None)


def test_no_rate_before_any_time_has_passed() -> None:
    progress = Progress.start(clock=FakeClock())
    first = progress.page(page(1, 10, total_pages=3), received=10, staged=10, quarantined=0)
    assert (first.records_per_s, first.eta_s) == (None, None)
    assert eta_seconds(10, 0.0) is None
    assert eta_seconds(-5, 2.0) == 0.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.041, "0.04s"), (4.24, "4.2s"), (9.94, "9.9s"), (42.4, "42s"), (185, "3m05s"), (7260, "2h01m")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_the_summary_line_states_every_count_and_that_they_reconcile() -> None:
    summary = SyncSummary(
        pages=3,
        received=2500,
        staged=2498,
        quarantined=2,
        inserted=2400,
        updated=98,
        deleted=0,
        merge_s=0.1234,
        interval_s=75.0,
    )

    assert summary.reconciled
    assert summary.describe() == (
        "received 2500 = staged 2498 + quarantined 2 (reconciled); inserted 2400, updated 98, deleted 0; "
        "3 pages, merge 0.12s, interval 1m15s since staging started"
    )
    fields = summary.log_fields()
    assert fields["reconciled"] is True
    assert (fields["rows_received"], fields["rows_staged"], fields["rows_quarantined"]) == (2500, 2498, 2)
    assert (fields["rows_inserted"], fields["rows_updated"], fields["rows_deleted"]) == (2400, 98, 0)
    assert (fields["duration_s"], fields["interval_duration_s"]) == (0.123, 75.0)


def test_the_summary_line_says_when_counts_do_not_reconcile() -> None:
    summary = SyncSummary(
        pages=1,
        received=10,
        staged=8,
        quarantined=1,
        inserted=8,
        updated=0,
        deleted=0,
        merge_s=0.01,
        interval_s=None,
    )
    assert not summary.reconciled
    assert summary.describe().startswith("received 10 != staged 8 + quarantined 1 (NOT RECONCILED);")
    assert "since staging started" not in summary.describe()
