"""Celery scale-out: one backfill of a sync on 1 and 2 Celery workers and on the LocalExecutor.

    .venv/bin/python -m bench.celery_scaleout [--intervals 20] [--pages 25] [--delay 0.2]
                                              [--concurrency 2] [--rounds 1] [--idle-seconds 10]

The repo's `sales_orders_sync` (cursor pages of 1,000 orders) backfills `--intervals` daily intervals
through the REST API, against the demo upstream on loopback whose every data request is answered after
`--delay` seconds (its `slow` fault) and whose day holds `--pages` x 1,000 orders, so each interval's
extract waits ~pages x delay on the source. Three configurations, each on a fresh stack (own AIRFLOW_HOME,
a freshly migrated metadata database, a fresh warehouse database, and for Celery a fresh result-backend
database and its own EmbeddedRedis broker on a free port; the Redis on 6379 is never touched):

  celery_1w   CeleryExecutor, 1 worker of concurrency c
  celery_2w   CeleryExecutor, 2 workers of concurrency c each
  local       LocalExecutor with [core] parallelism c (its c worker processes run the same work)

With --rounds N the order alternates (a b c, then c b a, ...); --reverse starts with c b a. Nothing
else caps the parallelism below what the executor offers, and the script prints the settings: pools
`demo_api` and `warehouse` get 2c slots (what 2 workers offer), [core] parallelism is 32 under Celery, [core] max_active_tasks_per_dag 32,
the backfill's max_active_runs = --intervals (backfill runs are capped by the backfill's max_active_runs,
not the DAG's: airflow/jobs/scheduler_job_runner.py), every worker listens to every queue.

Wall time: the backfill's created_at -> the last run's end_date (server clocks), and POST -> every run
read `success` (polled every 0.5 s). Every configuration's sales.orders is checked to hold every order
of the range. Memory: PSS of one idle Celery worker (its main process and its pool children, summed),
after `--idle-seconds` of idleness, in celery_1w, both after the DAG's first run (before the backfill)
and after the backfill. Load average (os.getloadavg) is recorded before and after each configuration.

The stacks run the code of the checked-out commit, not the working tree: `git archive HEAD` of plugins/,
include/, config/ and the DAG file into the run's temporary directory (AIRFLOW__CORE__PLUGINS_FOLDER,
BATCHKIT_INCLUDE_DIR and PYTHONPATH point there), so edits in progress in the checkout cannot change or
break the DAG between configurations (the dag-processor re-parses it every 30 s). The commit is recorded.

Goals (issue 10): celery_2w / celery_1w <= 0.6; celery_1w / local <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psutil
import psycopg

from bench.backfill_vs_noop import FIRST_LOGICAL_DATE, free_port, parse_time, settle, timed_backfill
from bench.common import machine, write_result
from tests.upstream import Upstream, running_upstream
from tools import REPO_ROOT
from tools.airflow_api import AirflowApi
from tools.airflow_env import ADMIN_USER
from tools.broker import EmbeddedRedis
from tools.demo_upstream import DEFAULT_PER_DAY, Volumes, select
from tools.metadb import PgServer, drop_database, ensure_database
from tools.migrate import migrate_conninfo
from tools.stack import AirflowStack, CeleryCluster, parse_worker_queues

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYNC = "sales_orders_sync"
DAG_FILE = f"dags/sales/{SYNC}.py"
PAGE_SIZE = 1000  # include/automations/sales_orders_sync.yaml's cursor page size
CELERY_PARALLELISM = 32
MAX_ACTIVE_TASKS_PER_DAG = 32
GOAL_TWO_OVER_ONE = 0.6
GOAL_CELERY_OVER_LOCAL = 1.2


@dataclass(frozen=True)
class Config:
    name: str
    executor: str  # "celery" or "local"
    workers: int  # Celery workers (0 for local)
    concurrency: int  # per Celery worker; LocalExecutor: [core] parallelism

    def describe(self) -> str:
        if self.executor == "local":
            return f"LocalExecutor, parallelism {self.concurrency}"
        return f"CeleryExecutor, {self.workers} worker(s) x concurrency {self.concurrency}"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def worker_pss(stack: AirflowStack, name: str) -> dict:
    """PSS of a Celery worker: its main process and every child (the prefork pool), summed."""
    proc = stack.process(name)
    assert proc.popen is not None
    root = psutil.Process(proc.popen.pid)
    processes = {}
    for member in (root, *root.children(recursive=True)):
        try:
            processes[str(member.pid)] = {
                "title": " ".join(member.cmdline())[:60],
                "pss_mib": round(member.memory_full_info().pss / 2**20, 1),
            }
        except psutil.NoSuchProcess:
            continue
    return {"pss_mib": round(sum(p["pss_mib"] for p in processes.values()), 1), "processes": processes}


def task_breakdown(api: AirflowApi) -> dict:
    """Per task id over the backfill's runs: median run time (start -> end), median wait (queued -> start),
    and the sum of run times (slot-seconds the executor spent on it)."""
    tis = [
        ti
        for ti in api.get_all(f"/dags/{SYNC}/dagRuns/~/taskInstances", "task_instances")
        if ti["dag_run_id"].startswith("backfill__")
    ]
    by_task: dict[str, list[dict]] = {}
    for ti in tis:
        by_task.setdefault(ti["task_id"], []).append(ti)
    breakdown = {}
    for task_id, items in sorted(by_task.items()):
        runs = [(parse_time(t["end_date"]) - parse_time(t["start_date"])).total_seconds() for t in items]
        waits = [
            (parse_time(t["start_date"]) - parse_time(t["queued_when"])).total_seconds()
            for t in items
            if t.get("queued_when")
        ]
        breakdown[task_id] = {
            "count": len(items),
            "median_run_s": round(statistics.median(runs), 2),
            "sum_run_s": round(sum(runs), 1),
            "median_queued_to_start_s": round(statistics.median(waits), 2) if waits else None,
        }
    return breakdown


def check_orders(conninfo: str, intervals: int, orders_per_day: int) -> int:
    start, end = FIRST_LOGICAL_DATE, FIRST_LOGICAL_DATE + timedelta(days=intervals)
    expected = select(
        "orders", start, end, Volumes(orders=orders_per_day, customers=DEFAULT_PER_DAY["customers"])
    )
    with psycopg.connect(conninfo) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT order_id) FROM sales.orders WHERE updated_at >= %s AND updated_at < %s",
            (start, end),
        ).fetchone()
    if rows != expected.total or distinct != expected.total:
        raise RuntimeError(
            f"sales.orders holds {rows} ({distinct} distinct) orders, expected {expected.total}"
        )
    return expected.total


def snapshot(dest: Path) -> str:
    """plugins/, include/, config/ and the DAG file of HEAD into `dest`; returns the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", commit, "plugins", "include", "config", DAG_FILE],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


def snapshot_env(code: Path) -> dict[str, str]:
    return {
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(code / "plugins"),
        "BATCHKIT_INCLUDE_DIR": str(code / "include"),
        "PYTHONPATH": os.pathsep.join(str(code / sub) for sub in ("plugins", "config", ".")),
    }


def run_config(
    config: Config,
    *,
    server: PgServer,
    upstream: Upstream,
    code: Path,
    tmp: Path,
    args: argparse.Namespace,
) -> dict:
    suffix = uuid.uuid4().hex[:8]
    meta_db, wh_db, results_db = (f"bench_cs_{kind}_{suffix}" for kind in ("meta", "wh", "res"))
    home = tmp / f"{config.name}-{suffix}"
    pool_slots = 2 * args.concurrency
    parallelism = CELERY_PARALLELISM if config.executor == "celery" else config.concurrency
    settings = {
        "executor": config.describe(),
        "core_parallelism": parallelism,
        "core_max_active_tasks_per_dag": MAX_ACTIVE_TASKS_PER_DAG,
        "backfill_max_active_runs": args.intervals,
        "pools": {"demo_api": pool_slots, "warehouse": pool_slots},
        "celery_worker_concurrency": config.concurrency if config.executor == "celery" else None,
        "celery_workers": config.workers,
    }
    celery = None
    databases = [meta_db, wh_db]
    if config.executor == "celery":
        databases.append(results_db)
        broker = EmbeddedRedis(home / "redis", secrets.token_urlsafe(16), free_port())
        celery = CeleryCluster(
            broker_url=broker.url,
            result_backend="db+" + server.sqlalchemy_url(results_db),
            workers=parse_worker_queues(config.workers, None),
            concurrency=config.concurrency,
            embedded_broker=broker,
        )
    for database in databases:
        ensure_database(server, database)
    migrate_conninfo(server.conninfo(wh_db), label=wh_db)
    print(f"\n=== {config.name}: {config.describe()}  (load {load()})", flush=True)
    print("    settings: " + json.dumps(settings), flush=True)
    stack = AirflowStack(
        airflow_home=home / "airflow",
        sql_alchemy_conn=server.sqlalchemy_url(meta_db),
        dags_folder=code / "dags" / "sales",
        api_port=free_port(),
        celery=celery,
        extra_env={
            **snapshot_env(code),
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(MAX_ACTIVE_TASKS_PER_DAG),
            "AIRFLOW_CONN_DEMO_API": upstream.connection_json(),
            "AIRFLOW_CONN_WAREHOUSE": server.airflow_connection_json(wh_db),
            "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps(
                {"conn_type": "http", "host": f"{upstream.url}/alerts"}
            ),
        },
    )
    result: dict = {"config": config.name, "settings": settings, "load_before": load()}
    try:
        t0 = time.monotonic()
        stack.prepare(settings_file=None)
        stack.start()
        stack.wait_healthy()
        result["start_to_healthy_s"] = round(time.monotonic() - t0, 1)
        api = AirflowApi(stack.api_url, ADMIN_USER, stack.admin_password())
        for name, slots in settings["pools"].items():
            api.request("POST", "/pools", json={"name": name, "slots": slots})
        api.wait_for_dag(SYNC)
        api.set_paused(SYNC, False)
        settle(api, SYNC)  # the first scheduled run (latest interval, outside the range) warms every path
        if config.executor == "celery":
            time.sleep(args.idle_seconds)
            result["idle_worker_after_first_run"] = worker_pss(stack, "worker1")
        upstream.reset()
        upstream.set_faults({"kind": "slow", "delay": args.delay, "times": None})
        result["load_at_backfill_start"] = load()
        result["backfill"] = timed_backfill(api, SYNC, args.intervals, args.intervals)
        result["load_at_backfill_end"] = load()
        result["upstream_requests"] = upstream.stats()["paths"]
        result["tasks"] = task_breakdown(api)
        upstream.reset()
        result["orders_checked"] = check_orders(
            server.conninfo(wh_db), args.intervals, args.pages * PAGE_SIZE
        )
        if config.executor == "celery":
            time.sleep(args.idle_seconds)
            result["idle_worker_after_backfill"] = worker_pss(stack, "worker1")
    except Exception:
        print(stack.log_tails(), file=sys.stderr)
        raise
    finally:
        stack.stop()
        for database in databases:
            drop_database(server, database)
        shutil.rmtree(home, ignore_errors=True)
    backfill = result["backfill"]
    print(
        f"    backfill: {backfill['created_to_last_end_s']} s (created -> last end), "
        f"{backfill['post_to_all_success_s']} s (POST -> all success polled); load {result['load_at_backfill_end']}",
        flush=True,
    )
    for task_id, figures in result["tasks"].items():
        print(f"      {task_id:<26} {json.dumps(figures)}", flush=True)
    return result


def table(rows: list[dict]) -> str:
    lines = [
        f"{'round':>5}  {'config':<10} {'executor':<45} {'wall s':>7} {'polled s':>8}  load 1/5/15 at end",
    ]
    for row in rows:
        backfill = row["backfill"]
        lines.append(
            f"{row['round']:>5}  {row['config']:<10} {row['settings']['executor']:<45} "
            f"{backfill['created_to_last_end_s']:>7} {backfill['post_to_all_success_s']:>8}  {row['load_at_backfill_end']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=20)
    parser.add_argument("--pages", type=int, default=25, help="pages of 1,000 orders per day")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the upstream waits per request")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="c: per Celery worker; LocalExecutor parallelism"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--reverse", action="store_true", help="start with the order c b a (alternate across runs)"
    )
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--output", type=Path, help="also write the JSON record here")
    args = parser.parse_args()

    c = args.concurrency
    configs = [
        Config("celery_1w", "celery", 1, c),
        Config("celery_2w", "celery", 2, c),
        Config("local", "local", 0, c),
    ]
    server, _ = PgServer.from_url(os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    # SIGTERM (or SIGINT, which a background shell ignores) ends the run through the `finally`s below.
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    commit = snapshot(tmp / "code")
    rows: list[dict] = []
    load_start = load()
    try:
        with running_upstream("--orders-per-day", str(args.pages * PAGE_SIZE)) as upstream:
            for round_index in range(args.rounds):
                order = configs if (round_index + args.reverse) % 2 == 0 else configs[::-1]
                for config in order:
                    row = run_config(
                        config, server=server, upstream=upstream, code=tmp / "code", tmp=tmp, args=args
                    )
                    rows.append({"round": round_index + 1, **row})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def walls(name: str) -> list[float]:
        return [r["backfill"]["created_to_last_end_s"] for r in rows if r["config"] == name]

    per_round = [
        {
            "round": i + 1,
            "two_over_one": round(walls("celery_2w")[i] / walls("celery_1w")[i], 3),
            "celery_over_local": round(walls("celery_1w")[i] / walls("local")[i], 3),
        }
        for i in range(args.rounds)
    ]
    median = sorted(per_round, key=lambda r: r["two_over_one"])[args.rounds // 2]["two_over_one"]
    median_overhead = sorted(r["celery_over_local"] for r in per_round)[args.rounds // 2]
    idle = [r["idle_worker_after_backfill"]["pss_mib"] for r in rows if r["config"] == "celery_1w"]
    idle_first = [r["idle_worker_after_first_run"]["pss_mib"] for r in rows if r["config"] == "celery_1w"]
    print("\n" + table(rows))
    print(
        f"\nb/a (2 workers / 1 worker): {median} (goal <= {GOAL_TWO_OVER_ONE}: "
        f"{'met' if median <= GOAL_TWO_OVER_ONE else 'missed'})"
        f"\na/c (Celery 1 worker / LocalExecutor): {median_overhead} (goal <= {GOAL_CELERY_OVER_LOCAL}: "
        f"{'met' if median_overhead <= GOAL_CELERY_OVER_LOCAL else 'missed'})"
        f"\nidle worker PSS (concurrency {c}, main + pool children): {idle} MiB after the backfill, "
        f"{idle_first} MiB after the first run\nload average: start {load_start}, end {load()}\n",
        flush=True,
    )
    command = (
        f"python -m bench.celery_scaleout --intervals {args.intervals} --pages {args.pages} --delay {args.delay} "
        f"--concurrency {c} --rounds {args.rounds} --idle-seconds {args.idle_seconds:g}"
        + (" --reverse" if args.reverse else "")
    )
    record = {
        "command": command,
        "commit": commit,
        "workload": {
            "dag": SYNC,
            "intervals": args.intervals,
            "task_instances": sum(t["count"] for t in rows[0]["tasks"].values()),
            "orders_per_interval": args.pages * PAGE_SIZE,
            "page_size": PAGE_SIZE,
            "upstream_delay_s": args.delay,
            "extract_wait_per_interval_s": round(args.pages * args.delay, 2),
        },
        "concurrency_c": c,
        "load_average_start": load_start,
        "load_average_end": load(),
        "runs": rows,
        "per_round": per_round,
        "two_over_one": median,
        "celery_over_local": median_overhead,
        "goal_two_over_one_max": GOAL_TWO_OVER_ONE,
        "goal_celery_over_local_max": GOAL_CELERY_OVER_LOCAL,
        "idle_worker_pss_mib_after_backfill": idle,
        "idle_worker_pss_mib_after_first_run": idle_first,
    }
    path = write_result("celery_scaleout", record)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"machine": machine(), **record}, indent=2) + "\n")
    print(f"written: {path}")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
