"""Peer benchmark: this library against dlt's rest_api source, same orders, same Postgres, merge on the key.

    .venv/bin/python -m bench.peer_dlt [--records 100000 1000000] [--repeats 3] [--page-size 10000]
                                       [--slow-records 100000] [--slow-repeats 2] [--delay 0.1]

dlt is not a project dependency: it lives in its own throwaway venv (`$DLT_VENV`, default /tmp/dlt-venv),
which this script creates when it is missing (`python3 -m venv` + `pip install 'dlt[postgres]'`).

Loopback part: the demo upstream (its own process) serves one UTC day holding exactly N orders as cursor
pages of --page-size (`/v1/cursor/orders`, pages served warm); each side loads them into Postgres (a
throwaway database on $BENCH_PG_URL) with merge on order_id, into an empty table:

  library      RestApiHook.iter_pages -> batchkit.sync stage_interval + merge_interval (contract
               validation, a checkpoint per page, COPY into staging, upsert merge), in this process
  dlt_default  dlt.sources.rest_api (cursor paginator, primary_key order_id, write_disposition merge,
               column hints: order_ts/updated_at timestamp, amount decimal) -> dlt's postgres destination,
               default loader (insert_values), in a fresh dlt-venv interpreter
  dlt_csv      the same with loader_file_format="csv" (dlt's COPY loader)

The clock runs around the load alone (after imports and set-up): stage + merge for the library,
pipeline.run (extract + normalize + load) for dlt. Sides alternate within each repeat (order reversed
every other repeat), so their ratios share the machine's load.

Slow part: the same day of --slow-records orders answered after --delay seconds per request (the demo's
slow fault), pages of 1,000: the library with cursor pages (fetched one ahead) and with page_number pages
at max_concurrency 4, against dlt_default with the same cursor and page_number paginators (dlt requests
one page of a resource at a time).

Goal (issue "Fast where it matters in production"): library >= 5x dlt_default at 1M, ahead of both dlt
loaders at every size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DLT_VENV = Path(os.environ.get("DLT_VENV", "/tmp/dlt-venv"))
DLT_SCHEMA = "dlt_sales"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- the dlt side: runs inside the dlt venv, imports nothing of this repo ----------------------------


def dlt_worker(spec: dict) -> None:
    import dlt
    from dlt.sources.rest_api import rest_api_source

    if spec["style"] == "cursor":
        path = "v1/cursor/orders"
        paginator = {"type": "cursor", "cursor_path": "next_cursor", "cursor_param": "cursor"}
        params = {**spec["query"], "limit": spec["page_size"]}
    else:
        path = "v1/orders"
        paginator = {
            "type": "page_number",
            "page_param": "page",
            "base_page": 1,
            "total_path": "total_pages",
        }
        params = {**spec["query"], "page_size": spec["page_size"]}
    source = rest_api_source(
        {
            "client": {
                "base_url": spec["base_url"],
                "auth": {"type": "bearer", "token": spec["token"]},
            },
            "resources": [
                {
                    "name": "orders",
                    "primary_key": "order_id",
                    "write_disposition": "merge",
                    "columns": {
                        "order_ts": {"data_type": "timestamp"},
                        "updated_at": {"data_type": "timestamp"},
                        "amount": {"data_type": "decimal"},
                    },
                    "endpoint": {
                        "path": path,
                        "params": params,
                        "data_selector": "data",
                        "paginator": paginator,
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{spec['loader']}",
        pipelines_dir=spec["pipelines_dir"],
        destination=dlt.destinations.postgres(credentials=spec["dsn"]),
        dataset_name=DLT_SCHEMA,
        progress=None,
    )
    options = {} if spec["loader"] == "default" else {"loader_file_format": "csv"}
    started, cpu = time.perf_counter(), time.process_time()
    info = pipeline.run(source, **options)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    info.raise_on_failed_jobs()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}))


# --- orchestration: runs in the project's venv ---------------------------------------------------------


def ensure_dlt_venv() -> Path:
    python = DLT_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {DLT_VENV} with dlt[postgres] ...", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(DLT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "dlt[postgres]"], check=True)
    return python


def dlt_version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import dlt; print(dlt.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()


def run_dlt(python: Path, spec: dict) -> dict:
    completed = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--dlt-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd="/tmp",
    )
    if completed.returncode != 0:
        raise RuntimeError(f"dlt worker failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=10_000)
    parser.add_argument("--slow-records", type=int, default=100_000, help="0 skips the slow part")
    parser.add_argument("--slow-repeats", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--dlt-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dlt_worker:
        dlt_worker(json.loads(args.dlt_worker))
        return

    import tempfile

    import psycopg

    from bench import latency
    from bench.common import write_result
    from bench.extract_load import interval_query, reset_warehouse
    from tests.upstream import running_upstream
    from tools.metadb import PgServer, drop_database, ensure_database
    from tools.migrate import migrate_conninfo

    python = ensure_dlt_venv()
    version = dlt_version(python)
    server, _ = PgServer.from_url(os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    database = f"bench_peer_dlt_{os.getpid()}"
    ensure_database(server, database)
    migrate_conninfo(server.conninfo(database), label=database)
    conninfo = server.conninfo(database)
    dsn = _dsn(conninfo)
    pipelines_dir = tempfile.mkdtemp(prefix="bench-dlt-pipelines-")
    runs: list[dict] = []
    slow_runs: list[dict] = []

    def reset() -> None:
        reset_warehouse(conninfo, latency.DAG_ID)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if conn.execute(f"SELECT to_regclass('{DLT_SCHEMA}.orders') IS NOT NULL").fetchone()[0]:
                conn.execute(f"TRUNCATE {DLT_SCHEMA}.orders")

    try:
        with running_upstream() as upstream:
            os.environ[f"AIRFLOW_CONN_{latency.API_CONN_ID.upper()}"] = upstream.connection_json()
            os.environ[f"AIRFLOW_CONN_{latency.WAREHOUSE_CONN_ID.upper()}"] = server.airflow_connection_json(
                database
            )
            library_modes = latency.modes(args.page_size)

            def side(name: str, records: int, style: str, page_size: int, mode: tuple) -> dict:
                reset()
                if name == "library":
                    return latency.run_once(mode, records)
                figures = run_dlt(
                    python,
                    {
                        "loader": name.removeprefix("dlt_"),
                        "style": style,
                        "page_size": page_size,
                        "query": interval_query(records),
                        "base_url": upstream.url,
                        "token": upstream.token,
                        "dsn": dsn,
                        "pipelines_dir": pipelines_dir,
                    },
                )
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    loaded = conn.execute("SELECT count(DISTINCT order_id) FROM dlt_sales.orders").fetchone()[
                        0
                    ]
                if loaded != records:
                    raise RuntimeError(f"dlt ({name}) left {loaded} orders, not {records}")
                return figures

            sides = ("library", "dlt_default", "dlt_csv")
            cursor = library_modes["cursor"]
            # Warm-up: the upstream's page cache at every size; dlt's tables and pipeline state once.
            for records in args.records:
                side("library", records, "cursor", args.page_size, cursor)
            for name in sides[1:]:
                side(name, min(args.records), "cursor", args.page_size, cursor)
            for repeat in range(args.repeats):
                for records in args.records:
                    for name in sides if repeat % 2 == 0 else sides[::-1]:
                        run = {"side": name, "records": records, "repeat": repeat}
                        run.update(side(name, records, "cursor", args.page_size, cursor))
                        runs.append(run)
                        _report(run, records)

            if args.slow_records:
                slow_modes = latency.modes(1_000)
                slow_sides = (
                    ("library_cursor", "cursor", slow_modes["cursor"]),
                    ("library_page_number_c4", "page_number", slow_modes["page_number_c4"]),
                    ("dlt_default_cursor", "cursor", None),
                    ("dlt_default_page_number", "page_number", None),
                )
                for _, style, mode in slow_sides:  # warm the page cache before the delay is on
                    if mode is not None:
                        side("library", args.slow_records, style, 1_000, mode)
                upstream.set_faults({"kind": "slow", "delay": args.delay, "times": None})
                for repeat in range(args.slow_repeats):
                    for label, style, mode in slow_sides if repeat % 2 == 0 else slow_sides[::-1]:
                        name = "library" if mode is not None else "dlt_default"
                        run = {"side": label, "records": args.slow_records, "repeat": repeat}
                        run.update(side(name, args.slow_records, style, 1_000, mode))
                        slow_runs.append(run)
                        _report(run, args.slow_records)
    finally:
        drop_database(server, database)

    write_result(
        "peer_dlt",
        {
            "command": "python -m bench.peer_dlt " + " ".join(sys.argv[1:]),
            "dlt_version": version,
            "source": f"demo upstream /v1/cursor/orders, cursor pages of {args.page_size}, served warm",
            "repeats": args.repeats,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "loopback": _summary(runs, ("library", "dlt_default", "dlt_csv"), "library"),
            "slow_source": {
                "delay_s": args.delay,
                "page_size": 1_000,
                "latency_limit_records_per_s": 1_000 / args.delay,
                **_summary(
                    slow_runs,
                    (
                        "library_cursor",
                        "library_page_number_c4",
                        "dlt_default_cursor",
                        "dlt_default_page_number",
                    ),
                    None,
                ),
            }
            if slow_runs
            else None,
        },
    )


def _report(run: dict, records: int) -> None:
    print(
        f"repeat {run['repeat'] + 1}: {run['side']:24} {records:>8} records {run['seconds']:7.2f} s "
        f"{records / run['seconds']:>8.0f}/s",
        file=sys.stderr,
    )


def _summary(runs: list[dict], sides: tuple[str, ...], reference: str | None) -> dict:
    figures: dict = {}
    for records in sorted({run["records"] for run in runs}):
        mine = {
            side: [run for run in runs if run["side"] == side and run["records"] == records] for side in sides
        }
        entry: dict = {}
        for side, side_runs in mine.items():
            rates = [records / run["seconds"] for run in side_runs]
            entry[side] = {
                "records_per_s_median": round(statistics.median(rates)),
                "seconds": [round(run["seconds"], 2) for run in side_runs],
                "client_cpu_seconds": [round(run["cpu_seconds"], 2) for run in side_runs],
            }
        if reference is not None:
            for side in sides:
                if side == reference:
                    continue
                paired = {run["repeat"]: run["seconds"] for run in mine[side]}
                ratios = [paired[run["repeat"]] / run["seconds"] for run in mine[reference]]
                entry[f"{reference}_to_{side}"] = {
                    "median": round(statistics.median(ratios), 2),
                    "per_repeat": [round(ratio, 2) for ratio in ratios],
                }
        figures[str(records)] = entry
    return figures


def _dsn(conninfo: str) -> str:
    """A postgresql:// URL from a libpq key=value conninfo (dlt takes URLs)."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(conninfo)
    # dlt insists on a password; a trust-auth server ignores the placeholder.
    auth = f"{parts.get('user', 'postgres')}:{parts.get('password') or 'unused'}"
    host = parts.get("host", "127.0.0.1")
    return f"postgresql://{auth}@{host}:{parts.get('port', 5432)}/{parts['dbname']}"


if __name__ == "__main__":
    main()
