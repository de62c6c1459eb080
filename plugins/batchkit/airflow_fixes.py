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
add it to AFFECTED_VERSIONS or delete this module. tests/batchkit/test_airflow_fixes.py covers
the guard; tests/e2e/test_airflow_fixes.py the fix itself.

Second fix: `airflow dags test` / `dag.test()` crash after a successful run (Airflow 3.3.2,
DAG_TEST_ISSUE). `DAG.test` (airflow/sdk/definitions/dag.py) runs the DAG as
`DagSerialization.deserialize_dag(DagSerialization.serialize_dag(self))`, whose `deadline` holds each
alert's serialized form (a dict). The metadata DB's serialized DAG holds the ids of its `deadline_alert`
rows instead, and that is what `DagRun.update_state` expects: on success it calls
`DeadlineAlertModel.get_by_id(alert_id)` for every entry of `dag.deadline`, so Postgres gets a dict
(`ProgrammingError: can't adapt type 'dict'`) and the command fails although every task succeeded. The
run's Deadline rows themselves are right (`create_dagrun` reads them from the DB by the run's DAG
version). `install_dag_test_deadline_fix` wraps `airflow.models.dagrun.get_or_create_dagrun`, which
`DAG.test` imports at call time (its only other caller, `airflow tasks test`, binds it at import and
creates no deadlines anyway): when the DAG it gets holds dicts in `deadline`, it swaps in the alert ids of the DAG version the run is created from (the latest
DagVersion, exactly as `create_dagrun` picks it), so the success path prunes the run's pending deadlines
the way the scheduler does. The scheduler never goes through this function.

In the `airflow dags test` CLI process plugins load lazily, but before the run: `DAG.test` deserializes
the DAG it just serialized, and deserializing an operator asks the plugins manager for operator extra
links, which loads every plugin (on_load included). tests/e2e/test_airflow_fixes.py runs the real CLI
and checks the fix is in place. Same guards as above: exact versions (DAG_TEST_AFFECTED_VERSIONS, only
the release checked), the upstream signature, FIX_MARKER.
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

DAG_TEST_ISSUE = "dag.test() passes serialized deadline dicts to DeadlineAlertModel.get_by_id"
DAG_TEST_PATCHED_MODULE = "airflow.models.dagrun"
DAG_TEST_PATCHED_FUNCTION = "get_or_create_dagrun"
DAG_TEST_PATCHED_PARAMETERS = (
    "dag",
    "run_id",
    "logical_date",
    "data_interval",
    "run_after",
    "conf",
    "triggered_by",
    "triggering_user_name",
    "start_date",
    "session",
)
# Only the release the crash was reproduced on (and the fix proven on) through the real CLI.
DAG_TEST_AFFECTED_VERSIONS = ("3.3.2",)

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


def check_affected_version(
    version: str,
    affected: tuple[str, ...] = AFFECTED_VERSIONS,
    issue: str = ISSUE,
    constant: str = "AFFECTED_VERSIONS",
) -> None:
    """Raise AirflowFixOutdated unless `version` is one of `affected` (exact match, no ranges).

    A plain function of the version string, so the guard is testable without touching Airflow.
    """
    if version not in affected:
        raise AirflowFixOutdated(
            f"{__name__}: the fix for {issue} applies to Airflow {', '.join(affected)} only, "
            f"but Airflow {version} is installed: check whether {version} still has the bug, then add it "
            f"to {constant} or delete this fix (and its plugin)"
        )


def install_queued_at_deadline_fix() -> bool:
    """Replace the broken upstream function; returns whether this call installed it.

    Raises AirflowFixOutdated when the installed Airflow is not one of AFFECTED_VERSIONS or the function
    it replaces changed, rather than patching code it was not written for.
    """

    def replacement(current: Any) -> Any:
        @functools.wraps(current)
        def fixed(dagrun: DagRun, new_queued_at: datetime, session: Session) -> None:
            recalculate_dagrun_queued_at_deadlines(dagrun, new_queued_at, session)

        return fixed

    return _install(
        issue=ISSUE,
        affected=AFFECTED_VERSIONS,
        affected_constant="AFFECTED_VERSIONS",
        module_name=PATCHED_MODULE,
        function_name=PATCHED_FUNCTION,
        parameters=PATCHED_PARAMETERS,
        replacement=replacement,
    )


def _install(
    *,
    issue: str,
    affected: tuple[str, ...],
    affected_constant: str,
    module_name: str,
    function_name: str,
    parameters: tuple[str, ...],
    replacement: Any,
) -> bool:
    """Put `replacement(current)` in place of `module_name.function_name`, guarded; returns whether this
    call installed it (False when it already is)."""
    import importlib

    from airflow import __version__ as airflow_version

    # First, on every load: a release nobody checked never gets (or keeps quiet about) the patch.
    check_affected_version(airflow_version, affected, issue, affected_constant)
    module = importlib.import_module(module_name)
    target = f"{module_name}.{function_name}"
    current = getattr(module, function_name, None)
    if getattr(current, FIX_MARKER, None) == issue:
        return False
    if current is None:
        raise AirflowFixOutdated(f"{__name__}: {target} no longer exists in Airflow {airflow_version}")
    found = tuple(inspect.signature(current).parameters)
    if found != parameters:
        raise AirflowFixOutdated(
            f"{__name__}: {target} takes {found} in Airflow {airflow_version}, the fix for {issue} "
            f"was written for {parameters}: review the upstream change before patching"
        )
    fixed = replacement(current)
    setattr(fixed, FIX_MARKER, issue)
    setattr(module, function_name, fixed)
    log.debug("airflow_fix_installed", issue=issue, replaced=target, airflow_version=airflow_version)
    return True


def stored_deadline_alert_ids(dag_id: str, session: Session) -> list[str] | None:
    """The `deadline` of `dag_id`'s latest serialized version in the metadata DB: DeadlineAlert row ids.

    The latest DagVersion is the one `create_dagrun` creates a run from (and reads its Deadline rows
    through); None when the DAG has no serialized version or no deadline there.
    """
    from airflow.models.dag_version import DagVersion
    from airflow.models.serialized_dag import SerializedDagModel
    from sqlalchemy import select

    version = DagVersion.get_latest_version(dag_id, session=session)
    if version is None:
        return None
    serialized = session.scalar(
        select(SerializedDagModel).where(SerializedDagModel.dag_version_id == version.id)
    )
    if serialized is None or not serialized.data:
        return None
    ids = serialized.data.get("dag", {}).get("deadline")
    return [str(alert_id) for alert_id in ids] if ids else None


def use_stored_deadline_ids(dag: Any, session: Session) -> bool:
    """Replace serialized deadline dicts on `dag` by the stored alert ids; returns whether it did."""
    deadline = getattr(dag, "deadline", None)
    if not deadline or all(isinstance(alert_id, str) for alert_id in deadline):
        return False
    stored = stored_deadline_alert_ids(dag.dag_id, session)
    if stored is not None and len(stored) != len(deadline):
        log.warning(
            "dag_test_deadline_count_differs",
            dag_id=dag.dag_id,
            in_memory=len(deadline),
            stored=len(stored),
        )
    dag.deadline = stored
    log.debug("dag_test_deadline_ids_used", dag_id=dag.dag_id, deadline_alert_ids=stored)
    return True


def install_dag_test_deadline_fix() -> bool:
    """Wrap `get_or_create_dagrun` so dag.test runs see DeadlineAlert ids; returns whether it installed.

    Raises AirflowFixOutdated on a release outside DAG_TEST_AFFECTED_VERSIONS or when the function's
    signature is not the one the fix was written against.
    """

    def replacement(current: Any) -> Any:
        @functools.wraps(current)
        def fixed(*, dag: Any, session: Session, **kwargs: Any) -> DagRun:
            use_stored_deadline_ids(dag, session)
            return current(dag=dag, session=session, **kwargs)

        return fixed

    return _install(
        issue=DAG_TEST_ISSUE,
        affected=DAG_TEST_AFFECTED_VERSIONS,
        affected_constant="DAG_TEST_AFFECTED_VERSIONS",
        module_name=DAG_TEST_PATCHED_MODULE,
        function_name=DAG_TEST_PATCHED_FUNCTION,
        parameters=DAG_TEST_PATCHED_PARAMETERS,
        replacement=replacement,
    )


class AirflowFixesPlugin(AirflowPlugin):
    """Installs the workarounds above in every process that loads plugins (the api-server at start-up,
    the `airflow dags test` CLI before its run)."""

    name = "batchkit_airflow_fixes"

    @classmethod
    def on_load(cls, *args: Any, **kwargs: Any) -> None:
        install_queued_at_deadline_fix()
        install_dag_test_deadline_fix()
