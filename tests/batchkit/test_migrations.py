"""batchkit.migrations against real Postgres: each test gets a fresh database of its own."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from batchkit.migrations import (
    SchemaVersionError,
    current_version,
    discover,
    latest_version,
    migrate,
    migrations_dir,
    require_current,
)
from batchkit.sql_files import apply_sql_file
from tools.metadb import PgServer, drop_database, ensure_database

# What the per-task DDL of the code before migrations created (include/sql/batch_meta/, moved here).
LEGACY_DDL = Path(__file__).parent / "legacy_batch_meta"
CONTROL_TABLES = {
    "alert_digest",
    "alert_log",
    "alert_silences",
    "checkpoints",
    "quality_results",
    "quarantine",
    "rate_limits",
    "side_effects",
    "schema_version",
}


@pytest.fixture
def fresh_db(pg_server: PgServer) -> Iterator[str]:
    """The conninfo of an empty database, dropped afterwards."""
    name = f"bk_test_migrate_{uuid.uuid4().hex[:10]}"
    ensure_database(pg_server, name)
    try:
        yield pg_server.conninfo(name)
    finally:
        drop_database(pg_server, name)


def _tables(conn: psycopg.Connection) -> set[str]:
    return {
        name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'batch_meta'")
    }


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    return {
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'batch_meta' "
            "AND table_name = %s",
            (table,),
        )
    }


def _versions(conn: psycopg.Connection) -> list[tuple[int, str]]:
    return conn.execute("SELECT version, file FROM batch_meta.schema_version ORDER BY version").fetchall()


def test_a_fresh_database_migrates_to_the_latest_version_and_a_second_run_applies_nothing(
    fresh_db: str,
) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert current_version(conn) == 0
        applied = migrate(conn)
        assert [m.version for m in applied] == [m.version for m in discover()]
        assert applied[0].file == "0001_batch_meta_baseline.sql"
        assert current_version(conn) == latest_version()
        assert _tables(conn) >= CONTROL_TABLES
        assert _versions(conn) == [(m.version, m.file) for m in discover()]
        assert migrate(conn) == []
        assert _versions(conn) == [(m.version, m.file) for m in discover()]
        require_current(conn)


def test_a_database_made_by_the_old_per_task_ddl_upgrades_cleanly(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # The oldest shape in the field: alert_log from before its signature/channels columns ...
        old_alert_log = (LEGACY_DDL / "alert_log.sql").read_text()
        conn.execute(old_alert_log[: old_alert_log.index("-- Added later")])
        # ... and every other file as the tasks applied it, with a row the upgrade must keep.
        for path in sorted(LEGACY_DDL.glob("*.sql")):
            if path.name != "alert_log.sql":
                apply_sql_file(conn, path)
        conn.execute("INSERT INTO batch_meta.side_effects (effect_key) VALUES ('kept')")
        assert "signature" not in _columns(conn, "alert_log")

        assert [m.file for m in migrate(conn)][0] == "0001_batch_meta_baseline.sql"
        assert current_version(conn) == latest_version()
        assert {"signature", "channels"} <= _columns(conn, "alert_log")
        assert conn.execute("SELECT effect_key FROM batch_meta.side_effects").fetchall() == [("kept",)]
        assert _tables(conn) >= CONTROL_TABLES


def test_the_baseline_makes_the_same_tables_as_the_old_per_task_ddl(
    fresh_db: str, pg_server: PgServer
) -> None:
    """The baseline is the old DDL concatenated: same tables, same columns, same types."""
    describe = """
        SELECT table_name, column_name, data_type, is_nullable, column_default
          FROM information_schema.columns WHERE table_schema = 'batch_meta' AND table_name <> 'schema_version'
         ORDER BY table_name, column_name
    """
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        migrate(conn)
        migrated = conn.execute(describe).fetchall()
    name = f"bk_test_legacy_{uuid.uuid4().hex[:10]}"
    ensure_database(pg_server, name)
    try:
        with psycopg.connect(pg_server.conninfo(name), autocommit=True) as conn:
            for path in sorted(LEGACY_DDL.glob("*.sql")):
                apply_sql_file(conn, path)
            legacy = conn.execute(describe).fetchall()
    finally:
        drop_database(pg_server, name)
    assert migrated == legacy


def test_concurrent_runs_apply_each_migration_once(fresh_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            with psycopg.connect(fresh_db, autocommit=True) as conn:
                start.wait()
                results.append([m.file for m in migrate(conn)])
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    everything = [m.file for m in discover()]
    assert sorted(results, key=len) == [[], everything]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert _versions(conn) == [(m.version, m.file) for m in discover()]


def test_require_current_names_both_versions_and_the_fix_on_an_old_database(
    fresh_db: str, tmp_path: Path
) -> None:
    older = tmp_path / "older"
    shutil.copytree(migrations_dir(), older)
    newer = tmp_path / "newer"
    shutil.copytree(migrations_dir(), newer)
    latest = latest_version()
    (newer / f"{latest + 1:04d}_checkpoints_note.sql").write_text(
        "ALTER TABLE batch_meta.checkpoints ADD COLUMN IF NOT EXISTS note text;\n"
    )
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        with pytest.raises(SchemaVersionError, match="warehouse schema is at version 0, this code needs"):
            require_current(conn, older)
        migrate(conn, older)
        require_current(conn, older)
        with pytest.raises(SchemaVersionError) as raised:
            require_current(conn, newer)
        message = str(raised.value)
        assert f"warehouse schema is at version {latest}, this code needs {latest + 1}" in message
        assert "make migrate" in message
        assert "airflow-init" in message


def test_a_new_numbered_file_adds_a_column_and_is_picked_up(fresh_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        migrate(conn, folder)
        assert "note" not in _columns(conn, "checkpoints")
        latest = latest_version(folder)
        added = folder / f"{latest + 1:04d}_checkpoints_note.sql"
        added.write_text("ALTER TABLE batch_meta.checkpoints ADD COLUMN note text;\n")
        assert [m.file for m in migrate(conn, folder)] == [added.name]
        assert "note" in _columns(conn, "checkpoints")
        assert current_version(conn) == latest + 1
        require_current(conn, folder)
        assert migrate(conn, folder) == []


def test_a_failing_migration_leaves_the_database_where_it_was(fresh_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    latest = latest_version(folder)
    (folder / f"{latest + 1:04d}_good.sql").write_text("CREATE TABLE batch_meta.good (id int);\n")
    (folder / f"{latest + 2:04d}_bad.sql").write_text("ALTER TABLE batch_meta.missing ADD COLUMN x int;\n")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        migrate(conn)
        with pytest.raises(psycopg.errors.UndefinedTable):
            migrate(conn, folder)
        assert current_version(conn) == latest
        assert "good" not in _tables(conn)


@pytest.mark.parametrize("name", ["1_short.sql", "0002-dash.sql", "0001_Upper.sql"])
def test_a_misnamed_or_duplicate_migration_is_an_error(tmp_path: Path, name: str) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;\n")
    (tmp_path / name).write_text("SELECT 1;\n")
    with pytest.raises(ValueError, match="migration is named|used by"):
        discover(tmp_path)
    (tmp_path / name).unlink()
    (tmp_path / "0001_again.sql").write_text("SELECT 1;\n")
    with pytest.raises(ValueError, match="used by"):
        discover(tmp_path)
