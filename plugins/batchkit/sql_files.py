"""SQL files under the include/ folder, applied idempotently to a psycopg connection.

Where include/ is (the SQL here, the sync YAML for batchkit.sync_spec) comes from configuration, never
from this file's own place on disk: `$BATCHKIT_INCLUDE_DIR` when set (docker-compose.yaml, the deployed
images, the benchmarks' generated roots), else the location of the importable `include` package, the same
package `include.contracts` is imported from. Every component has the folder holding include/ on its
PYTHONPATH (docker-compose's PYTHONPATH=/opt/airflow, tools/airflow_env.py, pytest's pythonpath), so the
SQL and the contracts come from one place; with neither, `include_dir` raises an error naming both.

The files themselves are written to be re-runnable (`CREATE ... IF NOT EXISTS`); this module only finds
them and serialises concurrent appliers, since two sessions racing through the same `CREATE TABLE IF NOT
EXISTS` can still collide on the catalog and one of them fails with a unique violation.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import psycopg

INCLUDE_DIR_ENV = "BATCHKIT_INCLUDE_DIR"
INCLUDE_PACKAGE = "include"
DDL_LOCK_NAME = "batchkit:ddl"


def include_dir() -> Path:
    """The include/ folder: `$BATCHKIT_INCLUDE_DIR` if set, else where `include.contracts` is imported from.

    `include` is a namespace package (no __init__.py): of its portions on sys.path, the first holding
    contracts/__init__.py is the one `import include.contracts` resolves to, so the SQL and the YAML are
    read from the same folder the record contracts come from.
    """
    override = os.environ.get(INCLUDE_DIR_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec(INCLUDE_PACKAGE)
    portions = [Path(p) for p in spec.submodule_search_locations or ()] if spec is not None else []
    locations = [p for p in portions if (p / "contracts" / "__init__.py").is_file()]
    if not locations:
        raise RuntimeError(
            f"include/ not found: set ${INCLUDE_DIR_ENV} to the include/ folder, or put the folder that "
            f"holds it on PYTHONPATH so the {INCLUDE_PACKAGE!r} package is importable"
        )
    return locations[0]


def resolve_sql_path(path: str | Path) -> Path:
    """An absolute path as is; a relative one (e.g. "sql/targets/sales_orders.sql") under include/."""
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
