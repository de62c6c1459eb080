"""Retention: what the batch automations leave behind, removed once it is old, as plain functions.

Used by dags/platform/platform_cleanup.py. Every age is measured back from one moment the caller
passes (the cleanup run's `run_after`), so a retried or cleared cleanup run removes what its first try
would have, never more. Every purge has a dry run that counts what it would remove and removes
nothing, and returns counts so the task can log them per table.

What goes, and by which clock:
- staging tables (batch_meta.stg_*) of sync intervals whose checkpoint was last touched more than
  `staging_days` ago: a running sync updates its checkpoint with every page, so such a table belongs to
  a run that died and was never rerun. Its name is derived from the checkpoint and the sync's target
  exactly as batchkit.load.postgres names it; a later rerun of that interval notices the missing
  staging and starts the interval over.
- rows of batch_meta.quarantine, checkpoints, side_effects (the ledger), alert_log, sent alert_digest
  entries and quality_results older than their
  age (`ROW_RULES`). A ledger row gone means a rerun of that old key would perform its action again.
- files the automations declare (`FileRetention`, a tuple FILE_RETENTION in the module
  include/<domain>/retention.py, found by `declared_file_retention`): a folder under the reports base
  (batchkit.report_files), how to tell a file's day from its name, and which param gives its age
  (`report_file_days` by default). Files of days older than that age before the run go (the day in the
  name, which a rerun does not change, unlike a file's modification time); other files stay. This
  module knows no automation: each declares its own files next to its code.

Airflow's own metadata is not cleaned here: tasks hold only warehouse credentials, never the metadata
DB's. `airflow db clean` is operator maintenance (`make db-clean`, or docker compose's `airflow-db-clean`
service), run as the metadata DB's role.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from airflow.sdk import ObjectStoragePath
from psycopg import sql

from batchkit.checkpoints import RunIdentity
from batchkit.intervals import DataInterval
from batchkit.load.identifiers import checked_identifier
from batchkit.load.postgres import TargetSpec, staging_table_name, table_exists
from batchkit.observability import get_logger

log = get_logger(__name__)

STAGING_TABLES = "staging_tables"
# Where automations declare their files: the package include/ (on PYTHONPATH, as for include/contracts),
# each domain's module include/<domain>/retention.py, its tuple FILE_RETENTION.
DECLARATIONS_PACKAGE = "include"
DECLARATIONS_MODULE = "retention"
DECLARATIONS_ATTRIBUTE = "FILE_RETENTION"


@dataclass(frozen=True)
class RetentionPolicy:
    """How many days each kind of leftover is kept; the cleanup DAG's params, with these defaults."""

    staging_days: int = 7
    quarantine_days: int = 30
    checkpoint_days: int = 90
    ledger_days: int = 400
    alert_log_days: int = 90
    quality_results_days: int = 90
    report_file_days: int = 400

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"retention param {field.name!r}: expected a whole number of days >= 1, got {value!r}"
                )
        if self.staging_days > self.checkpoint_days:
            # A checkpoint deleted first would leave its staging table with nothing left to name it.
            raise ValueError(
                f"retention param 'staging_days' ({self.staging_days}) must not exceed 'checkpoint_days' "
                f"({self.checkpoint_days})"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RetentionPolicy:
        return cls(**{field.name: params[field.name] for field in fields(cls) if field.name in params})

    def cutoff(self, days_field: str, now: datetime) -> datetime:
        return now - timedelta(days=getattr(self, days_field))


PARAM_DESCRIPTIONS = {
    "staging_days": "Drop sync staging tables whose interval's checkpoint is older than this.",
    "quarantine_days": "Delete quarantined records older than this.",
    "checkpoint_days": "Delete sync checkpoints not updated for this long (at least staging_days).",
    "ledger_days": "Delete side-effect ledger rows older than this (an older key would be performed again).",
    "alert_log_days": "Delete alert log rows, and digest entries sent longer ago, older than this.",
    "quality_results_days": "Delete data-quality results older than this.",
    "report_file_days": "Delete report files of days further back than this.",
}


@dataclass(frozen=True)
class RowRule:
    table: str
    age_column: str
    days_field: str


ROW_RULES = (
    RowRule("batch_meta.quarantine", "created_at", "quarantine_days"),
    RowRule("batch_meta.checkpoints", "updated_at", "checkpoint_days"),
    RowRule("batch_meta.side_effects", "updated_at", "ledger_days"),
    RowRule("batch_meta.alert_log", "created_at", "alert_log_days"),
    # By sent_at: an entry not sent yet (NULL) is never old enough.
    RowRule("batch_meta.alert_digest", "sent_at", "alert_log_days"),
    RowRule("batch_meta.quality_results", "checked_at", "quality_results_days"),
)


def purge_warehouse(
    conn: psycopg.Connection,
    policy: RetentionPolicy,
    *,
    now: datetime,
    targets_by_dag: Mapping[str, TargetSpec],
    dry_run: bool,
) -> dict[str, int]:
    """Stale staging tables first (their checkpoints name them), then old rows; counts per table."""
    removed = {
        STAGING_TABLES: purge_stale_staging(
            conn,
            older_than=policy.cutoff("staging_days", now),
            targets_by_dag=targets_by_dag,
            dry_run=dry_run,
        )
    }
    for rule in ROW_RULES:
        removed[rule.table] = purge_old_rows(
            conn, rule, older_than=policy.cutoff(rule.days_field, now), dry_run=dry_run
        )
    return removed


def purge_old_rows(conn: psycopg.Connection, rule: RowRule, *, older_than: datetime, dry_run: bool) -> int:
    """Delete (or, dry, count) the rows of `rule.table` with `rule.age_column` < `older_than`."""
    if not table_exists(conn, rule.table):
        return 0
    where = sql.SQL("FROM {table} WHERE {column} < %s").format(
        table=checked_identifier(rule.table, "table"),
        column=checked_identifier(rule.age_column, "age_column", allow_schema=False),
    )
    with conn.transaction():
        if dry_run:
            return conn.execute(sql.SQL("SELECT count(*) {}").format(where), (older_than,)).fetchone()[0]
        return conn.execute(sql.SQL("DELETE {}").format(where), (older_than,)).rowcount


def purge_stale_staging(
    conn: psycopg.Connection,
    *,
    older_than: datetime,
    targets_by_dag: Mapping[str, TargetSpec],
    dry_run: bool,
) -> int:
    """Drop (or, dry, count) the staging tables of intervals whose checkpoint is older than `older_than`."""
    if not table_exists(conn, "batch_meta.checkpoints"):
        return 0
    stale = conn.execute(
        """
        SELECT dag_id, task_id, interval_start, interval_end FROM batch_meta.checkpoints
         WHERE updated_at < %s ORDER BY dag_id, interval_start
        """,
        (older_than,),
    ).fetchall()
    dropped = 0
    unknown_dags = set()
    for dag_id, sync_key, interval_start, interval_end in stale:
        target = targets_by_dag.get(dag_id)
        if target is None:
            unknown_dags.add(dag_id)
            continue
        # The scope, which names the staging table, is (dag, sync key, interval): the run id plays no part.
        scope = RunIdentity(dag_id, sync_key, "", DataInterval(interval_start, interval_end)).scope()
        table = staging_table_name(target, scope)
        if not table_exists(conn, table):
            continue
        if not dry_run:
            with conn.transaction():
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(checked_identifier(table, "staging table"))
                )
        log.info(
            "staging_dropped", table=table, dag_id=dag_id, interval_start=interval_start, dry_run=dry_run
        )
        dropped += 1
    if unknown_dags:
        log.warning(
            "staging_owner_unknown",
            dag_ids=sorted(unknown_dags),
            reason="old checkpoints of DAGs with no sync file: their staging tables cannot be named",
        )
    return dropped


def sync_targets() -> dict[str, TargetSpec]:
    """Each sync DAG's target table, from include/automations/*.yaml (what names its staging tables)."""
    from batchkit.sync_spec import automations_dir, load_spec

    specs = (load_spec(path) for path in sorted(automations_dir().glob("*.yaml")))
    return {spec.dag_id: spec.target_spec() for spec in specs}


@dataclass(frozen=True)
class FileRetention:
    """Files an automation leaves under the reports base, declared for platform_cleanup.

    name: who writes them (the DAG id; in logs). folder: their folder under the reports base, relative.
    day_of: a file name -> the day the file is for, or None for a file that is not one of them (it
    stays). days_field: the RetentionPolicy field (a platform_cleanup param) giving their age in days.
    """

    name: str
    folder: str
    day_of: Callable[[str], date | None]
    days_field: str = "report_file_days"

    def __post_init__(self) -> None:
        parts = self.folder.split("/")
        if not self.folder or self.folder.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"file retention {self.name!r}: folder must be a relative path, got {self.folder!r}"
            )
        if self.days_field not in {field.name for field in fields(RetentionPolicy)}:
            raise ValueError(
                f"file retention {self.name!r}: days_field {self.days_field!r} is not a RetentionPolicy field"
            )


def declared_file_retention(package: str = DECLARATIONS_PACKAGE) -> tuple[FileRetention, ...]:
    """Every FILE_RETENTION of the modules <package>.<domain>.retention, by domain; a folder declared
    twice is an error (its files would be counted, and judged, twice). Imports those modules: call it in
    a task, not at parse time."""
    root = importlib.import_module(package)
    declared: list[FileRetention] = []
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda info: info.name):
        module_name = f"{package}.{info.name}.{DECLARATIONS_MODULE}"
        if not info.ispkg or importlib.util.find_spec(module_name) is None:
            continue
        entries = getattr(importlib.import_module(module_name), DECLARATIONS_ATTRIBUTE, ())
        for entry in entries:
            if not isinstance(entry, FileRetention):
                raise TypeError(f"{module_name}.{DECLARATIONS_ATTRIBUTE}: not a FileRetention: {entry!r}")
            declared.append(entry)
    by_folder: dict[str, str] = {}
    for entry in declared:
        if entry.folder in by_folder:
            raise ValueError(
                f"folder {entry.folder!r} declared twice for retention: {by_folder[entry.folder]!r}, {entry.name!r}"
            )
        by_folder[entry.folder] = entry.name
    return tuple(declared)


def purge_declared_files(
    base: ObjectStoragePath,
    policy: RetentionPolicy,
    *,
    now: datetime,
    dry_run: bool,
    declarations: Sequence[FileRetention] | None = None,
) -> dict[str, int]:
    """Purge each declared folder under `base` by its own age; counts by folder URL. `declarations`:
    declared_file_retention() unless given."""
    if declarations is None:
        declarations = declared_file_retention()
    removed = {}
    for declaration in declarations:
        folder = base / declaration.folder
        removed[str(folder)] = purge_report_files(
            folder,
            day_of=declaration.day_of,
            older_than=policy.cutoff(declaration.days_field, now).date(),
            dry_run=dry_run,
        )
    return removed


def purge_report_files(
    folder: ObjectStoragePath, *, day_of: Callable[[str], date | None], older_than: date, dry_run: bool
) -> int:
    """Delete (or, dry, count) the files in `folder` whose `day_of(name)` is before `older_than`; files
    it gives no day for stay."""
    if not folder.exists():
        return 0
    removed = 0
    for path in sorted(folder.iterdir(), key=str):
        day = day_of(path.name)
        if day is None or day >= older_than:
            continue
        if not dry_run:
            path.unlink()
        log.info("report_file_removed", path=str(path), day=day.isoformat(), dry_run=dry_run)
        removed += 1
    return removed
