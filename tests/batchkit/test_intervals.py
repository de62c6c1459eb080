from __future__ import annotations

import pendulum
import pytest

from batchkit.intervals import DataInterval, last_complete_interval


@pytest.mark.parametrize(
    ("cron", "tz", "at", "expected_start", "expected_end"),
    [
        # Triggered mid-day: yesterday, the last complete day.
        ("0 0 * * *", "UTC", (2026, 11, 23, 9, 30), (2026, 11, 22, 0), (2026, 11, 23, 0)),
        # Triggered exactly on a boundary: the interval that just closed.
        ("0 0 * * *", "UTC", (2026, 11, 23, 0, 0), (2026, 11, 22, 0), (2026, 11, 23, 0)),
        # Local-time schedules are aligned in their own zone, returned in UTC.
        ("0 6 * * *", "Europe/Paris", (2026, 11, 23, 9, 30), (2026, 11, 22, 5), (2026, 11, 23, 5)),
        ("0 * * * *", "UTC", (2026, 11, 23, 9, 30), (2026, 11, 23, 8), (2026, 11, 23, 9)),
    ],
)
def test_manual_run_loads_the_last_complete_interval(cron, tz, at, expected_start, expected_end) -> None:
    interval = last_complete_interval(cron, tz, pendulum.datetime(*at, tz="UTC"))
    assert interval.start == pendulum.datetime(*expected_start, tz="UTC")
    assert interval.end == pendulum.datetime(*expected_end, tz="UTC")


def test_interval_rejects_naive_and_empty_bounds() -> None:
    start = pendulum.datetime(2026, 1, 1, tz="UTC")
    with pytest.raises(ValueError, match="empty data interval"):
        DataInterval(start, start)
    with pytest.raises(ValueError, match="timezone-aware"):
        DataInterval(start.naive(), start.add(days=1).naive())
