"""The CeleryExecutor as `make run EXECUTOR=celery WORKERS=2` runs it, under load and under faults.

One supervised stack for the module (tests/e2e/conftest.py StackStarter with `celery=`): api-server,
scheduler, dag-processor, triggerer, the stack's own redis-server as broker (tools.broker.EmbeddedRedis
on a free port, append-only file fsynced on every write), a result-backend database of its own and
two real `airflow celery worker`s listening to both queues, all restarted by the supervisor when they
exit. The fixture sync (tests/fixtures/dags_celery/celery_orders_sync: 1-2 s retry delays, pages of
250) loads a loopback demo upstream whose pages are slowed, so an extract lasts seconds.

  1. A 10-interval backfill runs on both workers, each task on its queue (extract: source, the rest:
     warehouse), exact data.
  2. SIGKILL a worker's whole session mid-extract (a machine dying): the task is found by its missing
     heartbeats within task_instance_heartbeat_timeout + its detection interval, retried, exact data.
  3. SIGTERM a worker mid-extract: Celery's warm shutdown lets the extract finish in the same try,
     then the worker exits and is restarted.
  4. Stop the broker (SIGTERM, then SIGKILL) while tasks wait in it: every one of them runs, exact data.
  5. The source's rate limit (declared once, on the connection: RATE requests/s, BURST) holds across
     both workers: concurrent extracts on both, yet never more than the limit allows in any second at
     the upstream. Every test runs under that limit, as production would.

The measured figures are printed at the end of the module (past pytest's capture).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from batchkit.migrations import migrate
from batchkit.sql_files import apply_sql_file
from tests.e2e.celery_support import QueuedTask, component_of, kill_session, queued_tasks, unacknowledged
from tests.e2e.chaos_support import (
    format_table,
    interval_exact,
    interval_of,
    parse_time,
    poll_until,
    progress,
    retry_timing,
    settle_scheduled_run,
    task_instance,
    task_states,
    try_detail,
    wait_for_run,
    wait_for_try,
    wait_for_try_end,
)
from tests.upstream import Upstream, running_upstream
from tools import REPO_ROOT
from tools.airflow_api import AirflowApi
from tools.demo_upstream import DEFAULT_PER_DAY, Volumes
from tools.metadb import DatabaseRole, PgServer, drop_database, drop_role, provision_database
from tools.stack import AIRFLOW_COMPONENTS, AirflowStack, parse_worker_queues

pytestmark = pytest.mark.e2e

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "dags_celery"
SYNC = "celery_orders_sync"
ORDERS_PATH = "/v1/cursor/orders"
ORDERS_PER_DAY = 2000
PAGE_SIZE = 250  # the fixture's page_size
PAGES = math.ceil(ORDERS_PER_DAY / PAGE_SIZE)
VOLUMES = Volumes(orders=ORDERS_PER_DAY, customers=DEFAULT_PER_DAY["customers"])
WORKERS = parse_worker_queues(2, None)  # worker1, worker2: both queues each, as `make run` by default
CONCURRENCY = 2  # slots per worker: 4 in all, fewer than the runnable tasks of a backfill
POOLS = {"demo_api": 8, "warehouse": 8}
BACKFILL_INTERVALS = 10
BROKER_INTERVALS = 8
# Seconds the upstream waits before each orders page: a fault test's extract lasts ~PAGES s.
FAULT_PAGE_DELAY = 1.0
BACKFILL_PAGE_DELAY = 0.1
BROKER_PAGE_DELAY = 0.5
RUN_TIMEOUT = 240
# A scheduler loop and the REST polling on a loaded 2-core machine, over the configured bound.
DETECTION_SLACK = 15
HEARTBEAT_TIMEOUT_SETTING = "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"
DETECTION_INTERVAL_SETTING = "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL"
# The demo_api connection's declared limit (its extra), enforced through the broker's Redis.
RATE, BURST = 10, 2
RATE_INTERVALS = 6


@dataclass
class Cluster:
    stack: AirflowStack
    api: AirflowApi
    upstream: Upstream
    warehouse_conninfo: str
    report: dict[str, Any] = field(default_factory=dict)

    def warehouse(self) -> psycopg.Connection:
        return psycopg.connect(self.warehouse_conninfo, autocommit=True)

    @property
    def broker_url(self) -> str:
        assert self.stack.celery is not None
        return self.stack.celery.broker_url


@pytest.fixture(scope="module")
def warehouse_server(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    """A warehouse database and role of this module's own: its intervals are checked row by row."""
    suffix = secrets.token_hex(4)
    database, role = (
        f"bk_e2e_celery_wh_{suffix}",
        DatabaseRole(f"bk_e2e_celery_wh_{suffix}", secrets.token_urlsafe(16)),
    )
    server = provision_database(pg_server, database, role)
    try:
        with psycopg.connect(server.conninfo(database), autocommit=True) as conn:
            # The control tables at the latest version, as `make run` and airflow-init leave them; the sync
            # creates its target itself, created up front here so the pollers can read it from the start.
            migrate(conn)
            apply_sql_file(conn, "sql/targets/sales_orders.sql")
        yield server, database
    finally:
        drop_database(pg_server, database)
        drop_role(pg_server, role.name)


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest,
    warehouse_server: tuple[PgServer, str],
    start_module_stack,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    started = time.monotonic()
    server, database = warehouse_server
    dags = tmp_path_factory.mktemp("celery-dags")
    for source in FIXTURES.iterdir():
        shutil.copy(source, dags)
    report: dict[str, Any] = {
        "machine_cpus": os.cpu_count(),
        "workers": len(WORKERS),
        "concurrency": CONCURRENCY,
    }
    with running_upstream("--orders-per-day", str(ORDERS_PER_DAY)) as upstream:
        stack, api = start_module_stack(
            dags,
            settings_file=None,
            supervise=True,
            celery=WORKERS,
            worker_concurrency=CONCURRENCY,
            extra_env={
                "AIRFLOW_CONN_DEMO_API": upstream.connection_json(requests_per_second=RATE, burst=BURST),
                "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps(
                    {"conn_type": "http", "host": f"{upstream.url}/alerts"}
                ),
                "AIRFLOW_CONN_WAREHOUSE": server.airflow_connection_json(database),
            },
        )
        report["stack_ready_s"] = round(time.monotonic() - started, 1)
        for name, slots in POOLS.items():
            api.request("POST", "/pools", json={"name": name, "slots": slots})
        api.wait_for_dag(SYNC)
        api.set_paused(SYNC, False)
        settle_scheduled_run(api, SYNC)
        try:
            yield Cluster(stack, api, upstream, server.conninfo(database), report)
        finally:
            report["module_s"] = round(time.monotonic() - started, 1)
            report["component_restarts"] = {n: c for n, c in stack.restart_counts().items() if c}
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():
                print(f"\ncelery e2e figures:\n{json.dumps(report, indent=2, default=str)}", flush=True)


def pace(upstream: Upstream, delay: float) -> None:
    """Zero the upstream's counters and slow every orders page by `delay` seconds."""
    upstream.reset()
    upstream.set_faults({"kind": "slow", "delay": delay, "path": ORDERS_PATH, "times": None})


# --- 1. a backfill on both workers, each task on its queue ----------------------------------------------


def test_backfill_runs_on_both_workers_each_task_on_its_queue(cluster: Cluster) -> None:
    api = cluster.api
    pace(cluster.upstream, BACKFILL_PAGE_DELAY)
    first = datetime(2026, 4, 1, 2, tzinfo=UTC)
    intervals = [
        (first + timedelta(days=d), first + timedelta(days=d + 1)) for d in range(BACKFILL_INTERVALS)
    ]
    began = time.monotonic()

    runs = run_backfill(api, intervals, max_active_runs=BACKFILL_INTERVALS)

    elapsed = time.monotonic() - began
    tis = [ti for run in runs for ti in api.task_instances(SYNC, run["dag_run_id"])]
    per_worker = Counter(ti["hostname"] for ti in tis)
    per_worker_queue = Counter((ti["hostname"], ti["queue"]) for ti in tis)
    print(
        f"\n{BACKFILL_INTERVALS}-interval backfill in {elapsed:.0f}s; tasks per worker:\n"
        + format_table(
            sorted((h, q, n) for (h, q), n in per_worker_queue.items()), ("worker", "queue", "tasks")
        )
    )
    cluster.report["1_backfill"] = {
        "intervals": BACKFILL_INTERVALS,
        "seconds": round(elapsed),
        "tasks_per_worker": dict(per_worker),
        "tasks_per_worker_and_queue": {f"{h} {q}": n for (h, q), n in per_worker_queue.items()},
    }

    assert len(tis) == BACKFILL_INTERVALS * 5
    assert {ti["state"] for ti in tis} == {"success"}
    assert {ti["try_number"] for ti in tis} == {1}, "no task was killed, yet one ran twice"
    assert set(per_worker) == {w.node_name() for w in WORKERS}, per_worker
    for ti in tis:
        expected_queue = "source" if ti["task_id"] == "extract_stage" else "warehouse"
        assert ti["queue"] == expected_queue, (ti["task_id"], ti["queue"])
    with cluster.warehouse() as conn:
        rows = sum(interval_exact(conn, SYNC, start, end, VOLUMES).rows for start, end in intervals)
    assert rows == BACKFILL_INTERVALS * ORDERS_PER_DAY
    assert sum(cluster.upstream.page_requests(ORDERS_PATH).values()) >= BACKFILL_INTERVALS * PAGES


# --- 2. SIGKILL a worker's whole session mid-extract ----------------------------------------------------


def test_killed_worker_task_is_detected_retried_and_loads_exactly(cluster: Cluster) -> None:
    api, stack = cluster.api, cluster.stack
    pace(cluster.upstream, FAULT_PAGE_DELAY)
    run = api.trigger(SYNC, logical_date="2026-04-20T02:00:00Z")
    run_id = run["dag_run_id"]
    start, end = interval_of(run)
    ti = running_extract(cluster, run_id, start, end)
    worker = component_of(ti["hostname"])
    restarts_before = stack.process(worker).restarts

    killed_at, processes = kill_session(stack.process(worker).popen.pid)
    ended_at = wait_for_try_end(api, SYNC, run_id, "extract_stage", ti["try_number"], timeout=180)
    detected_s = round(ended_at - killed_at, 1)
    finished = wait_for_run(api, SYNC, run_id, RUN_TIMEOUT)

    timeout_s = int(stack.env[HEARTBEAT_TIMEOUT_SETTING])
    interval_s = int(stack.env[DETECTION_INTERVAL_SETTING])
    timing = retry_timing(api, SYNC, run_id, "extract_stage", ti["try_number"], killed_at)
    retried = try_detail(api, SYNC, run_id, "extract_stage", ti["try_number"] + 1)
    print(
        f"\nSIGKILL of {worker}'s session ({processes} processes) at extract try {ti['try_number']}: "
        f"try {timing['killed_try_state']} after {detected_s}s (bound {timeout_s}+{interval_s}+{DETECTION_SLACK}s), "
        f"retry started after {timing['retry_started_s']}s on {retried['hostname']}"
    )
    cluster.report["2_worker_sigkill"] = {
        "killed": worker,
        "processes_killed": processes,
        "detected_s": detected_s,
        "bound_s": f"task_instance_heartbeat_timeout {timeout_s} + detection interval {interval_s} + slack {DETECTION_SLACK}",
        "killed_try_state": timing["killed_try_state"],
        "retry_started_s": timing["retry_started_s"],
        "retry_on": retried["hostname"],
        "tries": {t["task_id"]: t["try_number"] for t in api.task_instances(SYNC, run_id)},
    }

    assert detected_s <= timeout_s + interval_s + DETECTION_SLACK, (
        f"the killed try ended {detected_s}s after the kill; [scheduler] task_instance_heartbeat_timeout "
        f"({timeout_s}s) + task_instance_heartbeat_timeout_detection_interval ({interval_s}s) "
        f"+ {DETECTION_SLACK}s slack allow {timeout_s + interval_s + DETECTION_SLACK}s"
    )
    assert timing["killed_try_state"] in ("failed", "up_for_retry"), timing
    assert finished["state"] == "success", task_states(api, SYNC, run_id)
    assert retried["state"] == "success", retried
    assert retried["hostname"] in {w.node_name() for w in WORKERS}, retried
    assert task_instance(api, SYNC, run_id, "extract_stage")["try_number"] == ti["try_number"] + 1
    with cluster.warehouse() as conn:
        interval_exact(conn, SYNC, start, end, VOLUMES)
    # The supervisor restarted the dead worker, and it serves again.
    assert stack.process(worker).restarts == restarts_before + 1
    assert stack.process(worker).last_exit_code == -signal.SIGKILL
    wait_for_workers(stack)


# --- 3. SIGTERM a worker mid-extract: warm shutdown ----------------------------------------------------


def test_terminated_worker_finishes_its_task_then_exits_and_is_restarted(cluster: Cluster) -> None:
    api, stack = cluster.api, cluster.stack
    pace(cluster.upstream, FAULT_PAGE_DELAY)
    run = api.trigger(SYNC, logical_date="2026-04-21T02:00:00Z")
    run_id = run["dag_run_id"]
    start, end = interval_of(run)
    ti = running_extract(cluster, run_id, start, end)
    worker = component_of(ti["hostname"])
    incarnation = stack.process(worker).popen
    restarts_before = stack.process(worker).restarts

    terminated_at = time.time()
    os.kill(incarnation.pid, signal.SIGTERM)  # the worker's main process only, as `kill <pid>` does
    # While the extract runs on, the worker waits for it instead of exiting.
    assert task_instance(api, SYNC, run_id, "extract_stage")["state"] == "running"
    assert incarnation.poll() is None, "the worker exited while its task was still running"
    poll_until(lambda: incarnation.poll() is not None, timeout=120, interval=0.1, what=f"{worker} to exit")
    exit_code = incarnation.returncode
    exited_at = time.time()
    finished = wait_for_run(api, SYNC, run_id, RUN_TIMEOUT)
    extract = try_detail(api, SYNC, run_id, "extract_stage", ti["try_number"])
    extract_end = parse_time(extract["end_date"]).timestamp() if extract["end_date"] else None
    print(
        f"\nSIGTERM of {worker} at extract try {ti['try_number']}: the try ended {extract['state']} "
        f"{(extract_end or terminated_at) - terminated_at:.1f}s later on {extract['hostname']}; "
        f"{worker} exited with {exit_code} {exited_at - terminated_at:.1f}s after the SIGTERM"
    )
    cluster.report["3_worker_sigterm"] = {
        "terminated": worker,
        "extract_try": ti["try_number"],
        "extract_state": extract["state"],
        "extract_ended_after_s": round((extract_end or terminated_at) - terminated_at, 1),
        "worker_exit_code": exit_code,
        "worker_exited_after_s": round(exited_at - terminated_at, 1),
        "tries": {t["task_id"]: t["try_number"] for t in api.task_instances(SYNC, run_id)},
    }

    assert extract["state"] == "success", extract
    assert extract["hostname"] == ti["hostname"], "the extract must finish on the worker it started on"
    assert task_instance(api, SYNC, run_id, "extract_stage")["try_number"] == ti["try_number"], "run twice"
    assert extract_end is not None, extract
    assert extract_end <= exited_at, "the worker exited before its task ended"
    assert exit_code == 0, f"warm shutdown should exit 0, got {exit_code}"
    # One try, fetched once: page 1 was requested a single time.
    assert cluster.upstream.page_requests(ORDERS_PATH).get(1) == 1, cluster.upstream.page_requests(
        ORDERS_PATH
    )
    assert finished["state"] == "success", task_states(api, SYNC, run_id)
    with cluster.warehouse() as conn:
        interval_exact(conn, SYNC, start, end, VOLUMES)
    poll_until(
        lambda: stack.process(worker).restarts == restarts_before + 1 and stack.process(worker).running,
        timeout=30,
        interval=0.5,
        what=f"{worker} restarted",
    )
    assert stack.process(worker).last_exit_code == exit_code
    wait_for_workers(stack)


# --- 4. the broker stops while tasks wait in it -----------------------------------------------------


def test_broker_restarts_lose_no_queued_task(cluster: Cluster) -> None:
    api, stack = cluster.api, cluster.stack
    pace(cluster.upstream, BROKER_PAGE_DELAY)
    first = datetime(2026, 5, 1, 2, tzinfo=UTC)
    intervals = [(first + timedelta(days=d), first + timedelta(days=d + 1)) for d in range(BROKER_INTERVALS)]
    backfill = api.create_backfill(backfill_body(intervals, max_active_runs=BROKER_INTERVALS))
    stops: list[dict[str, Any]] = []

    seen: set[QueuedTask] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):

        def waiting_now(seen: frozenset[QueuedTask] = frozenset(seen)) -> list[QueuedTask]:
            """Messages no worker has taken yet (more runnable tasks than the workers' slots), among
            them at least one the earlier stop did not see: published to the restarted broker."""
            found = [t for t in queued_tasks(cluster.broker_url) if t.dag_id == SYNC]
            return found if set(found) - seen else []

        waiting = poll_until(
            waiting_now, timeout=RUN_TIMEOUT, interval=0.2, what="new task messages waiting in the broker"
        )
        seen.update(waiting)
        stops.append(stop_broker(stack, sig, waiting))

    wait_for_backfill(api, backfill["id"])
    runs = backfill_runs(api, intervals)
    tries = {}
    for stop in stops:
        for task in stop["waiting"]:
            ti = task_instance(api, SYNC, task.run_id, task.task_id)
            tries[(task.run_id, task.task_id)] = (task.try_number, ti["try_number"], ti["state"])
    extra_tries = {key: t for key, t in tries.items() if t[1] != t[0]}
    all_tries = Counter(
        ti["try_number"] for run in runs for ti in api.task_instances(SYNC, run["dag_run_id"])
    )
    print(
        "\n"
        + format_table(
            [
                (
                    s["signal"],
                    len(s["waiting"]),
                    s["queues"],
                    s["waiting_read_back_after_restart"],
                    s["down_s"],
                    s["exit_code"],
                )
                for s in stops
            ],
            ("broker stopped with", "tasks waiting", "queues", "still there after restart", "down s", "exit"),
        )
        + f"\nwaiting tasks that needed another try: {extra_tries or 'none'}; tries of all tasks: {dict(all_tries)}"
    )
    unacked_left = unacknowledged(cluster.broker_url)
    print(
        f"messages left unacknowledged in the broker (redelivered after the visibility timeout): {unacked_left}"
    )
    cluster.report["4_broker_restarts"] = {
        "unacked_messages_left": unacked_left,
        "stops": [
            {k: v for k, v in s.items() if k != "waiting"} | {"tasks_waiting": len(s["waiting"])}
            for s in stops
        ],
        "waiting_tasks_with_extra_try": {f"{r} {t}": v for (r, t), v in extra_tries.items()},
        "tries_of_all_tasks": dict(all_tries),
    }

    assert [r["state"] for r in runs] == ["success"] * BROKER_INTERVALS, [
        (r["dag_run_id"], r["state"], task_states(api, SYNC, r["dag_run_id"])) for r in runs
    ]
    # Every task that waited in the broker when it stopped ran, and succeeded.
    assert {state for _, _, state in tries.values()} == {"success"}, tries
    with cluster.warehouse() as conn:
        for start, end in intervals:
            interval_exact(conn, SYNC, start, end, VOLUMES)
    assert stack.process("broker").restarts == 2
    assert all(stack.process(name).running for name in (*AIRFLOW_COMPONENTS, "broker")), stack.log_tails()
    wait_for_workers(stack)


# --- 5. one rate limit across the cluster -----------------------------------------------------------------


def test_the_sources_rate_limit_holds_across_both_workers(cluster: Cluster) -> None:
    from batchkit.extract.ratelimit import max_in_any_window

    api = cluster.api
    pace(cluster.upstream, 0)  # unpaced: without the shared limit 4 extracts would far exceed RATE
    first = datetime(2026, 6, 1, 2, tzinfo=UTC)
    intervals = [(first + timedelta(days=d), first + timedelta(days=d + 1)) for d in range(RATE_INTERVALS)]

    runs = run_backfill(api, intervals, max_active_runs=RATE_INTERVALS)

    extracts = [task_instance(api, SYNC, run["dag_run_id"], "extract_stage") for run in runs]
    spans = sorted(
        (parse_time(ti["start_date"]), parse_time(ti["end_date"]), ti["hostname"]) for ti in extracts
    )
    overlapping_hosts = {
        frozenset((a[2], b[2]))
        for a, b in zip(spans, spans[1:], strict=False)
        if b[0] < a[1] and a[2] != b[2]
    }
    assert overlapping_hosts, f"no two extracts ran at once on different workers: {spans}"
    arrivals = cluster.upstream.arrivals(ORDERS_PATH)
    assert len(arrivals) >= RATE_INTERVALS * PAGES
    busiest = max_in_any_window(arrivals, 1.0)
    throughput = (len(arrivals) - 1) / (max(arrivals) - min(arrivals))
    cluster.report["rate_limit"] = {
        "declared": {"requests_per_second": RATE, "burst": BURST},
        "requests": len(arrivals),
        "max_requests_in_any_1s_window": busiest,
        "mean_requests_per_s": round(throughput, 2),
        "concurrent_extracts_on": sorted(sorted(pair) for pair in overlapping_hosts),
    }
    # GCRA lets RATE + BURST - 1 slots fall in one second; a request leaves a little after its slot, by a
    # varying delay, so two slots 1 s apart can land in the same second at the server: RATE + BURST.
    assert busiest <= RATE + BURST, (
        f"{busiest} requests in one second at the upstream; the connection allows {RATE}/s, burst {BURST}"
    )
    assert throughput <= RATE * 1.05, f"mean {throughput:.1f} requests/s over the declared {RATE}/s"


def stop_broker(stack: AirflowStack, sig: signal.Signals, waiting: list[QueuedTask]) -> dict[str, Any]:
    """Stop the broker with `sig` and wait until the supervisor has it answering again."""
    assert stack.celery is not None
    assert stack.celery.embedded_broker is not None
    broker = stack.process("broker")
    incarnation, restarts = broker.popen, broker.restarts
    stopped_at = time.monotonic()
    os.kill(incarnation.pid, sig)
    incarnation.wait(timeout=30)
    poll_until(
        lambda: broker.restarts == restarts + 1 and stack.celery.embedded_broker.ping(),
        timeout=60,
        interval=0.1,
        what="the broker restarted",
    )
    # Read back from the restarted broker at once; a worker that reconnected first may have taken some.
    read_back = set(queued_tasks(stack.celery.broker_url))
    return {
        "signal": sig.name,
        "exit_code": incarnation.returncode,
        "down_s": round(time.monotonic() - stopped_at, 1),
        "queues": dict(Counter(t.queue for t in waiting)),
        "waiting_read_back_after_restart": sum(t in read_back for t in waiting),
        "waiting": waiting,
    }


# --- helpers -------------------------------------------------------------------------------------------


def running_extract(cluster: Cluster, run_id: str, start: datetime, end: datetime) -> dict:
    """The run's extract_stage once its first try runs and has committed two pages (of PAGES)."""
    ti = wait_for_try(cluster.api, SYNC, run_id, "extract_stage", after=0, timeout=RUN_TIMEOUT)
    with cluster.warehouse() as conn:
        poll_until(
            lambda: progress(conn, SYNC, start, end)[0] >= 2,
            timeout=60,
            interval=0.1,
            what="extract page 2",
        )
        pages, state = progress(conn, SYNC, start, end)
    assert state == "in_progress", f"the extract is not mid-way: {pages} pages, {state}"
    assert pages < PAGES, f"the extract is not mid-way: {pages} pages, {state}"
    running = task_instance(cluster.api, SYNC, run_id, "extract_stage")
    assert (running["state"], running["try_number"]) == ("running", ti["try_number"]), running
    return running


def backfill_body(intervals: list[tuple[datetime, datetime]], *, max_active_runs: int) -> dict:
    return {
        "dag_id": SYNC,
        "from_date": intervals[0][0].isoformat(),
        "to_date": intervals[-1][0].isoformat(),
        "reprocess_behavior": "none",
        "max_active_runs": max_active_runs,
    }


def wait_for_backfill(api: AirflowApi, backfill_id: int) -> None:
    poll_until(
        lambda: api.backfill(backfill_id)["completed_at"],
        timeout=RUN_TIMEOUT * 2,
        interval=2,
        what=f"backfill {backfill_id} to complete",
    )


def backfill_runs(api: AirflowApi, intervals: list[tuple[datetime, datetime]]) -> list[dict]:
    """The backfill runs of `intervals`, oldest first; asserts there is exactly one per interval."""
    first, last = intervals[0][0], intervals[-1][0]
    runs = sorted(
        (
            r
            for r in api.dag_runs(SYNC, run_type="backfill")
            if first <= parse_time(r["logical_date"]) <= last
        ),
        key=lambda r: r["logical_date"],
    )
    assert [interval_of(r) for r in runs] == intervals
    return runs


def run_backfill(
    api: AirflowApi, intervals: list[tuple[datetime, datetime]], *, max_active_runs: int
) -> list[dict]:
    backfill = api.create_backfill(backfill_body(intervals, max_active_runs=max_active_runs))
    wait_for_backfill(api, backfill["id"])
    runs = backfill_runs(api, intervals)
    assert [r["state"] for r in runs] == ["success"] * len(intervals), [
        (r["dag_run_id"], r["state"], task_states(api, SYNC, r["dag_run_id"])) for r in runs
    ]
    return runs


def wait_for_workers(stack: AirflowStack) -> None:
    """Every worker answers a Celery ping (a restarted one has connected to the broker again)."""
    assert stack.celery is not None
    expected = {w.node_name() for w in stack.celery.workers}
    poll_until(
        lambda: expected <= stack.celery.responding_workers(),
        timeout=120,
        interval=1,
        what=f"workers {sorted(expected)} answering",
    )
