"""The sync core's failure kinds. The core decides WHAT went wrong; the operators decide what Airflow
does about it (batchkit.operators.sync.airflow_outcome):

| error                    | meaning                                               | Airflow outcome            |
|--------------------------|-------------------------------------------------------|----------------------------|
| DataRejectedError        | the source's data is wrong; a retry re-reads the same | fail now, no retry         |
| IntervalBusyError        | another run holds the interval                        | reschedule, no try used up |
| StagingIncompleteError   | the interval is not (fully) staged; nothing to re-stage with | ordinary retry      |
"""

from __future__ import annotations


class DataRejectedError(Exception):
    """The interval's records cannot be loaded as sent (too many rejects, counts that never reconcile)."""


class IntervalBusyError(RuntimeError):
    """Another run held the interval for longer than the wait: try again later (not a failure)."""


class StagingIncompleteError(RuntimeError):
    """The interval is not fully staged and no way to re-stage it was given: run the staging step."""
