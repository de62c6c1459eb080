"""Parse time of many YAML syncs: what a repository of hundreds of syncs costs the dag-processor.

    .venv/bin/python -m bench.parse_many [--syncs 500] [--sample 40] [--repeat 1] [--keep DIR]

Generates `--syncs` syncs with tools.new_sync's scaffold (YAML, two-line DAG file, contract module, DDL)
into a temporary repository root, pointed at by $BATCHKIT_INCLUDE_DIR (the YAML and SQL) and first on
PYTHONPATH (the `include.contracts.<name>` modules), then measures:

  per_file_cold   `--sample` of the DAG files, each parsed in a fresh interpreter with Airflow and the
                  DagBag already imported (bench.parse_time's probe: what a dag-processor child pays when
                  nothing of batchkit was imported before it forked)
  per_file_warm   the same files when batchkit.sync_dag was imported before the clock (what a child pays
                  when the processor imported batchkit before forking, e.g. from airflow_local_settings)
  folder          one DagBag over the whole folder in one interpreter: total seconds and seconds per file
  baseline        with --baseline-plugins DIR, cold probes of each sample file with that plugins/ instead
                  (e.g. a copy with this change's parse-time edits undone), alternating with the current one

Goal (issue "Fast where it matters in production"): median parse time per sync file <= 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from tools import REPO_ROOT

UNREACHABLE_DB = "postgresql+psycopg2://nobody@127.0.0.1:1/none?connect_timeout=1"


def generate(root: Path, count: int) -> list[Path]:
    """`count` scaffolded syncs under `root` (alternating the demo resources); returns the DAG files."""
    from tools.new_sync import plan, write

    (root / "include" / "contracts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "include" / "contracts" / "__init__.py", root / "include" / "contracts")
    dag_files = []
    for index in range(count):
        resource = ("orders", "customers")[index % 2]
        scaffold = plan(
            f"sales_bench{index:04d}_sync",
            domain="sales",
            owner="sales-data",
            resource=resource,
            start_date=date(2026, 1, 1),
        )
        written = write(scaffold, root)
        dag_files += [path for path in written if path.relative_to(root).parts[0] == "dags"]
    return sorted(dag_files)


def env_for(root: Path, plugins: Path = REPO_ROOT / "plugins") -> dict[str, str]:
    from tools.airflow_env import airflow_env

    env = airflow_env(Path(tempfile.mkdtemp(prefix="bench-parse-many-home-")), UNREACHABLE_DB)
    return {
        **env,
        "BATCHKIT_INCLUDE_DIR": str(root / "include"),
        # The generated root first: `include.contracts.<name>` must resolve to the generated modules.
        "PYTHONPATH": os.pathsep.join([str(root), str(plugins), str(REPO_ROOT)]),
        "BENCH_GENERATED_ROOT": str(root),
        # Ahead of the repo's plugins/, which importing `bench` (via tools) puts first on sys.path.
        "BENCH_PLUGINS": str(plugins.resolve()),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": UNREACHABLE_DB,
    }


def probe(files: list[Path], env: dict[str, str], *, warm: bool) -> list[dict]:
    """Parse each file in its own fresh interpreter; returns each probe's JSON."""
    results = []
    for path in files:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.parse_many", "--probe", str(path)] + (["--warm"] if warm else []),
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"probe failed on {path}:\n{completed.stderr[-3000:]}")
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    return results


def _probe(path: Path, warm: bool) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    if warm:  # imported before the clock, as in a child forked from a processor that imported it
        import batchkit.sync_dag

    started = time.perf_counter()
    bag = DagBag(dag_folder=path)
    seconds = time.perf_counter() - started
    import batchkit

    return {
        "file": str(path),
        "dags": len(bag.dags),
        "import_errors": bag.import_errors,
        "seconds": seconds,
        "plugins": str(Path(batchkit.__path__[0]).parent),
    }


def _folder(folder: Path) -> dict:
    import resource

    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=folder)
    seconds = time.perf_counter() - started
    return {
        "dags": len(bag.dags),
        "import_errors": len(bag.import_errors),
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def spread(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syncs", type=int, default=500)
    parser.add_argument("--sample", type=int, default=40, help="files probed one interpreter each")
    parser.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    parser.add_argument(
        "--baseline-plugins",
        type=Path,
        help="a plugins/ folder to compare with (cold probes of each sample file alternate with it)",
    )
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.environ.get("BENCH_GENERATED_ROOT"):
        # Ahead of the repo root (the working directory, sys.path[0] under -m): `include.contracts`
        # must be the generated package.
        sys.path.insert(0, os.environ["BENCH_GENERATED_ROOT"])
    if os.environ.get("BENCH_PLUGINS"):
        sys.path.insert(0, os.environ["BENCH_PLUGINS"])
    if args.probe:
        print(json.dumps(_probe(args.probe, args.warm)))
        return
    if args.folder:
        print(json.dumps(_folder(args.folder)))
        return

    from bench.common import write_result

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-parse-many-"))
    try:
        started = time.perf_counter()
        files = generate(root, args.syncs)
        generated_in = time.perf_counter() - started
        env = env_for(root)
        step = max(1, len(files) // args.sample)
        sample = files[::step][: args.sample]
        baseline_env = env_for(root, args.baseline_plugins) if args.baseline_plugins else None
        cold, warm, baseline = [], [], []
        for path in sample:  # alternating cold and warm (and the baseline), file by file
            cold += probe([path], env, warm=False)
            warm += probe([path], env, warm=True)
            if baseline_env is not None:
                baseline += probe([path], baseline_env, warm=False)
        problems = [r for r in cold + warm + baseline if r["dags"] != 1 or r["import_errors"]]
        if problems:
            raise RuntimeError(f"files did not parse into one DAG: {problems[:3]}")
        for results, plugins in ((cold + warm, REPO_ROOT / "plugins"), (baseline, args.baseline_plugins)):
            if wrong := {r["plugins"] for r in results} - {str(Path(plugins or ".").resolve())}:
                raise RuntimeError(f"probes meant for {plugins} imported batchkit from {sorted(wrong)}")
        completed = subprocess.run(
            [sys.executable, "-m", "bench.parse_many", "--folder", str(root / "dags")],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"folder parse failed:\n{completed.stderr[-3000:]}")
        folder = json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    write_result(
        "parse_many",
        {
            "command": "python -m bench.parse_many " + " ".join(sys.argv[1:]),
            "syncs": args.syncs,
            "generated_in_s": round(generated_in, 2),
            "sample_files": len(sample),
            "per_file_cold_s": spread([r["seconds"] for r in cold]),
            "per_file_warm_s": spread([r["seconds"] for r in warm]),
            "per_file_cold_baseline_s": spread([r["seconds"] for r in baseline]) if baseline else None,
            "baseline_plugins": str(args.baseline_plugins) if args.baseline_plugins else None,
            "folder_one_process": {
                **folder,
                "seconds": round(folder["seconds"], 2),
                "seconds_per_file": round(folder["seconds"] / args.syncs, 4),
            },
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "goal_median_per_file_s": 0.1,
        },
    )


if __name__ == "__main__":
    main()
