"""`make dag-test`: `airflow dags test DAG DATE` against `make run`'s metadata DB, warehouse and demo API.

    .venv/bin/python -m tools.dag_test DAG_ID DATE

One run of every task of DAG_ID for logical date DATE, in this process's CLI, no scheduler needed: the
data engineer's first check of a DAG. It uses the same databases and roles as `make run` (the
embedded Postgres is started for the command if `make run` is not running, and stopped afterwards);
when no stack is running, the metadata DB is migrated and airflow_settings.yaml applied first. Tasks
that call the demo upstream need `make run` (which starts it) or DEMO_API_URL. On Airflow 3.3.2 the
command depends on batchkit.airflow_fixes (install_dag_test_deadline_fix), loaded as a plugin.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tools.metadb import EmbeddedPostgres
from tools.private_files import ensure_private_dir
from tools.stack import (
    LOCAL_DIR,
    SUPERVISOR_PID,
    AirflowStack,
    StackError,
    _pid_running,
    choose_database,
    load_env_files,
)

DEFAULT_DEMO_PORT = 8081


def dag_test(dag_id: str, logical_date: str) -> int:
    ensure_private_dir(LOCAL_DIR)
    private_secrets = load_env_files()
    stack_running = SUPERVISOR_PID.exists() and _pid_running(int(SUPERVISOR_PID.read_text()))
    embedded_was_running = EmbeddedPostgres(LOCAL_DIR / "pgdata").is_running()
    databases = choose_database(private_secrets)
    demo_port = int(os.environ.get("DEMO_API_PORT", str(DEFAULT_DEMO_PORT)))
    stack = AirflowStack(
        airflow_home=LOCAL_DIR / "airflow",
        sql_alchemy_conn=databases.sql_alchemy_conn,
        extra_env={
            **databases.warehouse,
            "DEMO_API_URL": os.environ.get("DEMO_API_URL", f"http://127.0.0.1:{demo_port}"),
            "ALERTS_WEBHOOK_URL": os.environ.get(
                "ALERTS_WEBHOOK_URL", f"http://127.0.0.1:{demo_port}/alerts"
            ),
        },
    )
    try:
        if not stack_running:
            print("no `make run` stack: migrating the metadata DB and applying airflow_settings.yaml ...")
            stack.prepare()
        command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, logical_date]
        print(f"airflow dags test {dag_id} {logical_date}", flush=True)
        return subprocess.run(command, env=stack.env).returncode
    finally:
        if databases.embedded is not None and not embedded_was_running:
            databases.embedded.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dag_test", description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("logical_date", help="e.g. 2026-11-01 or 2026-11-01T06:00:00+00:00")
    args = parser.parse_args(argv)
    try:
        return dag_test(args.dag_id, args.logical_date)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
