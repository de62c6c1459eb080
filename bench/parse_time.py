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
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tools import REPO_ROOT

DAGS_DIR = REPO_ROOT / "dags"
# Backed by BENCHMARKS.md: the slowest file parses in a small fraction of this on the CI machine; the
# headroom absorbs a loaded 2-core runner. A file over budget is doing real work at parse time.
PARSE_BUDGET_SECONDS = 2.0
NETWORK_AUDIT_EVENTS = frozenset({"socket.connect", "socket.getaddrinfo", "socket.gethostbyname"})
# Nothing listens on port 1: any metadata-DB access at parse time fails loudly.
# probe_many's parallel parsers: like the dag-processor's [dag_processor] parsing_processes, per CPU.
PROBE_JOBS_MAX = 4
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


def probe_many(
    paths: list[Path], env: dict[str, str], timeout: float = 600, jobs: int | None = None
) -> dict[Path, dict]:
    """`probe` for many files at the cost of one interpreter start-up: {path: probe result}.

    One subprocess imports Airflow and the DagBag once, then forks a child per file, the way the
    dag-processor forks a parser per file: each file still parses in a process of its own, with nothing
    of it or of any other DAG file imported before (so the I/O probe sees exactly what `probe` sees),
    without paying Python and Airflow start-up per file. `jobs` children (default: one per CPU, at most
    PROBE_JOBS_MAX) run at once, as the dag-processor's parsing processes do; a parse time measured next
    to another parse is at most that much slower, far inside PARSE_BUDGET_SECONDS's headroom. A child
    that dies reports a `crash` entry.
    """
    if not paths:
        return {}
    jobs = jobs or min(os.cpu_count() or 1, PROBE_JOBS_MAX)
    result = subprocess.run(
        [sys.executable, "-m", "bench.parse_time", "--jobs", str(jobs), "--probe-many", *map(str, paths)],
        env={**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": UNREACHABLE_DB},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"parse probes crashed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    results = json.loads(result.stdout.strip().splitlines()[-1])
    return {Path(r["file"]): r for r in results}


def _prepare_probe() -> None:
    """What a probe imports before the clock runs (paid once per dag-processor, not per file)."""
    import airflow.dag_processing.dagbag
    import airflow.sdk
    import airflow.sdk.bases.hook  # noqa: F401


def _probe_forked(paths: list[Path], jobs: int) -> list[dict]:
    """Each path probed in a child forked from this (prepared) process, up to `jobs` children at once.

    Children report through a pipe each, read as they write (a long traceback cannot block a child).
    """
    import selectors

    _prepare_probe()
    pending = list(reversed(paths))
    running: dict[int, tuple[int, Path, bytearray]] = {}  # read fd -> (pid, path, bytes so far)
    selector = selectors.DefaultSelector()
    results = []

    def start(path: Path) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: parse, report through the pipe, and leave without any cleanup
            os.close(read_end)
            try:
                payload = json.dumps(_probe_in_this_process(path)).encode()
                code = 0
            except BaseException as error:  # reported as the file's crash, never silently
                payload = json.dumps({"file": str(path), "crash": repr(error)}).encode()
                code = 1
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            os._exit(code)
        os.close(write_end)
        running[read_end] = (pid, path, bytearray())
        selector.register(read_end, selectors.EVENT_READ)

    while pending or running:
        while pending and len(running) < jobs:
            start(pending.pop())
        for key, _ in selector.select():
            pid, path, payload = running[key.fd]
            chunk = os.read(key.fd, 65536)
            if chunk:
                payload += chunk
                continue
            selector.unregister(key.fd)
            os.close(key.fd)
            del running[key.fd]
            _, status = os.waitpid(pid, 0)
            try:
                result = json.loads(payload)
            except ValueError:
                result = {"file": str(path), "crash": f"parser process died (wait status {status})"}
            result.setdefault("crash", None)
            results.append(result)
    return results


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
    parser.add_argument("--probe-many", type=Path, nargs="+", help="internal: probe_many's subprocess")
    parser.add_argument("--jobs", type=int, default=1, help="internal: probe_many's children at once")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.environ.get("BENCH_GENERATED_ROOT"):
        # A generated repository root (bench.dag_integrity, bench.parse_many): its include.contracts
        # must win over this repo's, which `python -m` from the repo root puts first on sys.path.
        sys.path.insert(0, os.environ["BENCH_GENERATED_ROOT"])
    if args.probe:
        print(json.dumps(_probe_in_this_process(args.probe)))
        return
    if args.probe_many:
        results = _probe_forked(args.probe_many, args.jobs)
        sys.stdout.flush()
        print(json.dumps(results))
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
