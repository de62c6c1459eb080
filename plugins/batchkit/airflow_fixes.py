"""Workaround for apache/airflow#70368: clearing a run whose DAGRUN_QUEUED_AT deadline is pending fails.

The bug (Airflow 3.3.0 - 3.3.2). Clearing task instances moves the run's `queued_at` to now and calls
`airflow.models.taskinstance._recalculate_dagrun_queued_at_deadlines` to move its pending
DAGRUN_QUEUED_AT deadlines along. That function does `timedelta(seconds=deadline_alert.interval)`, but
since migration 0117 (3.3.0) the `deadline_alert.interval` column holds serde JSON
(`{"__classname__": "datetime.timedelta", "__version__": 2, "__data__": 600.0}`), so the clear raises
`TypeError: unsupported type for timedelta seconds component: dict` and the REST API / UI answer HTTP
500. Every DAG built by standard_dag has such a deadline, so without this module no failed run could be
cleared until its deadline had passed.

The fix. `recalculate_dagrun_queued_at_deadlines` below is the upstream function with the interval
decoded the way DagRun creation decodes it (`decode_deadline_alert`, then a variable-backed interval
resolved), which is what the upstream fix (apache/airflow PR #70370, unreleased) does. It replaces the
module attribute that `clear_task_instances` looks up at call time, so every caller is covered: the
REST API and UI clears, backfills with reprocess behaviour failed/completed, and TriggerDagRunOperator's
reset_dag_run (all of them run in the api-server).

Why not a custom deadline reference (DeadlineReference.register_custom_reference on DagRun.queued_at):
it needs a plugin as well (the scheduler deserializes custom references only through an AirflowPlugin's
`deadline_references`), it would give every DAG a new serialized version, and clearing would no longer
move the deadline at all, because the recalculation only looks at the built-in reference: a cleared run
would inherit its first try's deadline and page on-call for a rerun that is on time.

Why an AirflowPlugin (`AirflowFixesPlugin.on_load`). The api-server loads plugins while it builds its
app (airflow.api_fastapi.app.init_plugins), whatever `[core] lazy_load_plugins` says, so the fix is in
place before the first request. Other processes load plugins lazily; the `airflow tasks
clear` CLI does so while it reads the DAG, before it clears (checked on 3.3.2). airflow_local_settings.py
would be too early: it is imported inside settings.initialize(), before the ORM is configured, and
importing airflow.models from there is unsafe. GET /api/v2/plugins lists the plugin when it is active.

Guards. The replacement is installed only on the exact releases checked to have the bug
(AFFECTED_VERSIONS, compared with the installed `airflow.__version__` by `check_affected_version` every
time the plugin loads) and only over a function with the upstream signature. Anything else raises
AirflowFixOutdated naming the installed version and the issue, which the plugins manager reports as a
plugin import error (api-server log, GET /api/v2/plugins/importErrors) rather than silently patching
code it does not know: after an upgrade, check whether the new release still has the bug, then either
add it to AFFECTED_VERSIONS or delete this module. tests/batchkit/test_airflow_fixes_guard.py covers
the guard; tests/e2e/test_airflow_fixes.py the fix itself.
"""

from __future__ import annotations

import functools
import inspect
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

from batchkit.observability import get_logger

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel
    from sqlalchemy.orm import Session

ISSUE = "apache/airflow#70368"
PATCHED_MODULE = "airflow.models.taskinstance"
PATCHED_FUNCTION = "_recalculate_dagrun_queued_at_deadlines"
PATCHED_PARAMETERS = ("dagrun", "new_queued_at", "session")
# The exact releases checked to have the bug: on any other one the plugin refuses to load.
AFFECTED_VERSIONS = ("3.3.0", "3.3.1", "3.3.2")
# Set on the replacement, so a second install (module loaded under two names) is a no-op.
FIX_MARKER = "__batchkit_fix__"

log = get_logger(__name__)


class AirflowFixOutdated(RuntimeError):
    """The code a fix replaces is not what the fix was written against."""


def deadline_alert_interval(alert: DeadlineAlertModel) -> timedelta:
    """The interval of a `deadline_alert` row, decoded as DagRun creation decodes it.

    Handles the serde JSON form (3.3+), the bare seconds of rows written before migration 0117, and a
    VariableInterval (resolved from its Variable now, as at run creation).
    """
    from airflow.serialization.decoders import decode_deadline_alert
    from airflow.serialization.definitions.deadline import DeadlineAlertFields, SerializedVariableInterval

    decoded = decode_deadline_alert(
        {
            DeadlineAlertFields.REFERENCE: alert.reference,
            DeadlineAlertFields.INTERVAL: alert.interval,
            DeadlineAlertFields.CALLBACK: alert.callback_def,
        }
    )
    interval = decoded.interval
    if isinstance(interval, SerializedVariableInterval):
        interval = interval.resolve()
    return interval


def recalculate_dagrun_queued_at_deadlines(dagrun: DagRun, new_queued_at: datetime, session: Session) -> None:
    """Move the run's pending DAGRUN_QUEUED_AT deadlines to `new_queued_at` + their interval.

    The upstream function's query and contract (no flush: the caller commits the clear atomically),
    with the interval decoded.
    """
    from airflow.models.deadline import Deadline, ReferenceModels
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel
    from sqlalchemy import false, select

    rows = session.execute(
        select(Deadline, DeadlineAlertModel)
        .join(DeadlineAlertModel, Deadline.deadline_alert_id == DeadlineAlertModel.id)
        .where(
            Deadline.dagrun_id == dagrun.id,
            Deadline.missed == false(),
            DeadlineAlertModel.reference[ReferenceModels.REFERENCE_TYPE_FIELD].as_string()
            == ReferenceModels.DagRunQueuedAtDeadline.__name__,
        )
    ).all()
    for deadline, alert in rows:
        new_deadline_time = new_queued_at + deadline_alert_interval(alert)
        log.debug(
            "queued_at_deadline_recalculated",
            dag_id=dagrun.dag_id,
            run_id=dagrun.run_id,
            deadline_id=str(deadline.id),
            old=deadline.deadline_time.isoformat(),
            new=new_deadline_time.isoformat(),
        )
        deadline.deadline_time = new_deadline_time


def check_affected_version(version: str) -> None:
    """Raise AirflowFixOutdated unless `version` is one of AFFECTED_VERSIONS (exact match, no ranges).

    A plain function of the version string, so the guard is testable without touching Airflow.
    """
    if version not in AFFECTED_VERSIONS:
        raise AirflowFixOutdated(
            f"{__name__}: the fix for {ISSUE} applies to Airflow {', '.join(AFFECTED_VERSIONS)} only, "
            f"but Airflow {version} is installed: check whether {version} still has the bug, then add it "
            "to AFFECTED_VERSIONS or delete this fix (and its plugin)"
        )


def install_queued_at_deadline_fix() -> bool:
    """Replace the broken upstream function; returns whether this call installed it.

    Raises AirflowFixOutdated when the installed Airflow is not one of AFFECTED_VERSIONS or the function
    it replaces changed, rather than patching code it was not written for.
    """
    import importlib

    from airflow import __version__ as airflow_version

    # First, on every load: a release nobody checked never gets (or keeps quiet about) the patch.
    check_affected_version(airflow_version)
    module = importlib.import_module(PATCHED_MODULE)
    target = f"{PATCHED_MODULE}.{PATCHED_FUNCTION}"
    current = getattr(module, PATCHED_FUNCTION, None)
    if getattr(current, FIX_MARKER, None) == ISSUE:
        return False
    if current is None:
        raise AirflowFixOutdated(f"{__name__}: {target} no longer exists in Airflow {airflow_version}")
    parameters = tuple(inspect.signature(current).parameters)
    if parameters != PATCHED_PARAMETERS:
        raise AirflowFixOutdated(
            f"{__name__}: {target} takes {parameters} in Airflow {airflow_version}, the fix for {ISSUE} "
            f"was written for {PATCHED_PARAMETERS}: review the upstream change before patching"
        )

    @functools.wraps(current)
    def fixed(dagrun: DagRun, new_queued_at: datetime, session: Session) -> None:
        recalculate_dagrun_queued_at_deadlines(dagrun, new_queued_at, session)

    setattr(fixed, FIX_MARKER, ISSUE)
    setattr(module, PATCHED_FUNCTION, fixed)
    log.debug("airflow_fix_installed", issue=ISSUE, replaced=target, airflow_version=airflow_version)
    return True


class AirflowFixesPlugin(AirflowPlugin):
    """Installs the workaround above in every process that loads plugins (the api-server at start-up)."""

    name = "batchkit_airflow_fixes"

    @classmethod
    def on_load(cls, *args: Any, **kwargs: Any) -> None:
        install_queued_at_deadline_fix()
