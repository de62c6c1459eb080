"""What each added DAG file costs the DAG-integrity tests (tests/dags/test_dag_integrity.py).

    .venv/bin/python -m bench.dag_integrity [--syncs 50]

Copies dags/ and include/ into a temporary repository root, scaffolds `--syncs` more YAML syncs there
with tools.new_sync (as `make new-sync` does), and times the integrity work over the repo's own files
and over all of them, for both ways of probing parse-time I/O and the parse budget:

  per_file   bench.parse_time.probe: one fresh interpreter per file (what the tests did before)
  forked     bench.parse_time.probe_many: one interpreter imports Airflow once, a forked child per file

Both include the one DagBag over the whole folder that the rules are checked on (timed inside its own
interpreter, after the imports, as the test module's fixture pays it). Cost per added file =
(seconds for all files - seconds for the repo's files) / added files. Every probe must come back clean
(no import error, no I/O, a DAG), or the figure would be measuring something else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.parse_time import DAGS_DIR, UNREACHABLE_DB, dag_files, probe, probe_many
from tools import REPO_ROOT

DAGBAG_SCRIPT = (
    "import sys, time\n"
    "from airflow.dag_processing.dagbag import DagBag\n"
    "start = time.perf_counter()\n"
    "bag = DagBag(dag_folder=sys.argv[1])\n"
    "assert not bag.import_errors, bag.import_errors\n"
    "print(len(bag.dags), time.perf_counter() - start)\n"
)


def copy_repo(root: Path) -> None:
    """The repo's dags/ and include/ under `root`."""
    shutil.copytree(DAGS_DIR, root / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "include", root / "include", ignore=shutil.ignore_patterns("__pycache__"))


def add_syncs(root: Path, count: int) -> None:
    """`count` syncs scaffolded under `root` by tools.new_sync, as `make new-sync` writes them."""
    from tools.new_sync import plan, write

    for index in range(count):
        name = f"sales_integrity{index:04d}_sync"
        resource = ("orders", "customers")[index % 2]
        write(
            plan(name, domain="sales", owner="sales-data", resource=resource, start_date=date(2026, 1, 1)),
            root,
        )


def dagbag_seconds(folder: Path, env: dict[str, str]) -> tuple[int, float]:
    result = subprocess.run(
        [sys.executable, "-c", DAGBAG_SCRIPT, str(folder)],
        env=env,
        cwd=folder.parent,  # the generated root: its include.contracts comes first
        capture_output=True,
        text=True,
        check=True,
    )
    dags, seconds = result.stdout.split()[-2:]
    return int(dags), float(seconds)


def check_clean(results: list[dict]) -> None:
    bad = [r for r in results if r.get("crash") or r["import_errors"] or r["io_events"] or not r["dag_ids"]]
    if bad:
        raise SystemExit(f"probes not clean, figures would be meaningless: {json.dumps(bad)[:3000]}")


def measure(files: list[Path], folder: Path, env: dict[str, str], method: str) -> dict:
    start = time.perf_counter()
    if method == "per_file":
        results = [probe(path, env) for path in files]
    else:
        results = list(probe_many(files, env).values())
    probe_seconds = time.perf_counter() - start
    check_clean(results)
    dags, bag_seconds = dagbag_seconds(folder, env)
    return {
        "files": len(files),
        "dags_in_dagbag": dags,
        "probe_s": round(probe_seconds, 2),
        "dagbag_s": round(bag_seconds, 2),
        "total_s": round(probe_seconds + bag_seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syncs", type=int, default=50)
    args = parser.parse_args()

    from bench.common import write_result
    from tools.airflow_env import airflow_env

    work = Path(tempfile.mkdtemp(prefix="bench-dag-integrity-"))
    base_root, root = work / "repo_files", work / "with_added_syncs"
    try:
        copy_repo(base_root)
        copy_repo(root)
        add_syncs(root, args.syncs)
        figures = {}
        for label, where in (("repo_files", base_root), ("with_added_syncs", root)):
            env = {
                **airflow_env(Path(tempfile.mkdtemp(prefix="bench-integrity-home-")), UNREACHABLE_DB),
                "AIRFLOW__CORE__DAGS_FOLDER": str(where / "dags"),
                "BATCHKIT_INCLUDE_DIR": str(where / "include"),
                "PYTHONPATH": os.pathsep.join([str(where), str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
                "BENCH_GENERATED_ROOT": str(where),
            }
            files = dag_files(where / "dags")
            figures[label] = {
                method: measure(files, where / "dags", env, method) for method in ("forked", "per_file")
            }
        added = figures["with_added_syncs"]["forked"]["files"] - figures["repo_files"]["forked"]["files"]
        per_added = {
            method: round(
                (figures["with_added_syncs"][method]["total_s"] - figures["repo_files"][method]["total_s"])
                / added,
                3,
            )
            for method in ("forked", "per_file")
        }
        write_result(
            "dag_integrity",
            {
                "command": f"python -m bench.dag_integrity --syncs {args.syncs}",
                "added_files": added,
                "seconds_per_added_file": per_added,
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                **figures,
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
