"""A 30-interval backfill of a sync DAG against a same-shape no-op DAG, under the real scheduler.

    .venv/bin/python -m bench.backfill_vs_noop [--intervals 30] [--max-active-runs 10]

One stack (api-server, scheduler, dag-processor, triggerer; LocalExecutor, parallelism 8) on throwaway
metadata and warehouse databases of the server in $BENCH_PG_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), the demo upstream on loopback, and a dags folder
holding sales_orders_sync and bench/dags/bench_noop_sync_shape.py (the sync's task ids, dependencies
and pools, every task returning at once; the shapes are compared through the REST API first). Pools
as airflow_settings.yaml declares them (demo_api 2, warehouse 4).

Measured, in this order, through the REST API v2 only:
  latency   one triggered run of each DAG: POST .../dagRuns until the run reads `success` (polled every
            0.2 s), and the run's own queued_at -> end_date;
  backfill  POST /backfills for --intervals daily logical dates (max_active_runs --max-active-runs),
            no-op DAG first, then the sync: POST until every run reads `success` (polled every 0.5 s),
            and the backfill's created_at -> the last run's end_date. The sync's table is then checked
            against tools.demo_upstream (every order of the range, no other).

Each DAG's first scheduled run (its latest interval, created when it is unpaused) has finished before
anything is measured. Goal (issue "Operations under the real scheduler"): sync backfill <= 1.5x no-op.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench.common import write_result
from tests.upstream import running_upstream
from tools import REPO_ROOT
from tools.airflow_api import AirflowApi, wait_for
from tools.airflow_env import ADMIN_USER
from tools.demo_upstream import DEFAULT_PER_DAY, Volumes, select
from tools.metadb import PgServer, drop_database, ensure_database
from tools.migrate import migrate_conninfo
from tools.stack import AirflowStack

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYNC = "sales_orders_sync"
NOOP = "bench_noop_sync_shape"
POOLS = {"demo_api": 2, "warehouse": 4}
FIRST_LOGICAL_DATE = datetime(2026, 3, 1, 2, tzinfo=UTC)
LATENCY_LOGICAL_DATE = "2026-02-01T02:00:00Z"
GOAL_RATIO = 1.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def shape(api: AirflowApi, dag_id: str) -> list[tuple[str, str, list[str]]]:
    tasks = api.get(f"/dags/{dag_id}/tasks")["tasks"]
    return sorted((t["task_id"], t["pool"], sorted(t["downstream_task_ids"])) for t in tasks)


def settle(api: AirflowApi, dag_id: str) -> None:
    """Wait until the DAG has a run and none is in flight (its first scheduled run is done)."""

    def settled() -> bool:
        runs = api.dag_runs(dag_id)
        return bool(runs) and all(r["state"] in ("success", "failed") for r in runs)

    wait_for(settled, timeout=300, interval=1, what=f"{dag_id}'s first scheduled run to finish")


def trigger_latency(api: AirflowApi, dag_id: str) -> dict:
    started = time.monotonic()
    run_id = api.trigger(dag_id, logical_date=LATENCY_LOGICAL_DATE)["dag_run_id"]

    def finished() -> dict | None:
        run = api.dag_run(dag_id, run_id)
        if run["state"] == "failed":
            raise RuntimeError(f"{dag_id} run {run_id} failed")
        return run if run["state"] == "success" else None

    run = wait_for(finished, timeout=300, interval=0.2, what=f"{dag_id} run {run_id}")
    return {
        "trigger_to_success_s": round(time.monotonic() - started, 2),
        "queued_to_end_s": round(
            (parse_time(run["end_date"]) - parse_time(run["queued_at"])).total_seconds(), 2
        ),
    }


def timed_backfill(api: AirflowApi, dag_id: str, intervals: int, max_active_runs: int) -> dict:
    last = FIRST_LOGICAL_DATE + timedelta(days=intervals - 1)
    body = {
        "dag_id": dag_id,
        "from_date": FIRST_LOGICAL_DATE.isoformat(),
        "to_date": last.isoformat(),
        "reprocess_behavior": "none",
        "max_active_runs": max_active_runs,
    }
    planned = api.backfill_dry_run(body)["backfills"]
    if len(planned) != intervals:
        raise RuntimeError(f"{dag_id}: the dry run plans {len(planned)} runs, expected {intervals}")
    started = time.monotonic()
    backfill = api.create_backfill(body)

    def all_succeeded() -> list[dict] | None:
        runs = [
            r
            for r in api.dag_runs(dag_id, run_type="backfill")
            if FIRST_LOGICAL_DATE <= parse_time(r["logical_date"]) <= last
        ]
        if any(r["state"] == "failed" for r in runs):
            raise RuntimeError(f"{dag_id}: a backfill run failed: {[r['dag_run_id'] for r in runs]}")
        return runs if len(runs) == intervals and all(r["state"] == "success" for r in runs) else None

    runs = wait_for(all_succeeded, timeout=1800, interval=0.5, what=f"{dag_id}'s backfill")
    polled = time.monotonic() - started
    span = max(parse_time(r["end_date"]) for r in runs) - parse_time(backfill["created_at"])
    return {
        "runs": len(runs),
        "tasks": len(runs) * len(shape(api, dag_id)),
        "post_to_all_success_s": round(polled, 1),
        "created_to_last_end_s": round(span.total_seconds(), 1),
    }


def check_orders(warehouse_conninfo: str, intervals: int) -> int:
    start, end = FIRST_LOGICAL_DATE, FIRST_LOGICAL_DATE + timedelta(days=intervals)
    volumes = Volumes(orders=DEFAULT_PER_DAY["orders"], customers=DEFAULT_PER_DAY["customers"])
    expected = select("orders", start, end, volumes)
    expected_ids = sorted(r["order_id"] for r in expected.records(0, expected.total))
    with psycopg.connect(warehouse_conninfo) as conn:
        rows = conn.execute(
            "SELECT order_id FROM sales.orders WHERE updated_at >= %s AND updated_at < %s ORDER BY 1",
            (start, end),
        ).fetchall()
    if [r[0] for r in rows] != expected_ids:
        raise RuntimeError(f"sales.orders holds {len(rows)} orders of the range, expected {expected.total}")
    return expected.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=30)
    parser.add_argument("--max-active-runs", type=int, default=10)
    args = parser.parse_args()

    server, _ = PgServer.from_url(os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    suffix = uuid.uuid4().hex[:8]
    metadata_db, warehouse_db = f"bench_bf_meta_{suffix}", f"bench_bf_wh_{suffix}"
    ensure_database(server, metadata_db)
    ensure_database(server, warehouse_db)
    migrate_conninfo(server.conninfo(warehouse_db), label=warehouse_db)
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(REPO_ROOT / "dags" / "sales" / f"{SYNC}.py", dags)
    shutil.copy(REPO_ROOT / "bench" / "dags" / f"{NOOP}.py", dags)
    stack: AirflowStack | None = None
    try:
        with running_upstream() as upstream:
            stack = AirflowStack(
                airflow_home=tmp / "home",
                sql_alchemy_conn=server.sqlalchemy_url(metadata_db),
                dags_folder=dags,
                api_port=free_port(),
                extra_env={
                    "AIRFLOW_CONN_DEMO_API": upstream.connection_json(),
                    "AIRFLOW_CONN_WAREHOUSE": server.airflow_connection_json(warehouse_db),
                    "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps(
                        {"conn_type": "http", "host": f"{upstream.url}/alerts"}
                    ),
                },
            )
            stack.prepare(settings_file=None)
            stack.start()
            stack.wait_healthy()
            api = AirflowApi(stack.api_url, ADMIN_USER, stack.admin_password())
            for name, slots in POOLS.items():
                api.request("POST", "/pools", json={"name": name, "slots": slots})
            for dag_id in (SYNC, NOOP):
                api.wait_for_dag(dag_id)
            if shape(api, SYNC) != shape(api, NOOP):
                raise RuntimeError(f"shapes differ:\n{shape(api, SYNC)}\n{shape(api, NOOP)}")
            for dag_id in (SYNC, NOOP):
                api.set_paused(dag_id, False)
                settle(api, dag_id)

            latency = {dag_id: trigger_latency(api, dag_id) for dag_id in (NOOP, SYNC)}
            noop = timed_backfill(api, NOOP, args.intervals, args.max_active_runs)
            sync = timed_backfill(api, SYNC, args.intervals, args.max_active_runs)
            orders = check_orders(server.conninfo(warehouse_db), args.intervals)
    except Exception:
        if stack is not None:
            print(stack.log_tails(), file=sys.stderr)
        raise
    finally:
        if stack is not None:
            stack.stop()
        drop_database(server, metadata_db)
        drop_database(server, warehouse_db)
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = sync["post_to_all_success_s"] / noop["post_to_all_success_s"]
    write_result(
        "backfill_vs_noop",
        {
            "command": f"python -m bench.backfill_vs_noop --intervals {args.intervals} "
            f"--max-active-runs {args.max_active_runs}",
            "parallelism": int(os.environ.get("AIRFLOW__CORE__PARALLELISM", "8")),
            "pools": POOLS,
            "orders_loaded": orders,
            "trigger_latency": latency,
            "backfill_noop": noop,
            "backfill_sync": sync,
            "sync_over_noop": round(ratio, 2),
            "goal_sync_over_noop_max": GOAL_RATIO,
            "goal_met": ratio <= GOAL_RATIO,
        },
    )


if __name__ == "__main__":
    main()
