"""batchkit.errors: the sync core's failure kinds. What Airflow does about each one:
tests/batchkit/operators/test_sync.py."""

from __future__ import annotations

import pytest

from batchkit import errors
from batchkit.errors import (
    DataRejectedError,
    IntervalBusyError,
    IntervalUndefinedError,
    PermanentSourceError,
    StagingIncompleteError,
)

ALL_KINDS = [
    DataRejectedError,
    PermanentSourceError,
    IntervalUndefinedError,
    IntervalBusyError,
    StagingIncompleteError,
]


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.__name__)
def test_each_failure_kind_is_an_exception_listed_in_the_module_table(kind: type[Exception]) -> None:
    assert issubclass(kind, Exception)
    assert f"| {kind.__name__} " in errors.__doc__
    assert str(kind("page 3: boom")) == "page 3: boom"


def test_the_module_defines_no_failure_kind_beyond_the_table() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert defined == {kind.__name__ for kind in ALL_KINDS}
