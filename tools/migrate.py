"""`make migrate`: bring a warehouse's control tables (batch_meta) to the version this code needs.

    .venv/bin/python -m tools.migrate

Applies include/sql/migrations/ not applied yet (batchkit.migrations.migrate) as the warehouse database's
owner, and prints what it applied and the version the warehouse is at. Where: WAREHOUSE_HOST/PORT/DB/
USER/PASSWORD if set (the compose `airflow-init` service, your own warehouse); else `make run`'s
warehouse as `warehouse_rw`, found as `make psql` finds it (tools.psql.connection). `make run` calls
`migrate_conninfo` itself right after provisioning the warehouse; tasks only check the version.
"""

from __future__ import annotations

import os
import sys

import psycopg
from psycopg.conninfo import make_conninfo

import tools  # noqa: F401  (puts plugins/ on sys.path for batchkit)
from batchkit.migrations import Migration, current_version, migrate


def migrate_conninfo(conninfo: str, *, label: str = "warehouse") -> list[Migration]:
    """Migrate the database at libpq `conninfo`; prints each applied file and the resulting version."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        applied = migrate(conn)
        version = current_version(conn)
    for migration in applied:
        print(f"{label}: applied migration {migration.file}")
    print(f"{label}: control-table schema at version {version}", flush=True)
    return applied


def warehouse_conninfo() -> str:
    """WAREHOUSE_* when WAREHOUSE_HOST is set, else `make run`'s warehouse (tools.psql.connection)."""
    if os.environ.get("WAREHOUSE_HOST"):
        return make_conninfo(
            host=os.environ["WAREHOUSE_HOST"],
            port=os.environ.get("WAREHOUSE_PORT", "5432"),
            user=os.environ.get("WAREHOUSE_USER", "warehouse_rw"),
            password=os.environ.get("WAREHOUSE_PASSWORD", ""),
            dbname=os.environ.get("WAREHOUSE_DB", "warehouse"),
        )
    from tools.psql import connection

    env = connection()
    return make_conninfo(
        host=env["PGHOST"],
        port=env["PGPORT"],
        user=env["PGUSER"],
        password=env["PGPASSWORD"],
        dbname=env["PGDATABASE"],
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        print(
            "usage: python -m tools.migrate  (the warehouse comes from WAREHOUSE_* or make run)",
            file=sys.stderr,
        )
        return 2
    migrate_conninfo(warehouse_conninfo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
