"""SQL files under the repo's include/ folder, applied idempotently to a psycopg connection.

The files themselves are written to be re-runnable (`CREATE ... IF NOT EXISTS`); this module only finds
them and serialises concurrent appliers, since two sessions racing through the same `CREATE TABLE IF NOT
EXISTS` can still collide on the catalog and one of them fails with a unique violation.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

import batchkit

INCLUDE_DIR_ENV = "BATCHKIT_INCLUDE_DIR"
DDL_LOCK_NAME = "batchkit:ddl"


def include_dir() -> Path:
    """The include/ folder: `$BATCHKIT_INCLUDE_DIR` if set (deployed images), else the repo's own."""
    override = os.environ.get(INCLUDE_DIR_ENV)
    if override:
        return Path(override)
    return Path(batchkit.__file__).resolve().parents[2] / "include"


def resolve_sql_path(path: str | Path) -> Path:
    """An absolute path as is; a relative one (e.g. "sql/batch_meta/side_effects.sql") under include/."""
    path = Path(path)
    return path if path.is_absolute() else include_dir() / path


def apply_sql_file(conn: psycopg.Connection, path: str | Path) -> None:
    """Execute one SQL file in a transaction, under the advisory lock all batchkit DDL shares.

    One lock for every file, not one per file: different files create the same schema (batch_meta),
    and those statements race each other just as well. On an idle connection the DDL is committed here;
    inside a caller's transaction it becomes a savepoint and commits with the caller.
    """
    script = resolve_sql_path(path).read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (DDL_LOCK_NAME,))
        # Without parameters psycopg uses the simple-query protocol, which runs a multi-statement file.
        conn.execute(script)
