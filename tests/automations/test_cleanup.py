"""platform_cleanup end to end: dag.test() against the real warehouse (as the restricted warehouse role
the `warehouse` connection logs in as) and report files on local disk. Airflow's own metadata is not the
DAG's job (`make db-clean` is maintenance, outside task code): the DAG has no task or connection for it.

Everything is seeded with explicit timestamps one day either side of its retention age, so each
assertion says exactly which rows, tables, files and dag runs are old. tests/automations/conftest.py
empties checkpoints, quarantine, the alert log and staging before each test.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from airflow.sdk import ObjectStoragePath
from psycopg.types.json import Jsonb

from batchkit.checkpoints import RunIdentity
from batchkit.intervals import DataInterval
from batchkit.load.postgres import prepare_staging, stage_rows
from batchkit.retention import (
    FileRetention,
    RetentionPolicy,
    declared_file_retention,
    purge_declared_files,
)
from batchkit.sync_spec import load_spec, spec_path
from include.sales.daily_report import REPORT_NAME, report_day_of
from tests.dagrun import parse_dag, returned, run_dag
from tools import REPO_ROOT

CLEANUP_FILE = REPO_ROOT / "dags" / "platform" / "platform_cleanup.py"
CLEANUP_TASKS = ("purge_warehouse", "purge_report_files")
# What airflow.sdk.execution_time.supervisor.block_orm_access() puts in a task process's environment.
BLOCKED_METADATA_DB = "airflow-db-not-allowed:///"


@dataclass(frozen=True)
class Seeded:
    """What the test put in place, by what must happen to it."""

    old_staging: list[str]
    kept_staging: list[str]
    checkpoints_removed: set[tuple[str, datetime]]
    checkpoints_kept: set[tuple[str, datetime]]


def ago(now: datetime, days: int, *, margin: int) -> datetime:
    """`days` + `margin` days before `now`: margin +1 is just old enough to go, -1 just young enough to stay."""
    return now - timedelta(days=days + margin)


@pytest.fixture
def policy() -> RetentionPolicy:
    return RetentionPolicy(
        staging_days=7,
        quarantine_days=30,
        checkpoint_days=60,
        ledger_days=90,
        alert_log_days=45,
        report_file_days=100,
    )


def staging_table(conn: psycopg.Connection, dag_id: str, interval_start: datetime) -> str:
    """Create the staging table the sync library makes for this interval (empty), and return its name."""
    target = load_spec(spec_path(dag_id)).target_spec()
    identity = RunIdentity(
        dag_id, "sync", "seed", DataInterval(interval_start, interval_start + timedelta(days=1))
    )
    staging = prepare_staging(conn, target, identity.scope())
    with conn.transaction():
        stage_rows(conn, staging, [])
    return staging.table


def checkpoint(
    conn: psycopg.Connection, dag_id: str, interval_start: datetime, state: str, updated_at: datetime
) -> None:
    conn.execute(
        """
        INSERT INTO batch_meta.checkpoints (dag_id, task_id, interval_start, interval_end, run_id, state, updated_at)
        VALUES (%s, 'sync', %s, %s, 'seed', %s, %s)
        """,
        (dag_id, interval_start, interval_start + timedelta(days=1), state, updated_at),
    )


def seed_warehouse(conn: psycopg.Connection, policy: RetentionPolicy, now: datetime) -> Seeded:
    conn.execute("TRUNCATE batch_meta.side_effects, batch_meta.alert_digest, batch_meta.quality_results")
    intervals = [datetime(2026, 2, day, 2, tzinfo=UTC) for day in range(1, 6)]
    staging_days, checkpoint_days = policy.staging_days, policy.checkpoint_days

    # A died 8 days ago (staging goes, checkpoint stays); B 6 days ago (both stay); C is complete and
    # 61 days old, E died 61 days ago (both go, with E's staging); D belongs to a DAG without a sync file.
    checkpoint(conn, "sales_orders_sync", intervals[0], "in_progress", ago(now, staging_days, margin=1))
    checkpoint(conn, "sales_orders_sync", intervals[1], "in_progress", ago(now, staging_days, margin=-1))
    checkpoint(conn, "crm_customers_sync", intervals[2], "complete", ago(now, checkpoint_days, margin=1))
    checkpoint(conn, "retired_sync", intervals[3], "in_progress", ago(now, staging_days, margin=1))
    checkpoint(conn, "sales_orders_sync", intervals[4], "in_progress", ago(now, checkpoint_days, margin=1))
    old_staging = [staging_table(conn, "sales_orders_sync", intervals[i]) for i in (0, 4)]
    kept_staging = [staging_table(conn, "sales_orders_sync", intervals[1])]

    for margin in (1, -1):
        conn.execute(
            """
            INSERT INTO batch_meta.quarantine (dag_id, task_id, run_id, interval_start, interval_end, source,
                                               page_number, record_index, payload, error, created_at)
            VALUES ('sales_orders_sync', 'sync', 'seed', %s, %s, 'orders', 1, 0, %s, 'bad amount', %s)
            """,
            (
                intervals[0],
                intervals[1],
                Jsonb({"margin": margin}),
                ago(now, policy.quarantine_days, margin=margin),
            ),
        )
        conn.execute(
            "INSERT INTO batch_meta.side_effects (effect_key, state, attempts, updated_at) VALUES (%s, 'done', 1, %s)",
            (f"seed:{margin}", ago(now, policy.ledger_days, margin=margin)),
        )
        conn.execute(
            """
            INSERT INTO batch_meta.alert_log (kind, dag_id, task_id, outcome, payload, created_at)
            VALUES ('task_failed', 'seed', %s, 'sent', '{}', %s)
            """,
            (str(margin), ago(now, policy.alert_log_days, margin=margin)),
        )
        conn.execute(
            """
            INSERT INTO batch_meta.alert_digest (kind, dag_id, task_id, payload, smtp_conn_id, recipients,
                                                 batch, sent_at, created_at)
            VALUES ('task_failed', 'seed', %s, '{}', 'alerts_smtp', ARRAY['ops@example.com'], 'seed', %s, %s)
            """,
            (
                f"sent {margin}",
                ago(now, policy.alert_log_days, margin=margin),
                ago(now, policy.alert_log_days, margin=2),
            ),
        )
        conn.execute(
            """
            INSERT INTO batch_meta.quality_results (dag_id, task_id, run_id, check_name, passed, checked_at)
            VALUES ('seed', 'check_keys', 'seed', %s, true, %s)
            """,
            (str(margin), ago(now, policy.quality_results_days, margin=margin)),
        )
    # Never sent (its digest keeps failing): however old, it waits for the next digest.
    conn.execute(
        """
        INSERT INTO batch_meta.alert_digest (kind, dag_id, task_id, payload, smtp_conn_id, recipients, created_at)
        VALUES ('task_failed', 'seed', 'unsent', '{}', 'alerts_smtp', ARRAY['ops@example.com'], %s)
        """,
        (ago(now, policy.alert_log_days, margin=30),),
    )
    return Seeded(
        old_staging=old_staging,
        kept_staging=kept_staging,
        checkpoints_removed={("crm_customers_sync", intervals[2]), ("sales_orders_sync", intervals[4])},
        checkpoints_kept={
            ("sales_orders_sync", intervals[0]),
            ("sales_orders_sync", intervals[1]),
            ("retired_sync", intervals[3]),
        },
    )


def seed_report_files(folder: Path, policy: RetentionPolicy, today: date) -> tuple[set[str], set[str]]:
    """(old, kept) file names: a day just past the age, a day just within it, and files that are not reports."""
    old_day = today - timedelta(days=policy.report_file_days + 1)
    kept_day = today - timedelta(days=policy.report_file_days - 1)
    old = {f"{REPORT_NAME}_{old_day.isoformat()}.{fmt}" for fmt in ("csv", "html")}
    kept = {f"{REPORT_NAME}_{kept_day.isoformat()}.{fmt}" for fmt in ("csv", "html")}
    kept |= {"README.txt", f"{REPORT_NAME}_{old_day.isoformat()}.csv.bak"}
    folder.mkdir(parents=True)
    for name in old | kept:
        (folder / name).write_text("seed\n")
    return old, kept


def existing_tables(conn: psycopg.Connection, tables: list[str]) -> set[str]:
    return {table for table in tables if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]}


def checkpoints(conn: psycopg.Connection) -> set[tuple[str, datetime]]:
    return set(conn.execute("SELECT dag_id, interval_start FROM batch_meta.checkpoints").fetchall())


def margins_left(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Which seeded row (by its margin: '1' old, '-1' recent) remains in each table."""
    return {
        "quarantine": [r[0] for r in conn.execute("SELECT payload->>'margin' FROM batch_meta.quarantine")],
        "side_effects": [
            r[0] for r in conn.execute("SELECT split_part(effect_key, ':', 2) FROM batch_meta.side_effects")
        ],
        "alert_log": [r[0] for r in conn.execute("SELECT task_id FROM batch_meta.alert_log")],
        "alert_digest": sorted(r[0] for r in conn.execute("SELECT task_id FROM batch_meta.alert_digest")),
        "quality_results": [r[0] for r in conn.execute("SELECT check_name FROM batch_meta.quality_results")],
    }


def run_cleanup(policy: RetentionPolicy, *, dry_run: bool) -> Any:
    """One run of platform_cleanup, with the metadata DB denied to its tasks' environment exactly as
    Airflow's task supervisor denies it to a worker's task process (dag.test() runs tasks in-process,
    without the supervisor, so this test applies that part of it)."""
    # Every param every time: dag.test() leaves a run's conf in the Param objects its DAG copies share.
    dag = parse_dag(CLEANUP_FILE, "platform_cleanup")
    conf = {**{name: getattr(policy, name) for name in policy.__dataclass_fields__}, "dry_run": dry_run}
    with pytest.MonkeyPatch.context() as worker_env:
        worker_env.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", BLOCKED_METADATA_DB)
        worker_env.setenv("AIRFLOW__CORE__SQL_ALCHEMY_CONN", BLOCKED_METADATA_DB)
        dag_run = run_dag(dag, None, conf)
    states = {task.task_id: str(task.state) for task in dag_run.get_task_instances()}
    assert dag_run.state == "success", states
    assert states == dict.fromkeys(CLEANUP_TASKS, "success")
    return dag_run


def test_retention_params_are_checked_by_name() -> None:
    with pytest.raises(
        ValueError, match=r"retention param 'quarantine_days': expected a whole number of days >= 1"
    ):
        RetentionPolicy(quarantine_days=0)
    with pytest.raises(ValueError, match=r"'staging_days' \(10\) must not exceed 'checkpoint_days' \(5\)"):
        RetentionPolicy(staging_days=10, checkpoint_days=5)
    assert RetentionPolicy.from_params({"ledger_days": 12, "dry_run": True}).ledger_days == 12


def test_the_dag_holds_no_metadata_db_access() -> None:
    """No task cleans Airflow's metadata and no connection of the settings file reaches its database."""
    dag = parse_dag(CLEANUP_FILE, "platform_cleanup")
    assert set(dag.task_ids) == set(CLEANUP_TASKS)
    assert "metadata_days" not in dag.params
    settings = yaml.safe_load((REPO_ROOT / "airflow_settings.yaml").read_text())["airflow"]
    # A rule, not the inventory: a new source may declare its own Postgres connection (CONTRIBUTING).
    assert "warehouse" in [c["conn_id"] for c in settings["connections"] if c["conn_type"] == "postgres"]
    for connection in settings["connections"]:
        assert "metadata" not in connection["conn_id"], connection["conn_id"]
        text = " ".join(str(value) for value in connection.values()).upper()
        for metadata_setting in ("SQL_ALCHEMY", "AIRFLOW__DATABASE", "METADATA"):
            assert metadata_setting not in text, f"{connection['conn_id']} reads {metadata_setting}"


@pytest.mark.slow
def test_cleanup_removes_exactly_what_is_old_and_a_dry_run_nothing(
    policy: RetentionPolicy, warehouse: psycopg.Connection, reports_dir: Path
) -> None:
    now = datetime.now(UTC)
    seeded = seed_warehouse(warehouse, policy, now)
    old_files, kept_files = seed_report_files(reports_dir / REPORT_NAME, policy, now.date())
    all_staging = seeded.old_staging + seeded.kept_staging
    before = (checkpoints(warehouse), margins_left(warehouse))
    assert before[0] == seeded.checkpoints_kept | seeded.checkpoints_removed
    # One row just past its age in each row table (see margins_left).
    expected_warehouse = {
        "staging_tables": len(seeded.old_staging),
        "batch_meta.quarantine": 1,
        "batch_meta.checkpoints": len(seeded.checkpoints_removed),
        "batch_meta.side_effects": 1,
        "batch_meta.alert_log": 1,
        "batch_meta.alert_digest": 1,
        "batch_meta.quality_results": 1,
    }

    dry = run_cleanup(policy, dry_run=True)

    assert returned(dry, "purge_warehouse") == expected_warehouse
    assert returned(dry, "purge_report_files") == {(reports_dir / REPORT_NAME).as_uri(): len(old_files)}
    assert existing_tables(warehouse, all_staging) == set(all_staging)
    assert (checkpoints(warehouse), margins_left(warehouse)) == before
    assert {p.name for p in (reports_dir / REPORT_NAME).iterdir()} == old_files | kept_files

    real = run_cleanup(policy, dry_run=False)

    assert returned(real, "purge_warehouse") == expected_warehouse
    assert existing_tables(warehouse, all_staging) == set(seeded.kept_staging)
    assert checkpoints(warehouse) == seeded.checkpoints_kept
    assert margins_left(warehouse) == {
        "quarantine": ["-1"],
        "side_effects": ["-1"],
        "alert_log": ["-1"],
        "alert_digest": ["sent -1", "unsent"],
        "quality_results": ["-1"],
    }
    assert {p.name for p in (reports_dir / REPORT_NAME).iterdir()} == kept_files


def test_report_files_are_purged_as_their_automations_declare_them(tmp_path: Path) -> None:
    """The platform library knows no automation's files: each declares its own (include/<domain>/
    retention.py), and the purge takes every declaration with its own folder, parser and age."""
    retention_source = (REPO_ROOT / "plugins" / "batchkit" / "retention.py").read_text()
    imported = {
        node.module
        for node in ast.walk(ast.parse(retention_source))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {m for m in imported if m.startswith("include") or m.startswith("batchkit.report")}, imported
    [sales] = [entry for entry in declared_file_retention() if entry.folder == REPORT_NAME]
    assert (sales.name, sales.day_of, sales.days_field) == (
        "sales_daily_report",
        report_day_of,
        "report_file_days",
    )

    with pytest.raises(ValueError, match=r"days_field 'no_such_days' is not a RetentionPolicy field"):
        FileRetention("x", "x", report_day_of, days_field="no_such_days")
    with pytest.raises(ValueError, match=r"folder must be a relative path"):
        FileRetention("x", "../x", report_day_of)

    # Another automation's files: its own folder, name scheme and age (the ledger's here), side by side.
    def other_day_of(name: str) -> date | None:
        return date.fromisoformat(name.removeprefix("other-")) if name.startswith("other-") else None

    other = FileRetention("other_report", "other", other_day_of, days_field="ledger_days")
    policy = RetentionPolicy(report_file_days=10, ledger_days=20)
    now = datetime(2026, 3, 31, tzinfo=UTC)
    for folder, names in {
        REPORT_NAME: [f"{REPORT_NAME}_2026-03-20.csv", f"{REPORT_NAME}_2026-03-22.csv"],
        "other": ["other-2026-03-10", "other-2026-03-12", f"{REPORT_NAME}_2026-01-01.csv"],
    }.items():
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_text("seed\n")
    base = ObjectStoragePath(tmp_path.as_uri())

    removed = purge_declared_files(base, policy, now=now, dry_run=False, declarations=(sales, other))

    assert removed == {str(base / REPORT_NAME): 1, str(base / "other"): 1}
    assert sorted(p.name for p in (tmp_path / REPORT_NAME).iterdir()) == [f"{REPORT_NAME}_2026-03-22.csv"]
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == [
        "other-2026-03-12",
        f"{REPORT_NAME}_2026-01-01.csv",
    ]
