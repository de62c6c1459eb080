"""The control tables' (batch_meta.*) schema, versioned: ordered SQL migrations and a version check.

include/sql/migrations/NNNN_name.sql are applied in version order, each once, and recorded in
batch_meta.schema_version (version, file, applied_at). `migrate(conn)` runs at deploy/start, never in a
task: `make migrate`, `make run` (tools.stack, right after it provisions the warehouse) and the compose
`airflow-init` service (both through tools.migrate), and the test fixtures that create warehouses. Tasks
only call `require_current(conn)`: one SELECT the first time a process meets a database, then nothing.

Why plain SQL files and not Alembic: the control tables are a handful of Postgres tables no SQLAlchemy
model describes, so autogenerate has nothing to compare; what is needed is "apply the files not applied
yet, in order, once" and "which version is this database at", which is this module. Downgrades are not
offered: a change is undone by a new forward migration.

Concurrency: a run takes the transaction-level advisory lock every batchkit DDL shares
(batchkit.sql_files.DDL_LOCK_NAME, so it also serialises with the target-table DDL a sync still applies),
then reads the applied versions, so two runners never interleave and each step is applied once. The whole
run is one transaction: the warehouse ends at the latest version or stays where it was. A migration that
cannot run in a transaction (CREATE INDEX CONCURRENTLY) therefore does not belong here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from batchkit.sql_files import DDL_LOCK_NAME, include_dir

MIGRATIONS_SUBDIR = Path("sql") / "migrations"
VERSION_TABLE = "batch_meta.schema_version"
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_VERSION_TABLE_DDL = """
CREATE SCHEMA IF NOT EXISTS batch_meta;
CREATE TABLE IF NOT EXISTS batch_meta.schema_version (
    version     integer     PRIMARY KEY CHECK (version > 0),
    file        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
# Databases (host, port, dbname, migrations folder) this process found current: checked once per process.
_current: set[tuple[str, int, str, Path]] = set()


class SchemaVersionError(RuntimeError):
    """The warehouse's control tables are older than this code needs."""


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path

    @property
    def file(self) -> str:
        return self.path.name


def migrations_dir(directory: str | Path | None = None) -> Path:
    """`directory` if given, else include/sql/migrations (batchkit.sql_files.include_dir)."""
    return Path(directory) if directory is not None else include_dir() / MIGRATIONS_SUBDIR


def discover(directory: str | Path | None = None) -> list[Migration]:
    """The migrations in `directory`, by version; a .sql file not named NNNN_name.sql or a version used
    twice is an error (a typo would otherwise be skipped silently)."""
    folder = migrations_dir(directory)
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: a migration is named NNNN_lowercase_words.sql")
        version = int(match[1])
        if version == 0:
            raise ValueError(f"{path}: versions start at 0001")
        if version in found:
            raise ValueError(f"{path}: version {version} is already used by {found[version].file}")
        found[version] = Migration(version, path)
    if not found:
        raise ValueError(f"{folder}: no migrations found")
    return [found[version] for version in sorted(found)]


def latest_version(directory: str | Path | None = None) -> int:
    return discover(directory)[-1].version


def current_version(conn: psycopg.Connection) -> int:
    """The highest applied version; 0 when the database has no batch_meta.schema_version."""
    with conn.transaction():
        (exists,) = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSION_TABLE,)).fetchone()
        if not exists:
            return 0
        (version,) = conn.execute(
            "SELECT coalesce(max(version), 0) FROM batch_meta.schema_version"
        ).fetchone()
    return version


def migrate(conn: psycopg.Connection, directory: str | Path | None = None) -> list[Migration]:
    """Apply the migrations the database has not had, in order, in one transaction; returns them.

    Run it as the warehouse database's owner (the role tasks log in as under `make run` and compose).
    On an idle connection it commits here; inside a caller's transaction it becomes a savepoint.
    """
    migrations = discover(directory)
    applied: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (DDL_LOCK_NAME,))
        conn.execute(_VERSION_TABLE_DDL)
        done = {version for (version,) in conn.execute("SELECT version FROM batch_meta.schema_version")}
        for migration in migrations:
            if migration.version in done:
                continue
            # Without parameters psycopg uses the simple-query protocol, which runs a multi-statement file.
            conn.execute(migration.path.read_text(encoding="utf-8"))
            conn.execute(
                "INSERT INTO batch_meta.schema_version (version, file) VALUES (%s, %s)",
                (migration.version, migration.file),
            )
            applied.append(migration)
    return applied


def require_current(conn: psycopg.Connection, directory: str | Path | None = None) -> None:
    """Raise SchemaVersionError unless the database is at (or past) the latest migration.

    What tasks call instead of creating tables. Cached per process and database once it passed, so the
    cost is one SELECT per database per process. A database past this code's latest version passes: the
    migrations are additive, and during a rolling deploy old workers meet a newer schema.
    """
    folder = migrations_dir(directory).resolve()
    key = (conn.info.host, conn.info.port, conn.info.dbname, folder)
    if key in _current:
        return
    needed = latest_version(folder)
    found = current_version(conn)
    if found < needed:
        raise SchemaVersionError(
            f"warehouse schema is at version {found}, this code needs {needed} "
            f"(database {conn.info.dbname!r} on {conn.info.host}:{conn.info.port}): run `make migrate` / "
            "the compose init (`docker compose run --rm airflow-init`)"
        )
    _current.add(key)
