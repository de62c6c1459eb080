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
- rows of batch_meta.quarantine, checkpoints, side_effects (the ledger) and alert_log older than their
  age (`ROW_RULES`). A ledger row gone means a rerun of that old key would perform its action again.
- report files of days more than `report_file_days` before the run (the day in the file name, which
  a rerun does not change, unlike a file's modification time).
- Airflow's own metadata through `airflow db clean` (dag runs, task instances, logs, XComs, jobs...):
  the supported tool, which knows the tables, their foreign keys and what must be kept. Airflow 3
  denies task code the metadata DB: the task supervisor overwrites AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
  with "airflow-db-not-allowed:///" in every task process (and so in its subprocesses). The command
  therefore gets the database URL explicitly, from an Airflow connection the deployment grants for this
  purpose (`metadata_db_url`), instead of inheriting the worker's blocked one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from airflow.sdk import ObjectStoragePath
from psycopg import sql

from batchkit.checkpoints import RunIdentity
from batchkit.intervals import DataInterval
from batchkit.load.identifiers import checked_identifier
from batchkit.load.postgres import TargetSpec, staging_table_name
from batchkit.observability import get_logger
from batchkit.report import report_day_of

log = get_logger(__name__)

STAGING_TABLES = "staging_tables"
DB_CLEAN_TIMEOUT_SECONDS = 1800
_DB_CLEAN_TABLE = re.compile(r"^Checking table (\S+)$")
_DB_CLEAN_FOUND = re.compile(r"^Found (\d+) rows meeting deletion criteria\.$")


@dataclass(frozen=True)
class RetentionPolicy:
    """How many days each kind of leftover is kept; the cleanup DAG's params, with these defaults."""

    staging_days: int = 7
    quarantine_days: int = 30
    checkpoint_days: int = 90
    ledger_days: int = 400
    alert_log_days: int = 90
    report_file_days: int = 400
    metadata_days: int = 30

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
    "alert_log_days": "Delete alert log rows older than this.",
    "report_file_days": "Delete report files of days further back than this.",
    "metadata_days": "airflow db clean: purge Airflow metadata (runs, task instances, logs...) older than this.",
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
    if not _table_exists(conn, rule.table):
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
    if not _table_exists(conn, "batch_meta.checkpoints"):
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
    for dag_id, task_id, interval_start, interval_end in stale:
        target = targets_by_dag.get(dag_id)
        if target is None:
            unknown_dags.add(dag_id)
            continue
        # The scope, which names the staging table, is (dag, task, interval): the run id plays no part.
        scope = RunIdentity(dag_id, task_id, "", DataInterval(interval_start, interval_end)).scope()
        table = staging_table_name(target, scope)
        if not _table_exists(conn, table):
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


def purge_report_files(folder: ObjectStoragePath, *, older_than: date, dry_run: bool) -> int:
    """Delete (or, dry, count) the report files in `folder` of days before `older_than`; other files stay."""
    if not folder.exists():
        return 0
    removed = 0
    for path in sorted(folder.iterdir(), key=str):
        day = report_day_of(path.name)
        if day is None or day >= older_than:
            continue
        if not dry_run:
            path.unlink()
        log.info("report_file_removed", path=str(path), day=day.isoformat(), dry_run=dry_run)
        removed += 1
    return removed


def metadata_db_url(conn: Any) -> str:
    """The SQLAlchemy URL (psycopg2 driver, as Airflow's own) of a postgres Airflow connection to the
    metadata DB; a host starting with "/" is a Unix socket directory."""
    from sqlalchemy.engine import URL

    if conn.conn_type not in ("postgres", "postgresql"):
        raise ValueError(
            f"connection {conn.conn_id!r}: expected conn_type 'postgres', got {conn.conn_type!r}"
        )
    socket_dir = conn.host if conn.host and conn.host.startswith("/") else None
    return URL.create(
        "postgresql+psycopg2",
        username=conn.login or None,
        password=conn.password or None,
        host=None if socket_dir else conn.host,
        port=conn.port,
        database=conn.schema,
        query={"host": socket_dir} if socket_dir else {},
    ).render_as_string(hide_password=False)


def db_clean_command(before: datetime, *, dry_run: bool) -> list[str]:
    """`airflow db clean` over every table it knows, without archive tables and without prompting."""
    if before.tzinfo is None:
        raise ValueError(f"the db clean cutoff must be timezone-aware, got {before!r}")
    command = [
        sys.executable, "-m", "airflow", "db", "clean",
        "--clean-before-timestamp", before.isoformat(),
        "--skip-archive", "--yes", "--error-on-cleanup-failure",
    ]  # fmt: skip
    return [*command, "--dry-run"] if dry_run else command


def airflow_db_clean(before: datetime, *, dry_run: bool, sql_alchemy_conn: str) -> dict[str, int]:
    """Run `airflow db clean` on the metadata DB at `sql_alchemy_conn` in a subprocess; returns the rows it
    found (and, unless dry, removed) per table. The URL travels in the environment, not on the command
    line, so it stays out of process listings and logs."""
    env = {name: value for name, value in os.environ.items() if name != "AIRFLOW__CORE__SQL_ALCHEMY_CONN"}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = sql_alchemy_conn
    result = subprocess.run(
        db_clean_command(before, dry_run=dry_run),
        capture_output=True,
        text=True,
        env=env,
        timeout=DB_CLEAN_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"airflow db clean exited with {result.returncode}: {(result.stderr or result.stdout)[-2000:]}"
        )
    found = parse_db_clean_output(result.stdout)
    if not found:
        raise RuntimeError(
            "airflow db clean succeeded but reported no table: has its output format changed? "
            f"Output: {result.stdout[-2000:]}"
        )
    return found


def parse_db_clean_output(stdout: str) -> dict[str, int]:
    """{table: rows} from db clean's "Checking table T" / "Found N rows meeting deletion criteria." lines."""
    found: dict[str, int] = {}
    table = None
    for line in stdout.splitlines():
        if match := _DB_CLEAN_TABLE.match(line.strip()):
            table = match.group(1)
        elif (match := _DB_CLEAN_FOUND.match(line.strip())) and table is not None:
            found[table] = int(match.group(1))
            table = None
    return found


def _table_exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
