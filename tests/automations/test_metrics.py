"""A sync run's metrics arrive over real StatsD UDP, each tagged with its DAG and task.

The run happens in its own interpreter (tests/automations/observed_run.py) configured the way `make run`
and docker-compose.yaml configure Airflow ([metrics] statsd_on, statsd_influxdb_enabled), pointed at a
UDP socket this test bound on loopback. Expected values come from the demo upstream's pure functions.
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta

import pytest

from batchkit.sync_spec import load_spec, spec_path
from tests.automations.observed_run import run_sync_in_subprocess
from tests.automations.test_sync_dags import SYNC_DAG_FILES, Sync, at_cron_tick
from tests.upstream import Upstream
from tools.airflow_env import STATSD_PREFIX, metrics_env
from tools.demo_upstream import Volumes, select

DAG_ID = "sales_orders_sync"
# Records the upstream corrupts (index in the interval): they must show up as quarantined.
DEFECTS = (7, 1234)


class StatsdReceiver:
    """Every StatsD line sent to a loopback UDP port, collected by a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines.extend(line for line in packet.decode().splitlines() if line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def statsd() -> Iterator[StatsdReceiver]:
    receiver = StatsdReceiver()
    yield receiver
    receiver.close()


def parse(line: str) -> tuple[str, dict[str, str], float, str]:
    """`name,tag=value,...:value|type` (InfluxDB-style tags, as statsd-exporter reads them)."""
    head, rest = line.split(":", 1)
    value, kind = rest.split("|")[:2]
    name, *pairs = head.split(",")
    return name, dict(pair.split("=", 1) for pair in pairs), float(value), kind


def batchkit_metrics(lines: list[str]) -> dict[tuple[str, str, str], list[tuple[float, str, dict[str, str]]]]:
    """(metric without prefix, dag_id, task_id) -> [(value, type, tags)] for every batchkit line."""
    found: dict[tuple[str, str, str], list[tuple[float, str, dict[str, str]]]] = defaultdict(list)
    for line in lines:
        name, tags, value, kind = parse(line)
        if name.startswith(f"{STATSD_PREFIX}.batchkit."):
            metric = name.removeprefix(f"{STATSD_PREFIX}.batchkit.")
            found[(metric, tags.get("dag_id", ""), tags.get("task_id", ""))].append((value, kind, tags))
    return found


@pytest.mark.slow
def test_a_sync_run_sends_its_batchkit_metrics_tagged_with_dag_and_task(
    statsd: StatsdReceiver, upstream: Upstream, volumes: Volumes, airflow_db: str
) -> None:
    sync = Sync(spec=load_spec(spec_path(DAG_ID)), dag=None)
    logical_date = at_cron_tick(sync, (2026, 3, 9))
    start, end = logical_date - timedelta(days=1), logical_date
    total = select(sync.resource, start, end, volumes).total
    pages = -(-total // sync.spec.source.pagination.page_size)
    upstream.set_faults(
        *(
            {"kind": "bad_records", "path": sync.endpoint, "defect": "missing_id", "record_indices": [i]}
            for i in DEFECTS
        )
    )

    run = run_sync_in_subprocess(
        SYNC_DAG_FILES[DAG_ID], DAG_ID, logical_date, metrics_env(host="127.0.0.1", port=statsd.port)
    )

    found = batchkit_metrics(statsd.lines)
    assert "Invalid stat name" not in run.stderr + run.stdout
    stage, merge = (DAG_ID, "extract_stage"), (DAG_ID, "merge")

    def total_of(metric: str, where: tuple[str, str]) -> float:
        return sum(value for value, kind, _ in found[(metric, *where)] if kind == "c")

    assert total_of("extract.pages", stage) == pages, sorted(found)
    assert total_of("extract.records", stage) == total
    assert {tags["endpoint"] for _, _, tags in found[("extract.records", *stage)]} == {sync.endpoint}
    assert total_of("rows_quarantined", stage) == len(DEFECTS)
    assert total_of("rows_loaded", merge) == total - len(DEFECTS)
    [(merge_ms, kind, tags)] = found[("merge_duration", *merge)]
    assert kind == "ms"
    assert merge_ms > 0
    assert tags["target"] == sync.table
    # Every batchkit metric of the run says which DAG and task sent it.
    assert all(dag and task for _, dag, task in found), sorted(found)
    # Airflow's own metrics ride the same socket (a dashboard sees both).
    assert any(not line.startswith(f"{STATSD_PREFIX}.batchkit.") for line in statsd.lines)
