"""Records/s of the sync against a latency-bound source: every page answered after a fixed delay.

    .venv/bin/python -m bench.latency [--records 50000] [--page-size 1000] [--delay 0.1] [--repeats 3]

The demo upstream (its own process) answers every data request after `--delay` seconds (its `slow`
fault, every request), in pages of `--page-size` records; one UTC day holds exactly `--records` orders.
Each run is the library path end to end, as StageIntervalOperator wires it: RestApiHook.iter_pages ->
batchkit.sync stage_interval + merge_interval (contract validation, a checkpoint per page, COPY into
staging, upsert merge) into sales.orders of a throwaway database on $BENCH_PG_URL. Two clocks: the stage phase (first request
to the last page's commit: what fetching ahead overlaps) and the whole sync (to the merge's commit; the
merge of N rows is the same work whatever the source's latency).

Modes, alternated within each repeat (so their ratios share the machine's load):

  cursor_sequential     cursor pages, prefetch off (what the hook did before this bench existed)
  cursor                cursor pages, the next page fetched while the current one is staged
  link_header           Link-header pages, same
  page_number_c4        page_number with total_pages_field, max_concurrency 4
  offset_c4             offset with total_field, max_concurrency 4
  fetch_only_sequential reference: the hook fetching the cursor pages one after another and dropping
                        them (no validation, staging or merge): the source's real per-request latency

The latency limit is page_size / delay records/s (one request at a time, zero client time). Goals (issue
"Fast where it matters in production"): cursor and link_header >= 0.9x the limit; page_number and offset
at concurrency 4 >= 0.8 x 4 x the limit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Airflow reads its environment when first imported (bench/__init__.py put plugins/ on sys.path).
os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / "bench-latency-airflow"))

from bench.common import write_result
from bench.extract_load import interval_query, reset_warehouse
from include.contracts.orders import CONTRACT, TARGET
from tests.upstream import running_upstream
from tools.metadb import PgServer, drop_database, ensure_database
from tools.migrate import migrate_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
API_CONN_ID, WAREHOUSE_CONN_ID = "demo_api", "bench_warehouse"
DAG_ID = "bench_latency"
DAY = datetime(2024, 5, 1, tzinfo=UTC)


def modes(page_size: int) -> dict[str, tuple[str, object, int, bool]]:
    """name: (endpoint, pagination, max_concurrency, prefetch)."""
    from batchkit.extract.pagination import (
        CursorPagination,
        LinkHeaderPagination,
        OffsetPagination,
        PageNumberPagination,
    )

    return {
        "cursor_sequential": (
            "/v1/cursor/orders",
            CursorPagination(size_param="limit", page_size=page_size),
            1,
            False,
        ),
        "cursor": ("/v1/cursor/orders", CursorPagination(size_param="limit", page_size=page_size), 1, True),
        "link_header": (
            "/v1/link/orders",
            LinkHeaderPagination(size_param="page_size", page_size=page_size),
            1,
            True,
        ),
        "page_number_c4": (
            "/v1/orders",
            PageNumberPagination(page_size=page_size, total_pages_field="total_pages"),
            4,
            True,
        ),
        "offset_c4": (
            "/v1/offset/orders",
            OffsetPagination(limit=page_size, total_field="total_records"),
            4,
            True,
        ),
        # Reference, not a sync: the hook's pages fetched one after the other and dropped (no validation,
        # no staging): the real per-request latency of this source, server overhead included.
        "fetch_only_sequential": (
            "/v1/cursor/orders",
            CursorPagination(size_param="limit", page_size=page_size),
            0,
            False,
        ),
    }


def run_once(mode: tuple[str, object, int, bool], records: int) -> dict:
    from batchkit.checkpoints import RunIdentity
    from batchkit.hooks.rest_api import RestApiHook
    from batchkit.hooks.warehouse import WarehouseHook
    from batchkit.intervals import DataInterval
    from batchkit.sync import merge_interval, stage_interval

    endpoint, pagination, concurrency, prefetch = mode
    query = interval_query(records)
    if concurrency == 0:  # fetch_only_sequential
        with RestApiHook(http_conn_id=API_CONN_ID) as api:
            started, cpu = time.perf_counter(), time.process_time()
            pages = received = 0
            for page in api.iter_pages(endpoint, pagination=pagination, params=query, prefetch=False):
                pages, received = pages + 1, received + len(page.records)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if received != records:
            raise RuntimeError(f"fetched {received} records, not {records}")
        return {"seconds": seconds, "stage_seconds": seconds, "cpu_seconds": cpu, "pages": pages}
    identity = RunIdentity(
        DAG_ID, "extract_stage", f"bench__{uuid.uuid4().hex}", DataInterval(DAY, DAY + timedelta(days=1))
    )
    with (
        RestApiHook(http_conn_id=API_CONN_ID) as api,
        WarehouseHook(postgres_conn_id=WAREHOUSE_CONN_ID).autocommit_connection() as conn,
    ):
        started, cpu = time.perf_counter(), time.process_time()
        staged = stage_interval(
            conn,
            target=TARGET,
            contract=CONTRACT,
            identity=identity,
            fetch_pages=lambda state, _done: api.iter_pages(
                endpoint,
                pagination=pagination,
                params=query,
                resume_from=state,
                max_concurrency=concurrency,
                prefetch=prefetch,
            ),
        )
        stage_seconds = time.perf_counter() - started
        result = merge_interval(conn, target=TARGET, identity=identity)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if (staged.received, result.inserted) != (records, records):
        raise RuntimeError(f"run did not insert {records} records: {result}")
    return {"seconds": seconds, "stage_seconds": stage_seconds, "cpu_seconds": cpu, "pages": result.pages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--page-size", type=int, default=1_000)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", help="a subset of the modes")
    parser.add_argument("--result", default="latency", help="name of the bench/results/<name>.json file")
    args = parser.parse_args()

    import logging

    import structlog

    # A log line per page would be most of the client's work here; the bench measures the fetch.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server, _ = PgServer.from_url(os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    database = f"bench_latency_{os.getpid()}"
    ensure_database(server, database)
    migrate_conninfo(server.conninfo(database), label=database)
    all_modes = modes(args.page_size)
    names = args.modes or list(all_modes)
    runs: list[dict] = []
    # --delay 0: no fault at all (loopback speed); the ratios to the limit are then meaningless.
    limit = args.page_size / args.delay if args.delay > 0 else float("inf")
    try:
        with running_upstream() as upstream:
            os.environ[f"AIRFLOW_CONN_{API_CONN_ID.upper()}"] = upstream.connection_json()
            os.environ[f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}"] = server.airflow_connection_json(database)
            conninfo = server.conninfo(database)
            # Warm the upstream's page cache (no delay yet), and the client's imports and contract.
            for name in names:
                reset_warehouse(conninfo, DAG_ID)
                run_once(all_modes[name], args.records)
            if args.delay > 0:
                upstream.set_faults({"kind": "slow", "delay": args.delay, "times": None})
            for repeat in range(args.repeats):
                order = names if repeat % 2 == 0 else names[::-1]
                for name in order:
                    reset_warehouse(conninfo, DAG_ID)
                    run = {"mode": name, "repeat": repeat, **run_once(all_modes[name], args.records)}
                    runs.append(run)
                    print(
                        f"repeat {repeat + 1}: {name:18} {run['seconds']:6.2f} s "
                        f"(stage {run['stage_seconds']:6.2f} s) "
                        f"{args.records / run['seconds']:>8.0f} rec/s (cpu {run['cpu_seconds']:.2f} s)",
                        file=sys.stderr,
                    )
    finally:
        drop_database(server, database)

    figures: dict = {}
    for name in names:
        mine = [run for run in runs if run["mode"] == name]
        rates = [args.records / run["seconds"] for run in mine]
        stage_rates = [args.records / run["stage_seconds"] for run in mine]
        concurrency = max(1, all_modes[name][2])
        figures[name] = {
            "max_concurrency": concurrency,
            "prefetch": all_modes[name][3],
            "stage_records_per_s": {
                "median": round(statistics.median(stage_rates)),
                "min": round(min(stage_rates)),
                "max": round(max(stage_rates)),
            },
            "stage_to_concurrency_x_limit": round(statistics.median(stage_rates) / (limit * concurrency), 3),
            "sync_records_per_s": {
                "median": round(statistics.median(rates)),
                "min": round(min(rates)),
                "max": round(max(rates)),
            },
            "sync_to_concurrency_x_limit": round(statistics.median(rates) / (limit * concurrency), 3),
            "seconds": [round(run["seconds"], 3) for run in mine],
            "stage_seconds": [round(run["stage_seconds"], 3) for run in mine],
            "client_cpu_seconds": [round(run["cpu_seconds"], 3) for run in mine],
            "pages": mine[0]["pages"],
        }
    if "fetch_only_sequential" in figures:
        # The same ratios against the source's measured one-at-a-time rate instead of page_size / delay.
        reference = figures["fetch_only_sequential"]["stage_records_per_s"]["median"]
        for name, entry in figures.items():
            if name != "fetch_only_sequential":
                per_request = reference * entry["max_concurrency"]
                entry["stage_to_concurrency_x_fetch_only"] = round(
                    entry["stage_records_per_s"]["median"] / per_request, 3
                )
                entry["sync_to_concurrency_x_fetch_only"] = round(
                    entry["sync_records_per_s"]["median"] / per_request, 3
                )
    goals = {"cursor": 0.9, "link_header": 0.9, "page_number_c4": 0.8, "offset_c4": 0.8}
    write_result(
        args.result,
        {
            "command": "python -m bench.latency " + " ".join(sys.argv[1:]),
            "source": f"demo upstream, slow fault {args.delay} s on every request, pages of {args.page_size}",
            "records": args.records,
            "latency_limit_records_per_s": limit if args.delay > 0 else None,
            "repeats": args.repeats,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            **figures,
            "goals": {name: f">= {goal} x concurrency x limit" for name, goal in goals.items()},
            "goals_met_stage_phase": {
                name: figures[name]["stage_to_concurrency_x_limit"] >= goal
                for name, goal in goals.items()
                if name in figures
            },
            "goals_met_whole_sync": {
                name: figures[name]["sync_to_concurrency_x_limit"] >= goal
                for name, goal in goals.items()
                if name in figures
            },
        },
    )


if __name__ == "__main__":
    main()
