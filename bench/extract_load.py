"""Records/s and peak memory of the library's extract + load path against a bare script, end to end.

    .venv/bin/python -m bench.extract_load [--records 100000 1000000] [--repeats 5] [--page-size 10000]

One run starts the demo upstream (tools.demo_upstream, its own process) and a throwaway database on
the server in $BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres), and loads the
orders of one UTC day into sales.orders, the day holding exactly N records (`?per_day=N`; checked
with tools.demo_upstream.select), read from /v1/cursor/orders in pages of --page-size:

  library  batchkit.sync stage_interval + merge_interval with fetch_pages = RestApiHook.iter_pages, wired as
           StageIntervalOperator wires them (RestApiHook on the env-var connection AIRFLOW_CONN_DEMO_API,
           WarehouseHook's autocommit connection), without Airflow's task context: contract
           validation, quarantine, a checkpoint per page, binary COPY into staging, upsert merge;
  bare     requests.Session + response.json() + text COPY straight into sales.orders, one transaction
           (no validation, no checkpoints).

Every measurement runs in a FRESH interpreter (this module with --worker), so the peak RSS
(getrusage ru_maxrss after the run) of one size compares with the other's. The clock runs from the
first request to the last commit, after imports and the warehouse connection; the worker's own CPU
time is recorded beside it (on a shared machine it shows the client's cost when wall time is noisy).
Before each, the target is emptied and CHECKPOINTed and the interval's batch_meta rows are deleted,
so every run inserts N rows into an empty table. A warm-up pass requests every page once first: the upstream caches rendered pages, so both paths then
measure the client, not the demo server's JSON generation competing for the same cores. Sizes and
paths alternate within each repeat; the medians are reported with the spread.

Targets (the issue "Shared library in plugins/"): library >= 50k records/s at every size, library >=
0.5x bare, library peak RSS(largest) / RSS(smallest) < 1.25.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests
from psycopg import sql

from tools import REPO_ROOT

# Airflow reads its environment when first imported (bench/__init__.py put plugins/ on sys.path).
os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / "bench-extract-load-airflow"))

from bench.common import write_result
from include.contracts.orders import CONTRACT, TARGET
from tests.upstream import Upstream, running_upstream
from tools.demo_upstream import Volumes, select
from tools.metadb import PgServer, drop_database, ensure_database
from tools.migrate import migrate_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ENDPOINT = "/v1/cursor/orders"
DAY = datetime(2024, 5, 1, tzinfo=UTC)
API_CONN_ID = "demo_api"
WAREHOUSE_CONN_ID = "bench_warehouse"
DAG_ID, SYNC_KEY = "bench_extract_load", "extract_stage"
PATHS = ("library", "bare")
TARGETS = {"library_records_per_s": 50_000, "library_to_bare": 0.5, "rss_largest_to_smallest": 1.25}


def interval_query(records: int) -> dict[str, str | int]:
    """The query selecting one day that holds exactly `records` orders."""
    start, end = DAY, DAY + timedelta(days=1)
    selected = select("orders", start, end, Volumes(orders=records, customers=200)).total
    if selected != records:
        raise ValueError(f"per_day={records} over {start:%Y-%m-%d} selects {selected} records, not {records}")
    return {"per_day": records, "updated_since": start.isoformat(), "updated_before": end.isoformat()}


def rss_kib() -> int:
    """Current resident set size (VmRSS) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- workers (one per fresh interpreter) ---------------------------------------------------------


def run_library(records: int, page_size: int) -> tuple[float, int]:
    from batchkit.checkpoints import RunIdentity
    from batchkit.extract.pagination import CursorPagination
    from batchkit.hooks.rest_api import RestApiHook
    from batchkit.hooks.warehouse import WarehouseHook
    from batchkit.intervals import DataInterval
    from batchkit.sync import merge_interval, stage_interval

    query = interval_query(records)
    pagination = CursorPagination(
        cursor_param="cursor", cursor_field="next_cursor", size_param="limit", page_size=page_size
    )
    identity = RunIdentity(
        DAG_ID, SYNC_KEY, f"bench__{uuid.uuid4().hex}", DataInterval(DAY, DAY + timedelta(days=1))
    )
    with (
        RestApiHook(http_conn_id=API_CONN_ID) as api,
        WarehouseHook(postgres_conn_id=WAREHOUSE_CONN_ID).autocommit_connection() as conn,
    ):
        started = time.perf_counter()
        stage_interval(
            conn,
            target=TARGET,
            contract=CONTRACT,
            identity=identity,
            fetch_pages=lambda state, _done: api.iter_pages(
                ENDPOINT, pagination=pagination, params=query, resume_from=state
            ),
        )
        result = merge_interval(conn, target=TARGET, identity=identity)
        seconds = time.perf_counter() - started
    if (result.received, result.inserted, result.quarantined) != (records, records, 0):
        raise RuntimeError(f"library run did not insert {records} records: {result}")
    return seconds, result.inserted


def run_bare(records: int, page_size: int) -> tuple[float, int]:
    api = json.loads(os.environ[f"AIRFLOW_CONN_{API_CONN_ID.upper()}"])
    url = f"http://{api['host']}:{api['port']}{ENDPOINT}"
    params = {**interval_query(records), "limit": page_size}
    copy_orders = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(*TARGET.table.split(".")), sql.SQL(", ").join(map(sql.Identifier, TARGET.columns))
    )
    columns = TARGET.columns
    loaded = 0
    with (
        requests.Session() as session,
        psycopg.connect(os.environ["BENCH_WAREHOUSE_CONNINFO"], autocommit=True) as conn,
    ):
        session.headers["Authorization"] = f"Bearer {api['password']}"
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            while True:
                response = session.get(url, params=params, timeout=60)
                response.raise_for_status()
                body = response.json()
                with cur.copy(copy_orders) as copy:
                    for record in body["data"]:
                        copy.write_row([record[column] for column in columns])
                loaded += len(body["data"])
                if not body["next_cursor"]:
                    break
                params["cursor"] = body["next_cursor"]
        seconds = time.perf_counter() - started
    if loaded != records:
        raise RuntimeError(f"bare run loaded {loaded} records, not {records}")
    return seconds, loaded


def worker(path: str, records: int, page_size: int) -> None:
    # Both paths start from the same interpreter (Airflow imported), so their RSS figures compare.
    for module in ("batchkit.hooks.rest_api", "batchkit.hooks.warehouse", "batchkit.sync"):
        importlib.import_module(module)

    before = rss_kib()
    cpu_before = time.process_time()
    seconds, loaded = (run_library if path == "library" else run_bare)(records, page_size)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": time.process_time() - cpu_before,
                "records": loaded,
                "rss_before_run_kib": before,
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


# --- orchestration -------------------------------------------------------------------------------


def measure(path: str, records: int, page_size: int, env: dict[str, str]) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.extract_load", "--worker", path, "--records", str(records)]
        + ["--page-size", str(page_size)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{path} worker for {records} records failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def reset_warehouse(conninfo: str, dag_id: str = DAG_ID) -> None:
    """Empty target, no checkpoint or quarantine of `dag_id`, dirty pages flushed."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('sales.orders') IS NOT NULL").fetchone()[0]
        if exists:
            conn.execute("TRUNCATE sales.orders")
        for table in ("batch_meta.checkpoints", "batch_meta.quarantine"):
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE dag_id = %s").format(sql.Identifier(*table.split("."))),
                    (dag_id,),
                )
        conn.execute("CHECKPOINT")


def warm_up(upstream: Upstream, records: int, page_size: int) -> int:
    """Request every page once, so the upstream serves them from its cache afterwards; returns the pages."""
    params = {**interval_query(records), "limit": page_size}
    pages = 0
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {upstream.token}"
        while True:
            body = session.get(f"{upstream.url}{ENDPOINT}", params=params, timeout=60).json()
            pages += 1
            if not body["next_cursor"]:
                return pages
            params["cursor"] = body["next_cursor"]


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values)), "min": round(min(values)), "max": round(max(values))}


def paired_ratios(runs: list[dict], records: int) -> list[float]:
    """library / bare records/s of each repeat: the two ran back to back, under the same load."""
    seconds = {(run["repeat"], run["path"]): run["seconds"] for run in runs if run["records"] == records}
    repeats = sorted({repeat for repeat, _ in seconds})
    return [seconds[repeat, "bare"] / seconds[repeat, "library"] for repeat in repeats]


def summarise(runs: list[dict], sizes: list[int]) -> dict:
    figures: dict = {}
    for path in PATHS:
        for records in sizes:
            mine = [run for run in runs if run["path"] == path and run["records"] == records]
            figures[f"{path}_{records}"] = {
                "records_per_s": spread([records / run["seconds"] for run in mine]),
                "seconds": [round(run["seconds"], 3) for run in mine],
                "client_cpu_seconds": [round(run["cpu_seconds"], 3) for run in mine],
                "peak_rss_mib": spread([run["peak_rss_kib"] / 1024 for run in mine]),
                "rss_before_run_mib": spread([run["rss_before_run_kib"] / 1024 for run in mine]),
                "peak_rss_growth_during_run_mib": spread(
                    [(run["peak_rss_kib"] - run["rss_before_run_kib"]) / 1024 for run in mine]
                ),
            }
    smallest, largest = min(sizes), max(sizes)

    def median_rate(path: str, records: int) -> float:
        return statistics.median(
            records / run["seconds"] for run in runs if run["path"] == path and run["records"] == records
        )

    def median_rss(records: int) -> float:
        return statistics.median(
            run["peak_rss_kib"] for run in runs if run["path"] == "library" and run["records"] == records
        )

    ratios = {records: median_rate("library", records) / median_rate("bare", records) for records in sizes}
    rss_ratio = median_rss(largest) / median_rss(smallest)
    slowest = min(median_rate("library", records) for records in sizes)
    figures["library_to_bare"] = {str(records): round(ratio, 3) for records, ratio in ratios.items()}
    figures["library_to_bare_per_repeat"] = {
        str(records): [round(paired, 3) for paired in paired_ratios(runs, records)] for records in sizes
    }
    figures[f"library_rss_{largest}_to_{smallest}"] = round(rss_ratio, 3)
    figures["targets"] = TARGETS
    figures["targets_met"] = {
        "library_records_per_s": slowest >= TARGETS["library_records_per_s"],
        "library_to_bare": min(ratios.values()) >= TARGETS["library_to_bare"],
        "rss_largest_to_smallest": rss_ratio < TARGETS["rss_largest_to_smallest"],
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--page-size", type=int, default=10_000)
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.records[0], args.page_size)
        return

    server, _ = PgServer.from_url(os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    database = f"bench_extract_load_{os.getpid()}"
    ensure_database(server, database)
    migrate_conninfo(server.conninfo(database), label=database)
    runs: list[dict] = []
    try:
        with running_upstream() as upstream:
            env = {
                **os.environ,
                f"AIRFLOW_CONN_{API_CONN_ID.upper()}": upstream.connection_json(),
                f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}": server.airflow_connection_json(database),
                "BENCH_WAREHOUSE_CONNINFO": server.conninfo(database),
            }
            pages = {records: warm_up(upstream, records, args.page_size) for records in args.records}
            for repeat in range(args.repeats):
                for records in args.records:
                    for path in PATHS if repeat % 2 == 0 else PATHS[::-1]:
                        reset_warehouse(server.conninfo(database))
                        run = {
                            "path": path,
                            "records": records,
                            "repeat": repeat,
                            **measure(path, records, args.page_size, env),
                        }
                        runs.append(run)
                        print(
                            f"repeat {repeat + 1}: {path:7} {records:>8} records {run['seconds']:7.2f} s "
                            f"{records / run['seconds']:>8.0f}/s peak RSS {run['peak_rss_kib'] / 1024:.0f} MiB",
                            file=sys.stderr,
                        )
    finally:
        drop_database(server, database)

    write_result(
        "extract_load",
        {
            "command": "python -m bench.extract_load " + " ".join(sys.argv[1:]),
            "source": f"demo upstream {ENDPOINT}, cursor pages of {args.page_size}, pages served warm",
            "pages": {str(records): count for records, count in pages.items()},
            "target": f"{TARGET.table} (empty before each run)",
            "repeats": args.repeats,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            **summarise(runs, args.records),
        },
    )


if __name__ == "__main__":
    main()
