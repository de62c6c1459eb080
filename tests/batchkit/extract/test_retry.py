"""batchkit.extract.retry without a server: Retry-After parsing and which HTTP statuses are transient.
The retry loop against the demo upstream, through the hook: tests/batchkit/hooks/test_rest_api.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from batchkit.extract.retry import is_transient_status, parse_retry_after


def test_retry_after_parses_both_forms() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("status", "transient"),
    [(408, True), (429, True), (500, True), (503, True), (599, True)]
    + [(400, False), (401, False), (403, False), (404, False), (409, False), (422, False)],
)
def test_status_classification(status, transient) -> None:
    assert is_transient_status(status) is transient
