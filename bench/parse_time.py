"""Parse time per DAG file, and what a file touches while it parses.

    .venv/bin/python -m bench.parse_time [--repeat 5]

Each DAG file is parsed in a fresh interpreter, the way the dag-processor parses it: Airflow and the
DagBag are imported first (that start-up is paid once per processor, not per file), then the clock runs
around `DagBag(dag_folder=file)` alone. The same probe backs the DAG-integrity tests
(tests/dags/test_dag_integrity.py), which hold every file to PARSE_BUDGET_SECONDS and to no I/O.

While the file parses, the probe records any network access (Python audit events for socket
connect/DNS) and any Variable or Connection lookup. The metadata DB URL points at a closed port, so a
database query at parse time fails the import instead of silently succeeding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_DIR = REPO_ROOT / "dags"
# Backed by BENCHMARKS.md: the slowest file parses in a small fraction of this on the CI machine; the
# headroom absorbs a loaded 2-core runner. A file over budget is doing real work at parse time.
PARSE_BUDGET_SECONDS = 2.0
NETWORK_AUDIT_EVENTS = frozenset({"socket.connect", "socket.getaddrinfo", "socket.gethostbyname"})
# Nothing listens on port 1: any metadata-DB access at parse time fails loudly.
UNREACHABLE_DB = "postgresql+psycopg2://nobody@127.0.0.1:1/none?connect_timeout=1"


def dag_files(folder: Path = DAGS_DIR) -> list[Path]:
    """The files the dag-processor would parse (Python files and YAML automation specs' loaders)."""
    return sorted(p for p in folder.rglob("*.py") if p.name != "__init__.py" and "__pycache__" not in p.parts)


def probe(path: Path, env: dict[str, str]) -> dict:
    """Parse `path` in a fresh interpreter; returns dag_ids, import errors, I/O events and seconds."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.parse_time", "--probe", str(path)],
        env={**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": UNREACHABLE_DB},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"parse probe crashed on {path}:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _probe_in_this_process(path: Path) -> dict:
    import time

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import Connection, Variable
    from airflow.sdk.bases.hook import BaseHook

    events: list[str] = []

    def on_audit(event: str, args: tuple) -> None:
        if event in NETWORK_AUDIT_EVENTS:
            events.append(f"{event} {args!r}"[:300])

    def recording(kind: str, original):
        def lookup(*args, **kwargs):
            events.append(f"{kind}{args[1:] if args and isinstance(args[0], type) else args}")
            return original(*args, **kwargs)

        return lookup

    Variable.get = classmethod(recording("Variable.get", Variable.get.__func__))
    Connection.get = classmethod(recording("Connection.get", Connection.get.__func__))
    BaseHook.get_connection = classmethod(
        recording("BaseHook.get_connection", BaseHook.get_connection.__func__)
    )
    sys.addaudithook(on_audit)

    start = time.perf_counter()
    bag = DagBag(dag_folder=path)
    seconds = time.perf_counter() - start
    return {
        "file": str(path),
        "dag_ids": sorted(bag.dags),
        "import_errors": bag.import_errors,
        "io_events": events,
        "parse_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=Path, help="internal: parse one file and print JSON")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(_probe_in_this_process(args.probe)))
        return

    import tempfile

    from bench.common import write_result
    from tools.airflow_env import airflow_env

    env = airflow_env(Path(tempfile.mkdtemp(prefix="bench-parse-home-")), UNREACHABLE_DB)
    per_file = {}
    for path in dag_files():
        runs = [probe(path, env) for _ in range(args.repeat)]
        seconds = [r["parse_seconds"] for r in runs]
        per_file[str(path.relative_to(REPO_ROOT))] = {
            "dag_ids": runs[0]["dag_ids"],
            "median_s": round(statistics.median(seconds), 4),
            "max_s": round(max(seconds), 4),
        }
    write_result(
        "parse_time",
        {
            "command": f"python -m bench.parse_time --repeat {args.repeat}",
            "budget_s": PARSE_BUDGET_SECONDS,
            "files": per_file,
        },
    )


if __name__ == "__main__":
    main()
