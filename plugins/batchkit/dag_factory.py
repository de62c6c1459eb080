"""standard_dag(): the one way a batch DAG is declared, with the house defaults already applied.

Retries with exponential backoff, the final-failure alert, a run deadline with its alert, a `dry_run`
param, validated tags and a runbook in the docs come with every DAG, so DAG files carry only what is
specific to them. Scheduling choices with no safe default (catchup, max_active_runs) must be spelled out.

Building the DAG does no I/O: the notifier and the callback are plain objects until Airflow runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference, Param

from batchkit.alert_channels import tier_of
from batchkit.alerts import AlertRoute, FailureAlert, deadline_missed, runbook_line
from batchkit.policy import EXPLICIT_SCHEDULING_ATTR, has_runbook, owner_problem
from batchkit.queues import Queue

RETRY_BACKOFF_MULTIPLIER = 2.0
DRY_RUN_PARAM = "dry_run"
# Owned by standard_dag; a DAG that needs different values says so through the named arguments.
_RESERVED_DAG_KWARGS = frozenset({"default_args", "deadline"})


def standard_dag(
    dag_id: str,
    *,
    owner: str,
    tags: Sequence[str],
    schedule: Any,
    start_date: datetime,
    catchup: bool,
    max_active_runs: int,
    doc_md: str,
    deadline: timedelta,
    retries: int = 3,
    retry_delay: timedelta = timedelta(seconds=30),
    max_retry_delay: timedelta = timedelta(minutes=10),
    params: Mapping[str, Any] | None = None,
    default_args_overrides: Mapping[str, Any] | None = None,
    alert_route: AlertRoute | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """A DAG with the house defaults; use as `with standard_dag(...) as dag:`.

    `tags` are members of batchkit.taxonomy.Tag (or their string values). `deadline` is measured from
    when the run was queued. Both alerts go to the channels of the DAG's `tier:` tag
    (batchkit.alert_channels.TIER_CHANNELS) with the first line of the doc's runbook; `alert_route`
    overrides connection ids, recipients or (its `channels`) the tier's channels.
    """
    _check_docs(dag_id, doc_md)
    if problem := owner_problem(owner):
        raise ValueError(f"DAG {dag_id!r}: {problem}")
    if deadline <= timedelta(0):
        raise ValueError(f"DAG {dag_id!r}: deadline must be a positive timedelta, got {deadline!r}")
    if clash := _RESERVED_DAG_KWARGS & dag_kwargs.keys():
        raise TypeError(
            f"DAG {dag_id!r}: standard_dag sets {sorted(clash)} itself; "
            "use default_args_overrides / the named arguments instead"
        )
    if params and DRY_RUN_PARAM in params:
        raise ValueError(f"DAG {dag_id!r}: the {DRY_RUN_PARAM!r} param is provided by standard_dag")

    tags = _validated_tags(dag_id, tags)
    route = (alert_route or AlertRoute()).routed(tier=tier_of(tags), runbook=runbook_line(doc_md))
    default_args: dict[str, Any] = {
        "owner": owner,
        "retries": retries,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": RETRY_BACKOFF_MULTIPLIER,
        "max_retry_delay": max_retry_delay,
        "on_failure_callback": [FailureAlert(route=route)],
        # Tasks that wait on an upstream API say so (queue=Queue.SOURCE); the rest is warehouse work.
        "queue": Queue.WAREHOUSE.value,
        **(default_args_overrides or {}),
    }
    dag = DAG(
        dag_id,
        schedule=schedule,
        start_date=start_date,
        catchup=catchup,
        max_active_runs=max_active_runs,
        doc_md=doc_md,
        tags=tags,
        default_args=default_args,
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=deadline,
            callback=AsyncCallback(
                deadline_missed,
                kwargs={**route.as_kwargs(), "deadline_interval_seconds": deadline.total_seconds()},
            ),
        ),
        params={
            DRY_RUN_PARAM: Param(
                False,
                type="boolean",
                description="Run every step but skip external side effects (sends, exports, writes).",
            ),
            **(params or {}),
        },
        **dag_kwargs,
    )
    setattr(dag, EXPLICIT_SCHEDULING_ATTR, frozenset({"catchup", "max_active_runs"}))
    return dag


def dry_run_requested(context: Mapping[str, Any]) -> bool:
    """Whether this run was triggered with dry_run=true (only DAGs from standard_dag have the param)."""
    return bool(context["params"][DRY_RUN_PARAM])


def _check_docs(dag_id: str, doc_md: str) -> None:
    if not doc_md or not doc_md.strip():
        raise ValueError(f"DAG {dag_id!r}: doc_md is required (what it does, and a '## Runbook' section)")
    if not has_runbook(doc_md):
        raise ValueError(
            f"DAG {dag_id!r}: doc_md needs a '## Runbook' section (what on-call does when it fails)"
        )


def _validated_tags(dag_id: str, tags: Sequence[str]) -> list[str]:
    # Imported here: taxonomy.py is maintained separately and only standard_dag needs it.
    from batchkit.taxonomy import validate_tags

    try:
        validate_tags(tags)
    except ValueError as exc:
        raise ValueError(f"DAG {dag_id!r}: {exc}") from exc
    return [str(tag) for tag in tags]
