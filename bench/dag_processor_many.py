"""A real dag-processor over hundreds of generated YAML syncs: its full parse loop, per-file times, memory.

    .venv/bin/python -m bench.dag_processor_many [--syncs 500] [--runs 1] [--rounds 2] [--baseline-plugins DIR]

Generates `--syncs` syncs (bench.parse_many.generate: tools.new_sync's scaffold) into a temporary root,
migrates a throwaway metadata database per configuration on $BENCH_PG_URL, and runs `airflow
dag-processor --num-runs N` over the generated dags folder `--rounds` times per configuration, the
configurations alternating (their order reversed every other round):

  as_is      the repo as it is (plugins/, config/)
  baseline   with --baseline-plugins DIR: that plugins/ instead (e.g. copied from a `git worktree` of an
             earlier commit), for before and after in one run

A parse child is forked from the processor and inherits what it has imported; importing
batchkit.sync_dag in the processor before it forks (from airflow_local_settings.py) was measured with an
earlier version of this script and saved nothing measurable (BENCHMARKS.md), so the repo does not.

Per run: wall time of the processor (start-up, N loops over every file, exit), the per-file parse
durations it records itself (the `dag_processing.last_duration` it keeps per file, read from the
`file_parsing_stats` table it logs, or from the DB's serialized DAG count when absent), the peak RSS of
the processor's process tree (sampled every 0.2 s), and the import errors (`airflow dags
list-import-errors`). Default intervals and `[dag_processor] parsing_processes` (2) apply.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

from bench.common import write_result
from bench.parse_many import REPO_ROOT, generate
from tools.airflow_env import airflow_env
from tools.metadb import PgServer, ensure_database

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# The manager's "DAG File Processing Stats" rows: bundle, file, [pid], [current duration], # DAGs,
# # errors, last duration, last run at.
STATS_ROW = re.compile(
    r"^\s*\S+\s+(?P<file>\S+\.py)\s+(?:\d+\s+)?(?:[\d.]+s\s+)?(?P<dags>\d+)\s+(?P<errors>\d+)\s+(?P<last>[\d.]+)s"
)


def peak_tree_rss(process: subprocess.Popen, stop: threading.Event, out: dict) -> None:
    peak = 0
    try:
        root = psutil.Process(process.pid)
        while not stop.is_set():
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            time.sleep(0.2)
    except psutil.Error:
        pass
    out["peak_tree_rss_mib"] = round(peak / 2**20)


def run_processor(env: dict[str, str], runs: int, log: Path) -> dict:
    stop, memory = threading.Event(), {}
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(REPO_ROOT / ".venv/bin/airflow"), "dag-processor", "--num-runs", str(runs)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )
        sampler = threading.Thread(target=peak_tree_rss, args=(process, stop, memory))
        sampler.start()
        try:
            process.wait(timeout=3600)
        finally:
            stop.set()
            sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"dag-processor exited {process.returncode}; see {log}")
    last: dict[str, float] = {}
    loop: dict[str, datetime] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = STATS_ROW.match(line)
        if match:
            last[match["file"]] = float(match["last"])
        for event, text in (("start", "Processing files using up to"), ("end", "Exiting dag parsing loop")):
            if text in line:
                loop[event] = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
    parse_loops = (loop["end"] - loop["start"]).total_seconds() if len(loop) == 2 else None
    return {
        "wall_seconds": round(seconds, 1),
        # From the processor's own log: its first "Processing files" to "Exiting dag parsing loop".
        "parse_loops_seconds": parse_loops,
        **memory,
        "files_in_stats": len(last),
        "last_durations": last,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syncs", type=int, default=500)
    parser.add_argument("--runs", type=int, default=1, help="dag-processor --num-runs")
    parser.add_argument("--rounds", type=int, default=2, help="processor runs per variant, alternating")
    parser.add_argument(
        "--baseline-plugins",
        type=Path,
        help="a plugins/ from before a change: adds the variant `baseline`",
    )
    parser.add_argument("--result", default="dag_processor_many", help="bench/results/<name>.json")
    args = parser.parse_args()

    server, _ = PgServer.from_url(os.environ.get("BENCH_PG_URL", DEFAULT_URL))
    work = Path(tempfile.mkdtemp(prefix="bench-dagproc-"))
    root = work / "repo"
    generate(root, args.syncs)
    variants = ("as_is", *(("baseline",) if args.baseline_plugins else ()))
    envs: dict[str, dict[str, str]] = {}
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    try:
        for variant in variants:
            config = work / f"config-{variant}"
            config.mkdir()
            shutil.copy(REPO_ROOT / "config" / "airflow_local_settings.py", config)
            database = f"bench_dagproc_{variant}_{os.getpid()}"
            ensure_database(server, database)
            envs[variant] = airflow_env(
                work / f"home-{variant}",
                server.sqlalchemy_url(database),
                dags_folder=root / "dags",
                extra={
                    "BATCHKIT_INCLUDE_DIR": str(root / "include"),
                    "PYTHONPATH": os.pathsep.join([str(config), str(root), str(REPO_ROOT)]),
                    "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "5",
                    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                    **(
                        {"AIRFLOW__CORE__PLUGINS_FOLDER": str(args.baseline_plugins.resolve())}
                        if variant == "baseline"
                        else {}
                    ),
                },
            )
            subprocess.run(
                [str(REPO_ROOT / ".venv/bin/airflow"), "db", "migrate"],
                env=envs[variant],
                check=True,
                capture_output=True,
                cwd=tempfile.gettempdir(),
            )
        for round_number in range(args.rounds):
            for variant in variants if round_number % 2 == 0 else variants[::-1]:
                log = work / f"dag-processor-{variant}-{round_number + 1}.log"
                run = run_processor(envs[variant], args.runs, log)
                errors = subprocess.run(
                    [str(REPO_ROOT / ".venv/bin/airflow"), "dags", "list-import-errors", "-o", "json"],
                    env=envs[variant],
                    capture_output=True,
                    text=True,
                    cwd=tempfile.gettempdir(),
                )
                durations = list(run.pop("last_durations").values())
                run.update(
                    round=round_number + 1,
                    per_file_last_duration_s={
                        "median": round(statistics.median(durations), 3),
                        "max": round(max(durations), 3),
                    }
                    if durations
                    else None,
                    import_errors=_count_errors(errors.stdout),
                    log=str(log),
                )
                results[variant].append(run)
                print(variant, json.dumps(run), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for variant in variants:
            _drop(server, f"bench_dagproc_{variant}_{os.getpid()}")
    write_result(
        args.result,
        {
            "command": "python -m bench.dag_processor_many " + " ".join(sys.argv[1:]),
            "syncs": args.syncs,
            "num_runs": args.runs,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            **results,
        },
    )


def _count_errors(stdout: str) -> int | str:
    try:
        return len(json.loads(stdout[stdout.index("[") :]))
    except ValueError:
        return f"unparsed: {stdout[-300:]!r}"


def _drop(server: PgServer, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
