"""batchkit.operators.sync: how the core's errors become Airflow's outcomes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

from batchkit.checkpoints import RunIdentity
from batchkit.errors import (
    DataRejectedError,
    IntervalBusyError,
    IntervalUndefinedError,
    PermanentSourceError,
    StagingIncompleteError,
)
from batchkit.intervals import DataInterval
from batchkit.operators.sync import RESCHEDULE_BUSY_AFTER, airflow_outcome

IDENTITY = RunIdentity(
    dag_id="d",
    sync_key="sync",
    run_id="r",
    interval=DataInterval(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
)


def test_rejected_data_fails_without_retry_keeping_the_message() -> None:
    with pytest.raises(AirflowFailException, match="3 of 4 records quarantined"), airflow_outcome(IDENTITY):
        raise DataRejectedError("3 of 4 records quarantined")


@pytest.mark.parametrize(
    "error",
    [
        PermanentSourceError("GET /v1/orders page 1 failed with HTTP 404"),
        IntervalUndefinedError("manual run has no logical date"),
    ],
)
def test_permanent_errors_fail_without_retry_keeping_the_message(error: Exception) -> None:
    with pytest.raises(AirflowFailException, match=str(error)), airflow_outcome():
        raise error


def test_a_busy_interval_is_rescheduled_not_retried() -> None:
    before = datetime.now(UTC)
    with pytest.raises(AirflowRescheduleException) as rescheduled, airflow_outcome(IDENTITY):
        raise IntervalBusyError("another run held it")
    assert before + RESCHEDULE_BUSY_AFTER <= rescheduled.value.reschedule_date
    assert rescheduled.value.reschedule_date <= datetime.now(UTC) + RESCHEDULE_BUSY_AFTER


def test_incomplete_staging_stays_an_ordinary_retryable_error() -> None:
    with pytest.raises(StagingIncompleteError), airflow_outcome(IDENTITY):
        raise StagingIncompleteError("not staged")
