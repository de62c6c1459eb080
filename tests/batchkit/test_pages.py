"""batchkit.pages: a page of records and where to resume after it."""

from __future__ import annotations

import dataclasses

import pytest

from batchkit.pages import Page


def test_two_fetches_of_one_page_compare_equal_whatever_the_fetch_took() -> None:
    records = [{"order_id": 1}, {"order_id": 2}]
    first = Page(number=2, records=records, next_state={"page": 3}, total_pages=5, latency_ms=12.5, retries=0)
    again = Page(
        number=2, records=records, next_state={"page": 3}, total_pages=None, latency_ms=900.0, retries=3
    )

    assert first == again
    assert first != Page(number=2, records=records, next_state=None)
    assert Page(number=1, records=[], next_state=None).retries == 0


def test_a_page_is_frozen() -> None:
    page = Page(number=1, records=[], next_state=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        page.number = 2  # type: ignore[misc]
