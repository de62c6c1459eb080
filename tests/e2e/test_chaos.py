"""Chaos: rerun anything, lose nothing, duplicate nothing (issue 9).

One supervised stack (api-server, scheduler, dag-processor, triggerer; `AirflowStack.start(supervise=True)`)
over a Postgres of its own (an embedded server in a temp dir holding the metadata DB AND the warehouse,
so crashing it disturbs nothing else of the test session), and the demo upstream serving CHAOS_RECORDS
orders per day (200,000 by default), synced by tests/fixtures/dags_chaos/chaos_orders_sync (sales_orders_sync
with 2-5 s retry delays and 8 retries, pages of 2,000).

Scenarios, each on its own data interval(s):
  1. SIGKILL the task process at CHAOS_KILLS points (seeded by CHAOS_SEED) across extract and merge.
  2. Crash-restart Postgres (`pg_ctl -m immediate`) mid-extract and between stage and merge.
  3. SIGKILL a task supervisor, then the scheduler's and the triggerer's process groups, mid-backfill.
  4. A run misses its deadline: exactly one deadline alert, no component down.
  5. An upstream outage longer than the retry budget: one task_failed alert; a clear then loads the
     interval exactly.
Each sync scenario asserts: the run succeeded, the interval's rows equal the rows the upstream serves
(md5 over the ordered rows against a reference table loaded from tools.demo_upstream.select), no
duplicate keys, and received = staged + quarantined in batch_meta.checkpoints.

`make chaos` runs the same module longer (CHAOS_RECORDS=600000 CHAOS_KILLS=10 ...). The summary table is
printed at the end and written to test-artifacts/chaos/summary.json; docs/reliability.md explains it.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batchkit.migrations import migrate
from batchkit.sql_files import apply_sql_file
from tests.e2e.chaos_support import (
    CrashablePostgres,
    TableFacts,
    diff_counts,
    format_table,
    interval_exact,
    interval_of,
    merge_statements,
    parse_time,
    poll_until,
    progress,
    retry_timing,
    settle_scheduled_run,
    sigkill,
    sigkill_group,
    task_instance,
    task_process,
    task_state,
    task_states,
    task_supervisor,
    wait_for_run,
    wait_for_try,
    wait_for_try_end,
    write_json,
)
from tests.upstream import Upstream, running_upstream
from tools import REPO_ROOT
from tools.airflow_api import AirflowApi, wait_for
from tools.airflow_env import ADMIN_USER
from tools.demo_upstream import DEFAULT_PER_DAY, Volumes
from tools.metadb import DatabaseRole, provision_database
from tools.stack import AIRFLOW_COMPONENTS, AirflowStack

pytestmark = pytest.mark.e2e

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "dags_chaos"
DEADLINE_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "dags_ops" / "deadline_overrun_probe.py"
SUMMARY_PATH = REPO_ROOT / "test-artifacts" / "chaos" / "summary.json"

SYNC = "chaos_orders_sync"  # 8 retries, 2 s first delay, capped at 5 s
OUTAGE = "chaos_orders_outage"  # 2 retries, 1 s first delay
DEADLINE_PROBE = "deadline_overrun_probe"
PAGE_SIZE = 2000  # both fixtures' page_size

RECORDS = int(os.environ.get("CHAOS_RECORDS", "200000"))
KILLS = int(os.environ.get("CHAOS_KILLS", "5"))
SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 1_000_000))
BACKFILL_INTERVALS = int(os.environ.get("CHAOS_BACKFILL_INTERVALS", "3"))
PG_DOWN_SECONDS = float(os.environ.get("CHAOS_PG_DOWN_SECONDS", "3"))
# Seconds the upstream waits before answering each page (its `slow` fault): an extract takes at least
# pages x this, so a poller sees every page boundary (unpaced, 100 pages come in ~3 s here).
PAGE_DELAY = float(os.environ.get("CHAOS_PAGE_DELAY", "0.05"))
# Detection settings of the chaos stack (docs/reliability.md): a task whose supervisor is gone is failed
# by the scheduler after HEARTBEAT_TIMEOUT s without a heartbeat, checked every DETECTION_INTERVAL s.
HEARTBEAT_TIMEOUT = 30
DETECTION_INTERVAL = 5
ORPHAN_CHECK_INTERVAL = 30
DETECTION_SLACK = 10
RUN_TIMEOUT = float(os.environ.get("CHAOS_RUN_TIMEOUT", str(240 + RECORDS / 2000)))
VOLUMES = Volumes(orders=RECORDS, customers=DEFAULT_PER_DAY["customers"])
PAGES = math.ceil(RECORDS / PAGE_SIZE)
assert RECORDS >= 20 * PAGE_SIZE, "CHAOS_RECORDS must give at least 20 pages to kill between"
assert KILLS >= 2, "CHAOS_KILLS must allow at least one extract and one merge kill"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Chaos:
    stack: AirflowStack
    api: AirflowApi
    upstream: Upstream
    postgres: CrashablePostgres
    warehouse_conninfo: str
    report: dict[str, Any] = field(default_factory=dict)

    def warehouse(self) -> psycopg.Connection:
        return psycopg.connect(self.warehouse_conninfo, autocommit=True)


@pytest.fixture(scope="module")
def chaos(request: pytest.FixtureRequest) -> Iterator[Chaos]:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    postgres = CrashablePostgres(root / "pgdata")
    server = postgres.start()
    stack: AirflowStack | None = None
    report: dict[str, Any] = {
        "seed": SEED,
        "records_per_interval": RECORDS,
        "pages_per_interval": PAGES,
        "kills_requested": KILLS,
        "machine": {"cpus": os.cpu_count()},
        "settings": {
            "task_instance_heartbeat_timeout_s": HEARTBEAT_TIMEOUT,
            "task_instance_heartbeat_timeout_detection_interval_s": DETECTION_INTERVAL,
            "orphaned_tasks_check_interval_s": ORPHAN_CHECK_INTERVAL,
            "retry_delay_s": "2 (doubling, max 5)",
            "retries": 8,
            "postgres_down_s": PG_DOWN_SECONDS,
            "upstream_page_delay_s": PAGE_DELAY,
        },
        "scenarios": {},
    }
    print(f"\nchaos: CHAOS_SEED={SEED} CHAOS_RECORDS={RECORDS} CHAOS_KILLS={KILLS} pages={PAGES}", flush=True)
    try:
        # Each database has a role of its own, as under `make run` (tools.metadb.provision_database): Airflow
        # logs in as the metadata role, tasks as the warehouse role; the test watches as the superuser.
        metadata = provision_database(
            server, "airflow", DatabaseRole("chaos_meta", secrets.token_urlsafe(16))
        )
        warehouse = provision_database(
            server, "warehouse", DatabaseRole("chaos_wh", secrets.token_urlsafe(16))
        )
        with psycopg.connect(warehouse.conninfo("warehouse"), autocommit=True) as conn:
            # The control tables at the latest version, as `make run` and airflow-init leave them; the sync
            # creates its target itself, created up front here so the pollers can read it from the start.
            migrate(conn)
            apply_sql_file(conn, "sql/targets/sales_orders.sql")
        dags = root / "dags"
        dags.mkdir()
        for source in (*FIXTURES.glob("*.py"), *FIXTURES.glob("*.yaml"), DEADLINE_FIXTURE):
            shutil.copy(source, dags)
        with running_upstream("--orders-per-day", str(RECORDS)) as upstream:
            stack = AirflowStack(
                airflow_home=root / "airflow-home",
                sql_alchemy_conn=metadata.sqlalchemy_url("airflow"),
                dags_folder=dags,
                api_port=free_port(),
                extra_env={
                    "AIRFLOW_CONN_DEMO_API": upstream.connection_json(),
                    "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps(
                        {"conn_type": "http", "host": f"{upstream.url}/alerts"}
                    ),
                    "AIRFLOW_CONN_WAREHOUSE": warehouse.airflow_connection_json("warehouse"),
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(
                        DETECTION_INTERVAL
                    ),
                    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": str(ORPHAN_CHECK_INTERVAL),
                },
            )
            stack.prepare(settings_file=None)
            stack.start(supervise=True)
            stack.wait_healthy()
            api = AirflowApi(stack.api_url, ADMIN_USER, stack.admin_password())
            for name, slots in {"demo_api": 3, "warehouse": 4}.items():
                api.request("POST", "/pools", json={"name": name, "slots": slots})
            for dag_id in (SYNC, OUTAGE, DEADLINE_PROBE):
                api.wait_for_dag(dag_id)
                api.set_paused(dag_id, False)
            for dag_id in (SYNC, OUTAGE):
                settle_scheduled_run(api, dag_id)
            report["stack_ready_s"] = round(time.monotonic() - started, 1)
            yield Chaos(stack, api, upstream, postgres, server.conninfo("warehouse"), report)
    finally:
        report["module_s"] = round(time.monotonic() - started, 1)
        try:
            if stack is not None:
                report["component_restarts"] = stack.restart_counts()
                stack.stop()
        finally:
            try:
                postgres.stop()
            finally:
                shutil.rmtree(root, ignore_errors=True)
        write_json(SUMMARY_PATH, report)
        # Printed past pytest's output capture, so `make test` and `make chaos` show it too.
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(f"\n{summary_text(report)}\n(also in {SUMMARY_PATH})", flush=True)


def pace(upstream: Upstream) -> None:
    """Zero the upstream's counters and slow every orders page by PAGE_DELAY seconds."""
    upstream.reset()
    upstream.set_faults({"kind": "slow", "delay": PAGE_DELAY, "path": "/v1/cursor/orders", "times": None})


# --- 4. deadline (first: its task sleeps 20 s while the next scenario runs) -------------------------------


def test_missed_deadline_alerts_once_and_no_component_goes_down(chaos: Chaos) -> None:
    api, upstream, stack = chaos.api, chaos.upstream, chaos.stack
    restarts_before = stack.restart_counts()
    run_id = api.trigger(DEADLINE_PROBE, logical_date=None)["dag_run_id"]

    wait_for(lambda: deadline_alerts(upstream, run_id), timeout=90, what="the deadline_missed alert")
    time.sleep(5)  # a second alert (a re-run callback after a triggerer crash) would come within this

    alerts = deadline_alerts(upstream, run_id)
    assert len(alerts) == 1, alerts
    assert all(stack.process(name).running for name in AIRFLOW_COMPONENTS), stack.log_tails()
    assert stack.restart_counts() == restarts_before, stack.log_tails()
    stack.wait_healthy(timeout=30)
    chaos.report["scenarios"]["4_deadline"] = {
        "deadline_alerts": len(alerts),
        "component_restarts": diff_counts(stack.restart_counts(), restarts_before),
        "passed": True,
    }


# --- 1. SIGKILL the task process during extract and merge ----------------------------------------------


def test_killed_task_processes_resume_from_the_checkpoint(chaos: Chaos) -> None:
    api, upstream = chaos.api, chaos.upstream
    rng = random.Random(SEED)
    merge_kills = max(1, KILLS * 2 // 5)
    extract_kills = KILLS - merge_kills
    # Distinct pages spread over the extract, not the first few or the last few (a kill must land on a
    # page boundary the poller sees before the extract ends).
    points = sorted(rng.sample(range(max(2, PAGES // 20), PAGES - max(3, PAGES // 10)), extract_kills))
    print(f"\nchaos seed {SEED}: kill the extract at pages {points} of {PAGES}, the merge {merge_kills}x")
    pace(upstream)
    run = api.trigger(SYNC, logical_date="2026-03-02T02:00:00Z")
    run_id = run["dag_run_id"]
    start, end = interval_of(run)
    kills: list[dict[str, Any]] = []

    with chaos.warehouse() as conn:
        last_try = 0
        for point in points:
            ti = wait_for_try(api, SYNC, run_id, "extract_stage", after=last_try, timeout=RUN_TIMEOUT)
            proc = task_process(ti["id"])
            poll_until(
                lambda point=point: progress(conn, SYNC, start, end)[0] >= point,
                timeout=RUN_TIMEOUT,
                interval=0.03,
                what=f"extract page {point}",
            )
            state = progress(conn, SYNC, start, end)
            assert state[1] == "in_progress", f"the extract finished before page {point} could be killed"
            killed_at = sigkill(proc)
            kills.append(
                {
                    "phase": "extract",
                    "point": f"page {point}",
                    "pages_done_at_kill": state[0],
                    "try": ti["try_number"],
                    "killed_at": killed_at,
                }
            )
            last_try = ti["try_number"]

        last_try = 0
        orphaned: set[int] = set()  # backends of killed merges, which finish their statement first
        for number in range(merge_kills):
            ti = wait_for_try(api, SYNC, run_id, "merge", after=last_try, timeout=RUN_TIMEOUT)
            proc = task_process(ti["id"])
            statements = poll_until(
                lambda: [s for s in merge_statements(conn) if s[0] not in orphaned],
                timeout=RUN_TIMEOUT,
                interval=0.01,
                what="the merge statement",
            )
            killed_at = sigkill(proc)
            orphaned.update(pid for pid, _ in statements)
            kills.append(
                {
                    "phase": "merge",
                    "point": f"merge #{number + 1}: {statements[0][1][:40]}",
                    "try": ti["try_number"],
                    "killed_at": killed_at,
                }
            )
            last_try = ti["try_number"]

    finished = wait_for_run(api, SYNC, run_id, RUN_TIMEOUT)
    for kill in kills:
        task_id = "extract_stage" if kill["phase"] == "extract" else "merge"
        timing = retry_timing(api, SYNC, run_id, task_id, kill["try"], kill["killed_at"])
        kill.update(timing)
    print(
        format_table(
            [
                (k["phase"], k["point"], k["try"], k.get("detected_s"), k.get("retry_started_s"))
                for k in kills
            ],
            ("phase", "kill point", "try killed", "kill->try failed s", "kill->next try started s"),
        )
    )

    assert finished["state"] == "success", task_states(api, SYNC, run_id)
    facts = assert_interval_exact(chaos, SYNC, start, end)
    # Resumed, not restarted: page 1 was fetched once, and each extract kill cost at most the page in
    # flight, however many times the task was killed.
    requests = upstream.page_requests("/v1/cursor/orders")
    assert requests.get(1) == 1, requests
    refetched = sum(requests.values()) - PAGES
    # At a kill, the page being committed and the one fetched ahead (cursor pages are prefetched one
    # ahead) are lost: at most two pages fetched again per extract kill.
    assert 0 <= refetched <= 2 * extract_kills, requests
    assert all(k["retry_started_s"] is not None for k in kills), kills
    assert task_failed_alerts(upstream, SYNC) == []
    chaos.report["scenarios"]["1_task_kills"] = {
        "seed": SEED,
        "kills": [{k: v for k, v in kill.items() if k != "killed_at"} for kill in kills],
        "kills_survived": len(kills),
        "pages_refetched": refetched,
        "rows": facts.rows,
        "rows_lost": 0,
        "duplicates": facts.duplicates,
        "bound": "retry_delay (2 s, doubling, max_retry_delay 5 s) + scheduler loop + task start-up",
        "passed": True,
    }


# --- 2. crash-restart Postgres mid-extract and between stage and merge ---------------------------------


def test_postgres_crash_restarts_mid_extract_and_between_stage_and_merge(chaos: Chaos) -> None:
    api, stack = chaos.api, chaos.stack
    restarts_before = stack.restart_counts()
    pace(chaos.upstream)
    run = api.trigger(SYNC, logical_date="2026-03-04T02:00:00Z")
    run_id = run["dag_run_id"]
    start, end = interval_of(run)
    crashes = []

    with chaos.warehouse() as conn:
        poll_until(
            lambda: progress(conn, SYNC, start, end)[0] >= PAGES // 3,
            timeout=RUN_TIMEOUT,
            interval=0.05,
            what=f"extract page {PAGES // 3}",
        )
        at_crash = progress(conn, SYNC, start, end)
    assert at_crash[1] == "in_progress", f"the extract finished before the crash: {at_crash}"
    crash = chaos.postgres.crash_restart(PG_DOWN_SECONDS)
    crash["pages_done_at_crash"] = at_crash[0]
    crash["point"] = f"mid-extract (page >= {PAGES // 3})"
    crash["recovered_s"] = seconds_until_healthy(stack, crash["stopped_at"])
    crashes.append(crash)

    poll_until(
        lambda: task_state(api, SYNC, run_id, "extract_stage") == "success",
        timeout=RUN_TIMEOUT,
        interval=0.2,
        what="extract_stage to succeed",
    )
    crash = chaos.postgres.crash_restart(PG_DOWN_SECONDS)
    crash["point"] = "between stage and merge (extract_stage just succeeded)"
    crash["merge_state_at_crash"] = task_state(api, SYNC, run_id, "merge")
    crash["recovered_s"] = seconds_until_healthy(stack, crash["stopped_at"])
    crashes.append(crash)

    finished = wait_for_run(api, SYNC, run_id, RUN_TIMEOUT)
    print(
        format_table(
            [(c["point"], c["down_s"], c["recovered_s"]) for c in crashes],
            ("Postgres crash", "down s", "crash->stack healthy s"),
        )
    )

    assert finished["state"] == "success", (task_states(api, SYNC, run_id), stack.log_tails())
    facts = assert_interval_exact(chaos, SYNC, start, end)
    restarts = diff_counts(stack.restart_counts(), restarts_before)
    assert all(stack.process(name).running for name in AIRFLOW_COMPONENTS), stack.log_tails()
    stack.wait_healthy(timeout=60)
    assert task_failed_alerts(chaos.upstream, SYNC) == []
    chaos.report["scenarios"]["2_postgres_restarts"] = {
        "crashes": [{k: v for k, v in c.items() if not k.endswith("_at")} for c in crashes],
        "restarts_survived": len(crashes),
        "component_restarts": restarts,
        "tries": {ti["task_id"]: ti["try_number"] for ti in api.task_instances(SYNC, run_id)},
        # Pages fetched for the interval: more than its pages when a crash emptied the UNLOGGED staging
        # and the interval was fetched again (by extract_stage's retry, or by verify/merge re-staging).
        "pages_fetched": sum(chaos.upstream.page_requests("/v1/cursor/orders").values()),
        # Which task logs record the lost staging being fetched again (batchkit.sync's restage).
        "restaged_in": task_logs_with(stack, SYNC, run_id, "sync_restaging_interval"),
        "rows": facts.rows,
        "rows_lost": 0,
        "duplicates": facts.duplicates,
        "passed": True,
    }


# --- 3. kill a task supervisor, the scheduler and the triggerer mid-backfill -----------------------------


def test_backfill_survives_killed_supervisor_scheduler_and_triggerer(chaos: Chaos) -> None:
    api, stack = chaos.api, chaos.stack
    restarts_before = stack.restart_counts()
    pace(chaos.upstream)
    first = datetime(2026, 3, 10, 2, tzinfo=UTC)
    last = first + timedelta(days=BACKFILL_INTERVALS - 1)
    backfill = api.create_backfill(
        {
            "dag_id": SYNC,
            "from_date": first.isoformat(),
            "to_date": last.isoformat(),
            "reprocess_behavior": "none",
            "max_active_runs": BACKFILL_INTERVALS,
        }
    )
    intervals = [
        (first + timedelta(days=d), first + timedelta(days=d + 1)) for d in range(BACKFILL_INTERVALS)
    ]
    events: list[dict[str, Any]] = []

    # (a) a task supervisor, while the scheduler lives: found only by the missing heartbeats.
    run, ti = wait_for_running_extract(
        api, first, last, min_pages=PAGES // 5, conninfo=chaos.warehouse_conninfo
    )
    supervisor = task_supervisor(ti["id"])
    killed_at = sigkill(supervisor)
    detected = wait_for_try_end(
        api, SYNC, run["dag_run_id"], "extract_stage", ti["try_number"], timeout=HEARTBEAT_TIMEOUT * 4
    )
    events.append(
        {
            "killed": "task supervisor (LocalExecutor worker)",
            "try": ti["try_number"],
            "detected_s": round(detected - killed_at, 1),
            "bound_s": HEARTBEAT_TIMEOUT + DETECTION_INTERVAL,
        }
    )

    # (b) the scheduler's and the triggerer's process groups (the executor's workers and the task
    # supervisors go with the scheduler's; the task processes sit in groups of their own).
    running = poll_until(
        lambda: running_tasks(api, first, last), timeout=60, interval=0.5, what="a running backfill task"
    )
    killed_at = sigkill_group(stack.process("scheduler").popen.pid)
    sigkill_group(stack.process("triggerer").popen.pid)
    for name in ("scheduler", "triggerer"):
        poll_until(
            lambda name=name: (
                stack.process(name).restarts > restarts_before[name] and stack.process(name).running
            ),
            timeout=120,
            interval=0.5,
            what=f"{name} restarted",
        )
    healthy_s = seconds_until_healthy(stack, killed_at)
    events.append(
        {
            "killed": "scheduler + triggerer process groups",
            "restarted_s": {
                n: round(stack.process(n).last_restart_at - killed_at, 1) for n in ("scheduler", "triggerer")
            },
            "healthy_s": healthy_s,
            "tasks_running_at_kill": len(running),
        }
    )
    for r, t in running:
        end_at = wait_for_try_end(
            api, SYNC, r["dag_run_id"], t["task_id"], t["try_number"], timeout=HEARTBEAT_TIMEOUT * 4 + 60
        )
        events.append(
            {
                "killed": f"(task of the killed scheduler) {t['task_id']} {r['logical_date'][:10]}",
                "try": t["try_number"],
                "detected_s": round(end_at - killed_at, 1),
                # ... after a scheduler is running and healthy again.
                "bound_s": round(healthy_s + HEARTBEAT_TIMEOUT + DETECTION_INTERVAL, 1),
            }
        )

    wait_for(
        lambda: api.backfill(backfill["id"])["completed_at"],
        timeout=RUN_TIMEOUT * 2,
        interval=3,
        what=f"backfill {backfill['id']} to complete",
    )
    runs = sorted(
        (
            r
            for r in api.dag_runs(SYNC, run_type="backfill")
            if first <= parse_time(r["logical_date"]) <= last
        ),
        key=lambda r: r["logical_date"],
    )
    print(
        format_table(
            [
                (e["killed"], e.get("try"), e.get("detected_s"), e.get("restarted_s"), e.get("healthy_s"))
                for e in events
            ],
            ("killed", "try", "kill->try failed s", "restarted s", "healthy s"),
        )
    )

    assert [r["state"] for r in runs] == ["success"] * BACKFILL_INTERVALS, [
        (r["dag_run_id"], r["state"], task_states(api, SYNC, r["dag_run_id"])) for r in runs
    ]
    assert [interval_of(r) for r in runs] == intervals
    rows = duplicates = 0
    for start, end in intervals:
        facts = assert_interval_exact(chaos, SYNC, start, end)
        rows, duplicates = rows + facts.rows, duplicates + facts.duplicates
    assert all(stack.process(name).running for name in AIRFLOW_COMPONENTS), stack.log_tails()
    for event in events:
        if "detected_s" in event:
            # Detection is bounded by the heartbeat timeout + its check interval (for the tasks of the
            # killed scheduler, counted from when a scheduler is healthy again), + DETECTION_SLACK for a
            # scheduler loop and the REST polling on a loaded 2-core machine.
            assert event["detected_s"] <= event["bound_s"] + DETECTION_SLACK, events
    assert task_failed_alerts(chaos.upstream, SYNC) == []
    chaos.report["scenarios"]["3_backfill_component_kills"] = {
        "intervals": BACKFILL_INTERVALS,
        "events": events,
        "component_restarts": diff_counts(stack.restart_counts(), restarts_before),
        "rows": rows,
        "rows_lost": 0,
        "duplicates": duplicates,
        "passed": True,
    }


# --- 5. upstream outage past the retry budget, then clear ------------------------------------------------


def test_outage_past_the_retries_alerts_once_and_a_clear_loads_the_interval(chaos: Chaos) -> None:
    api, upstream = chaos.api, chaos.upstream
    upstream.reset()
    # Every request fails, with Retry-After: 0 so the in-task retries spend no time waiting.
    upstream.set_faults(
        {"kind": "status", "status": 503, "path": "/v1/cursor/orders", "times": None, "retry_after": 0}
    )
    outage_started = time.monotonic()
    run = api.trigger(OUTAGE, logical_date="2026-03-20T02:00:00Z")
    run_id = run["dag_run_id"]
    start, end = interval_of(run)

    failed = wait_for_run(api, OUTAGE, run_id, RUN_TIMEOUT)
    failed_after = time.monotonic() - outage_started
    assert failed["state"] == "failed", task_states(api, OUTAGE, run_id)
    states = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in api.task_instances(OUTAGE, run_id)}
    assert states["extract_stage"] == ("failed", 3), states  # the first try and both retries
    wait_for(lambda: task_failed_alerts(upstream, OUTAGE), timeout=30, what="the task_failed alert")
    time.sleep(3)  # a second alert, if any, would come from the same callback within this time
    (alert,) = task_failed_alerts(upstream, OUTAGE)
    assert (alert["task_id"], alert["run_id"], alert["try_number"]) == ("extract_stage", run_id, 3)
    assert "503" in alert["error"]

    upstream.set_faults()  # the outage ends
    outage_s = time.monotonic() - outage_started
    api.clear_task_instances(
        OUTAGE,
        {
            "dag_run_id": run_id,
            "dry_run": False,
            "only_failed": True,
            "include_downstream": True,
            "reset_dag_runs": True,
            "task_ids": ["extract_stage"],
        },
    )
    rerun = wait_for_run(api, OUTAGE, run_id, RUN_TIMEOUT)

    assert rerun["state"] == "success", task_states(api, OUTAGE, run_id)
    facts = assert_interval_exact(chaos, OUTAGE, start, end)
    assert len(task_failed_alerts(upstream, OUTAGE)) == 1
    chaos.report["scenarios"]["5_outage_then_clear"] = {
        "run_failed_after_s": round(failed_after, 1),
        "outage_s": round(outage_s, 1),
        "task_failed_alerts": 1,
        "rows": facts.rows,
        "rows_lost": 0,
        "duplicates": facts.duplicates,
        "passed": True,
    }


def test_afterwards_every_component_is_up_and_nothing_is_duplicated(chaos: Chaos) -> None:
    api, stack = chaos.api, chaos.stack
    probe_runs = api.dag_runs(DEADLINE_PROBE)
    assert [r["state"] for r in probe_runs] == ["success"], probe_runs
    assert len([a for a in chaos.upstream.alerts() if a.get("kind") == "deadline_missed"]) == 1
    assert all(stack.process(name).running for name in AIRFLOW_COMPONENTS), stack.log_tails()
    stack.wait_healthy(timeout=60)
    with chaos.warehouse() as conn:
        rows, keys = conn.execute("SELECT count(*), count(DISTINCT order_id) FROM sales.orders").fetchone()
        (staging_left,) = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'batch_meta' AND tablename LIKE 'stg_%'"
        ).fetchone()
    assert rows == keys
    chaos.report["warehouse"] = {
        "rows": rows,
        "duplicate_keys": rows - keys,
        "staging_tables_left": staging_left,
    }


# --- helpers -------------------------------------------------------------------------------------------


def assert_interval_exact(chaos: Chaos, dag_id: str, start: datetime, end: datetime) -> TableFacts:
    """The interval equals what the upstream serves, no duplicates, and the checkpoint reconciles."""
    with chaos.warehouse() as conn:
        return interval_exact(conn, dag_id, start, end, VOLUMES)


def running_extracts(api: AirflowApi, first: datetime, last: datetime) -> list[tuple[dict, dict]]:
    out = []
    for run in api.dag_runs(SYNC, run_type="backfill"):
        if first <= parse_time(run["logical_date"]) <= last and run["state"] == "running":
            ti = task_instance(api, SYNC, run["dag_run_id"], "extract_stage")
            if ti["state"] == "running":
                out.append((run, ti))
    return out


def running_tasks(api: AirflowApi, first: datetime, last: datetime) -> list[tuple[dict, dict]]:
    """(run, task instance) of every running task of the backfill's runs."""
    out = []
    for run in api.dag_runs(SYNC, run_type="backfill"):
        if first <= parse_time(run["logical_date"]) <= last and run["state"] == "running":
            out += [
                (run, ti) for ti in api.task_instances(SYNC, run["dag_run_id"]) if ti["state"] == "running"
            ]
    return out


def wait_for_running_extract(
    api: AirflowApi, first: datetime, last: datetime, *, min_pages: int, conninfo: str
) -> tuple[dict, dict]:
    """A backfill run whose extract is running and has committed at least `min_pages` pages."""
    with psycopg.connect(conninfo, autocommit=True) as conn:

        def candidate() -> tuple[dict, dict] | None:
            for run, ti in running_extracts(api, first, last):
                start, end = interval_of(run)
                pages, state = progress(conn, SYNC, start, end)
                if state == "in_progress" and pages >= min_pages:
                    return run, ti
            return None

        return poll_until(candidate, timeout=RUN_TIMEOUT, interval=0.3, what="a running backfill extract")


def seconds_until_healthy(
    stack: AirflowStack, since: float, timeout: float = 240, settle: float = 10
) -> float:
    """Wall-clock seconds from `since` until the stack has recovered: every component running, the
    health endpoint healthy with heartbeats written after `since`, and no component exiting for `settle`
    seconds afterwards (a component may notice the lost database only on its next loop)."""
    deadline = time.monotonic() + timeout
    while True:
        poll_until(
            lambda: all(stack.process(n).running for n in AIRFLOW_COMPONENTS),
            timeout=timeout,
            interval=0.5,
            what="every component running",
        )
        poll_until(
            lambda: fresh_health(stack, since),
            timeout=timeout,
            interval=0.5,
            what="healthy components with heartbeats after the fault",
        )
        recovered_at, restarts = time.time(), stack.restart_counts()
        time.sleep(settle)
        if stack.restart_counts() == restarts and all(stack.process(n).running for n in AIRFLOW_COMPONENTS):
            return round(recovered_at - since, 1)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stack kept restarting components: {stack.restart_counts()}")


def fresh_health(stack: AirflowStack, since: float) -> bool:
    """Every component healthy, and its heartbeat written after `since` (not a stale one from before)."""
    try:
        with urllib.request.urlopen(f"{stack.api_url}/api/v2/monitor/health", timeout=5) as resp:
            health = json.load(resp)
    except (OSError, ValueError):
        return False
    for key in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        part = health.get(key) or {}
        if part.get("status") != "healthy":
            return False
        beat = next((v for k, v in part.items() if k.startswith("latest_") and v), None)
        if key != "metadatabase" and (beat is None or parse_time(beat).timestamp() < since):
            return False
    return True


def task_failed_alerts(upstream: Upstream, dag_id: str) -> list[dict]:
    return [a for a in upstream.alerts() if a.get("kind") == "task_failed" and a.get("dag_id") == dag_id]


def deadline_alerts(upstream: Upstream, run_id: str) -> list[dict]:
    return [a for a in upstream.alerts() if a.get("kind") == "deadline_missed" and a.get("run_id") == run_id]


def task_logs_with(stack: AirflowStack, dag_id: str, run_id: str, text: str) -> list[str]:
    """`task_id/attempt=N.log` of the run's task logs that contain `text`."""
    logs = stack.airflow_home / "logs" / f"dag_id={dag_id}"
    found = []
    for run_dir in logs.iterdir() if logs.exists() else []:
        if run_dir.name == f"run_id={run_id}":
            for log in sorted(run_dir.glob("task_id=*/attempt=*.log")):
                if text in log.read_text(errors="replace"):
                    found.append(f"{log.parent.name.removeprefix('task_id=')}/{log.name}")
    return found


def summary_text(report: dict[str, Any]) -> str:
    scenarios = report.get("scenarios", {})
    rows = []
    kills = scenarios.get("1_task_kills", {})
    if kills:
        retry = [k["retry_started_s"] for k in kills["kills"] if k.get("retry_started_s") is not None]
        rows.append(
            (
                "1 task process SIGKILL (extract+merge)",
                kills["kills_survived"],
                "",
                kills["rows_lost"],
                kills["duplicates"],
                f"kill->retry start {min(retry)}-{max(retry)} s" if retry else "",
            )
        )
    pg = scenarios.get("2_postgres_restarts", {})
    if pg:
        rows.append(
            (
                "2 Postgres crash-restart",
                "",
                pg["restarts_survived"],
                pg["rows_lost"],
                pg["duplicates"],
                "crash->healthy " + ", ".join(f"{c['recovered_s']} s" for c in pg["crashes"]),
            )
        )
    bf = scenarios.get("3_backfill_component_kills", {})
    if bf:
        detected = [e["detected_s"] for e in bf["events"] if "detected_s" in e]
        restarted = next((e for e in bf["events"] if "restarted_s" in e), {})
        rows.append(
            (
                "3 supervisor/scheduler/triggerer kill",
                3,  # one task supervisor, the scheduler's and the triggerer's process groups
                sum(bf["component_restarts"].values()),
                bf["rows_lost"],
                bf["duplicates"],
                f"task detected {min(detected)}-{max(detected)} s; restarted {restarted.get('restarted_s')}"
                if detected
                else "",
            )
        )
    dl = scenarios.get("4_deadline", {})
    if dl:
        rows.append(
            (
                "4 missed deadline",
                "",
                "",
                "",
                "",
                f"{dl['deadline_alerts']} alert, restarts {dl['component_restarts']}",
            )
        )
    out = scenarios.get("5_outage_then_clear", {})
    if out:
        rows.append(
            (
                "5 upstream outage + clear",
                "",
                "",
                out["rows_lost"],
                out["duplicates"],
                f"{out['task_failed_alerts']} alert; failed after {out['run_failed_after_s']} s",
            )
        )
    for name in (
        "1_task_kills",
        "2_postgres_restarts",
        "3_backfill_component_kills",
        "4_deadline",
        "5_outage_then_clear",
    ):
        if name not in scenarios:
            rows.append((f"{name} (failed or not run)", "", "", "", "", ""))
    header = (
        "scenario",
        "kills survived",
        "restarts survived",
        "rows lost",
        "duplicates",
        "detection / notes",
    )
    return (
        f"chaos summary (seed {report['seed']}, {report['records_per_interval']} records/interval, "
        f"module {report.get('module_s')} s, {report['machine']['cpus']} CPUs)\n" + format_table(rows, header)
    )
