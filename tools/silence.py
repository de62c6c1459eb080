"""`make silence`: hold a DAG's alerts for a while, with a reason (batchkit.alerts.silence).

    python -m tools.silence DAG_ID --hours 4 --reason "shop API maintenance" [--task 'extract%']

The warehouse database is `$WAREHOUSE_CONNINFO` (a libpq conninfo or URL) if set, else the `warehouse`
database of the embedded Postgres that `make run` started. A silence always expires; the alert log
records every alert it held back as 'silenced'.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

import psycopg

from tools.metadb import LOCAL_DIR, DatabaseRole, EmbeddedPostgres


def warehouse_conninfo() -> str:
    configured = os.environ.get("WAREHOUSE_CONNINFO")
    if configured:
        return configured
    embedded = EmbeddedPostgres(LOCAL_DIR / "pgdata")
    if not embedded.is_running():
        raise SystemExit("no WAREHOUSE_CONNINFO and the `make run` stack is not running: nothing to silence")
    from dotenv import dotenv_values

    from tools.stack import GENERATED_ENV, WAREHOUSE_DB, WAREHOUSE_ROLE

    # As the warehouse's own role, like the tasks: a superuser would create tables they cannot use.
    role = DatabaseRole(WAREHOUSE_ROLE, dotenv_values(GENERATED_ENV)["WAREHOUSE_ROLE_PASSWORD"])
    return embedded.start().as_role(role).conninfo(WAREHOUSE_DB)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.silence", description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("--hours", type=float, required=True)
    parser.add_argument("--reason", required=True)
    parser.add_argument("--task", default="%", help="SQL LIKE pattern of task ids (default: every task)")
    args = parser.parse_args(argv)

    from batchkit.alerts import silence

    print(f"silencing alerts of {args.dag_id} (tasks LIKE {args.task!r}) for {args.hours} h: {args.reason}")
    with psycopg.connect(warehouse_conninfo(), autocommit=True) as conn:
        until = silence(
            conn,
            dag_id=args.dag_id,
            task_pattern=args.task,
            duration=timedelta(hours=args.hours),
            reason=args.reason,
        )
    print(f"silenced until {until.isoformat()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
