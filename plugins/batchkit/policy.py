"""The house rules every DAG and task must follow, as plain functions.

One source of truth for two enforcers: config/airflow_local_settings.py raises them as cluster-policy
violations in the live dag-processor (the DAG shows up as an import error in the UI), and the DAG-integrity
tests run the same functions over dags/ so a pull request fails before it merges.

Each function returns every problem it finds, one sentence each, so one failed parse lists all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from batchkit.queues import ALL_QUEUES
from batchkit.taxonomy import tag_problems

MIN_RETRIES = 2
FORBIDDEN_OWNERS = frozenset({"", "airflow"})
DEFAULT_POOL = "default_pool"
# Set by batchkit.dag_factory.standard_dag: the Task SDK DAG falls back to config defaults for catchup and
# max_active_runs without recording whether they were passed, so the factory records that they were.
EXPLICIT_SCHEDULING_ATTR = "batchkit_explicit_scheduling"
# The `## Runbook` heading on a line of its own (any case): what on-call does when the DAG fails. The
# one rule for it: standard_dag refuses a doc without it, the policy flags it, the alerts quote its
# first line (batchkit.alerts.runbook_line).
RUNBOOK_HEADING = re.compile(r"^##\s+Runbook\s*$", re.MULTILINE | re.IGNORECASE)


def owner_problem(owner: object) -> str | None:
    """Why `owner` cannot own a DAG or task (empty, or Airflow's placeholder 'airflow'), else None.

    The one rule for owners: the policy, standard_dag and sync files (batchkit.sync_spec) all ask here.
    """
    name = str(owner or "").strip()
    if name.lower() in FORBIDDEN_OWNERS:
        return f"owner must name a team or person, not {name or 'nothing'!r}"
    return None


def has_runbook(doc_md: str | None) -> bool:
    return bool(doc_md) and RUNBOOK_HEADING.search(doc_md) is not None


def dag_problems(dag: Any) -> list[str]:
    """What is wrong with a DAG as a whole (its tasks are checked by task_problems)."""
    problems: list[str] = []
    if problem := owner_problem(dag.default_args.get("owner")):
        problems.append(problem)
    problems.extend(f"tags: {problem}" for problem in tag_problems(dag.tags or []))
    if not has_runbook(dag.doc_md):
        problems.append("doc_md must exist and contain a '## Runbook' section")
    if dag.deadline is None:
        problems.append("needs a DeadlineAlert (deadline=...): Airflow 3's replacement for SLAs")
    if dag.start_date is None:
        problems.append("needs a fixed start_date")
    elif dag.start_date.tzinfo is None:
        problems.append("start_date must be timezone-aware")
    explicit = getattr(dag, EXPLICIT_SCHEDULING_ATTR, frozenset())
    for name in ("catchup", "max_active_runs"):
        if name not in explicit:
            problems.append(
                f"{name} must be set explicitly (build the DAG with batchkit.dag_factory.standard_dag)"
            )
    return problems


def task_problems(task: Any) -> list[str]:
    """What is wrong with one task: retries, backoff, owner, failure alert, queue, pool for external systems."""
    problems: list[str] = []
    if (task.retries or 0) < MIN_RETRIES:
        problems.append(f"retries must be >= {MIN_RETRIES}, is {task.retries}")
    if not task.retry_exponential_backoff:
        problems.append("retry_exponential_backoff must be on")
    if not task.max_retry_delay:
        problems.append("max_retry_delay must be set (caps the exponential backoff)")
    if problem := owner_problem(task.owner):
        problems.append(problem)
    if not task.on_failure_callback:
        problems.append("needs an on_failure_callback (the final-failure alert)")
    if task.queue not in ALL_QUEUES:
        problems.append(f"queue {task.queue!r} has no Celery worker listening; use one of {list(ALL_QUEUES)}")
    external = external_conn_ids(task)
    if external and task.pool == DEFAULT_POOL:
        problems.append(
            f"calls external system(s) {sorted(external)} and must run in their pool, not {DEFAULT_POOL!r}"
        )
    return problems


def external_conn_ids(task: Any) -> set[str]:
    """Connection ids a task declares (any `*conn_id` attribute): the systems it talks to."""
    return {
        value
        for name, value in vars(task).items()
        if name.endswith("conn_id") and isinstance(value, str) and value
    }


def describe(subject: str, problems: Iterable[str]) -> str:
    return f"{subject} breaks the DAG rules:\n" + "\n".join(f"  - {problem}" for problem in problems)
