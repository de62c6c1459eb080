"""Start-up to healthy, and idle memory (PSS) of the whole `make run` stack on an embedded Postgres.

    .venv/bin/python -m bench.stack_startup [--idle-seconds 60]

Uses a throwaway data dir, the same AirflowStack as `make run`, and sums PSS over every process the
stack started (children included) plus the embedded Postgres server's processes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import write_result
from tools.metadb import EmbeddedPostgres, ensure_database
from tools.stack import AirflowStack


def pss_mib(roots: list[int]) -> float:
    seen: set[int] = set()
    total = 0
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp) / "pgdata")
        t0 = time.monotonic()
        server = embedded.start()
        ensure_database(server, "airflow")
        t_pg = time.monotonic()
        stack = AirflowStack(
            airflow_home=Path(tmp) / "home", sql_alchemy_conn=server.sqlalchemy_url("airflow"), api_port=8097
        )
        try:
            stack.prepare(settings_file=None)
            t_migrated = time.monotonic()
            stack.start()
            stack.wait_healthy()
            t_healthy = time.monotonic()
            time.sleep(args.idle_seconds)
            postmaster = psutil.Process(int((Path(tmp) / "pgdata" / "postmaster.pid").read_text().split()[0]))
            airflow_pss = pss_mib([p.popen.pid for p in stack.processes if p.popen])
            postgres_pss = pss_mib([postmaster.pid])
        finally:
            stack.stop()
            embedded.stop()
    write_result(
        "stack_startup",
        {
            "command": "python -m bench.stack_startup",
            "embedded_postgres_start_s": round(t_pg - t0, 2),
            "db_migrate_s": round(t_migrated - t_pg, 2),
            "components_start_to_healthy_s": round(t_healthy - t_migrated, 2),
            "total_to_healthy_s": round(t_healthy - t0, 2),
            "idle_seconds_before_sampling": args.idle_seconds,
            "idle_pss_airflow_mib": round(airflow_pss, 1),
            "idle_pss_postgres_mib": round(postgres_pss, 1),
            "idle_pss_total_mib": round(airflow_pss + postgres_pss, 1),
        },
    )


if __name__ == "__main__":
    main()
