"""The sync core's failure kinds. The core decides WHAT went wrong; the operators decide what Airflow
does about it (batchkit.operators.sync.airflow_outcome):

| error                    | meaning                                               | Airflow outcome            |
|--------------------------|-------------------------------------------------------|----------------------------|
| DataRejectedError        | the source's data is wrong; a retry re-reads the same | fail now, no retry         |
| PermanentSourceError     | the source refused the request (4xx): it cannot succeed | fail now, no retry       |
| IntervalUndefinedError   | the run has no data interval a sync can own           | fail now, no retry         |
| IntervalBusyError        | another run holds the interval                        | reschedule, no try used up |
| StagingIncompleteError   | the interval is not (fully) staged; nothing to re-stage with | ordinary retry      |

Transient source failures (batchkit.extract.retry: TransientHttpError, TransientError) are retried
inside the task; when they outlast the retry policy, RetriesExhaustedError is an ordinary retry too.
"""

from __future__ import annotations


class DataRejectedError(Exception):
    """The interval's records cannot be loaded as sent (too many rejects, counts that never reconcile)."""


class PermanentSourceError(Exception):
    """The source refused the request for good (a 4xx other than 408/429, an unexpected 3xx): sending
    the same request again cannot succeed, so neither the request's retries nor the task's are tried."""


class IntervalUndefinedError(Exception):
    """The run has no data interval to sync: a point-in-time schedule, or a manual run without a
    logical date on a DAG with no cron schedule to infer one from."""


class IntervalBusyError(RuntimeError):
    """Another run held the interval for longer than the wait: try again later (not a failure)."""


class StagingIncompleteError(RuntimeError):
    """The interval is not fully staged and no way to re-stage it was given: run the staging step."""
