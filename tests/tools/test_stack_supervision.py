"""The stack supervisor on real short-lived processes: backoff, status file, Postgres wait, clean stop.

No Airflow component runs here (`components=()`); the supervised processes are tiny Python programs
given as `extra_processes`, so each test takes seconds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.metadb import PgServer
from tools.stack import AirflowStack, RestartPolicy, StackError, session_processes

EXIT_3 = [sys.executable, "-c", "import sys; sys.exit(3)"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# How late a supervision pass may notice that a restart is due when polled every POLL seconds.
POLL = 0.05
SLACK = 0.3


def make_stack(
    tmp_path: Path, pg_server: PgServer, processes: dict[str, list[str]], **kwargs
) -> AirflowStack:
    return AirflowStack(
        airflow_home=tmp_path / "home",
        sql_alchemy_conn=pg_server.sqlalchemy_url("postgres"),
        components=(),
        extra_processes=processes,
        **kwargs,
    )


def supervise_for(stack: AirflowStack, name: str, seconds: float) -> tuple[list[float], list[float]]:
    """Drive `supervise_once` for a while; return when each exit was noticed and each restart began."""
    proc = stack.process(name)
    noticed: list[float] = []
    restarted: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        restarts_before, pending_before = proc.restarts, proc.restart_due is not None
        stack.supervise_once()
        now = time.monotonic()
        if proc.restart_due is not None and not pending_before:
            noticed.append(now)
        if proc.restarts > restarts_before:
            restarted.append(now)
        time.sleep(POLL)
    return noticed, restarted


def test_exited_component_restarts_with_doubling_delays_and_status_file_records_it(
    tmp_path: Path, pg_server: PgServer
) -> None:
    policy = RestartPolicy(first_delay=0.2, max_delay=0.8, stable_after=60)
    stack = make_stack(tmp_path, pg_server, {"crasher": EXIT_3}, restart_policy=policy)
    stack.start()
    try:
        noticed, restarted = supervise_for(stack, "crasher", seconds=4.5)
    finally:
        stack.stop()

    delays = [r - n for n, r in zip(noticed, restarted, strict=False)]
    expected = [0.2, 0.4, 0.8, 0.8, 0.8]
    assert len(delays) >= len(expected), delays
    for measured, wanted in zip(delays, expected, strict=False):
        assert wanted - POLL <= measured <= wanted + SLACK, (delays, expected)

    crasher = stack.process("crasher")
    assert crasher.restarts == len(restarted)
    assert crasher.last_exit_code == 3
    status = json.loads(stack.status_file.read_text())
    entry = status["components"]["crasher"]
    assert entry["restarts"] == crasher.restarts
    assert entry["last_exit_code"] == 3
    assert entry["state"] == "down"
    assert entry["pid"] == crasher.popen.pid
    assert entry["last_restart_at"] is not None
    log = crasher.log_path.read_text()
    assert "crasher" in log
    assert log.count("exited with code 3") >= crasher.restarts
    assert f"restart {crasher.restarts}, new pid" in log


def test_component_that_stayed_up_restarts_after_the_first_delay_again(
    tmp_path: Path, pg_server: PgServer
) -> None:
    lives_half_a_second = [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"]
    policy = RestartPolicy(first_delay=0.2, max_delay=5, stable_after=0.3)
    stack = make_stack(tmp_path, pg_server, {"steady": lives_half_a_second}, restart_policy=policy)
    stack.start()
    try:
        noticed, restarted = supervise_for(stack, "steady", seconds=3.5)
    finally:
        stack.stop()

    delays = [r - n for n, r in zip(noticed, restarted, strict=False)]
    assert len(delays) >= 3, delays
    assert all(0.2 - POLL <= d <= 0.2 + SLACK for d in delays), delays


def test_background_supervisor_restarts_and_stop_ends_it_first(tmp_path: Path, pg_server: PgServer) -> None:
    policy = RestartPolicy(first_delay=0.1, max_delay=0.2, stable_after=60)
    stack = make_stack(tmp_path, pg_server, {"crasher": EXIT_3, "sleeper": SLEEPER}, restart_policy=policy)
    stack.start(supervise=True)
    sessions = [p.popen.pid for p in stack.processes]
    try:
        deadline = time.monotonic() + 15
        while stack.process("crasher").restarts < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stack.process("crasher").restarts >= 3
        assert stack.restart_counts()["sleeper"] == 0

        report = run_status(stack)
        assert report.returncode == 1, report.stdout  # the crasher is down between its restarts
        rows = status_rows(report.stdout)
        assert rows["sleeper"][2] == "up"
        assert rows["crasher"][-1] == "3"
    finally:
        stack.stop()

    assert not stack.supervised
    counts = stack.restart_counts()
    time.sleep(1)
    assert stack.restart_counts() == counts, "a restart happened after stop()"
    sessions += [p.popen.pid for p in stack.processes]
    assert not [p for sid in sessions for p in session_processes(sid)]


def test_status_exit_codes(tmp_path: Path, pg_server: PgServer) -> None:
    stack = make_stack(tmp_path, pg_server, {"sleeper": SLEEPER}, api_port=unused_port())
    assert run_status(stack).returncode == 2  # nothing started yet
    stack.start(supervise=True)
    try:
        report = run_status(stack)
        assert report.returncode == 0, report.stdout
        assert status_rows(report.stdout)["sleeper"][1] == str(stack.process("sleeper").popen.pid)
        assert "API not answering" in report.stdout
    finally:
        stack.stop()
    assert run_status(stack).returncode == 1


def test_restart_waits_for_postgres_then_gives_up_waiting(tmp_path: Path, pg_server: PgServer) -> None:
    policy = RestartPolicy(first_delay=0.1, max_delay=0.1, stable_after=60)
    stack = make_stack(tmp_path, pg_server, {"crasher": EXIT_3}, restart_policy=policy, database_wait=1.5)
    stack.start()
    try:
        # Postgres "goes away": the stack now points at a port where nothing listens.
        stack.sql_alchemy_conn = f"postgresql+psycopg2://postgres@127.0.0.1:{unused_port()}/postgres"
        started = time.monotonic()
        noticed, restarted = supervise_for(stack, "crasher", seconds=2.5)
    finally:
        stack.stop()
    assert noticed, "the exit was never noticed"
    assert restarted, "the bounded wait for Postgres never ended"
    assert restarted[0] - started >= 1.5 - POLL


def test_start_fails_when_postgres_never_accepts_connections(tmp_path: Path) -> None:
    unreachable = PgServer(host="127.0.0.1", port=unused_port(), user="postgres")
    stack = AirflowStack(
        airflow_home=tmp_path / "home",
        sql_alchemy_conn=unreachable.sqlalchemy_url("postgres"),
        components=(),
        extra_processes={"sleeper": SLEEPER},
        database_wait=1,
    )
    with pytest.raises(StackError, match="did not accept connections within 1s"):
        stack.start()
    assert stack.processes == []


def run_status(stack: AirflowStack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.stack", "status", "--status-file", str(stack.status_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def status_rows(report: str) -> dict[str, list[str]]:
    """`status` table rows by component: [name, pid, state, uptime, restarts, last exit...]."""
    rows = [line.split() for line in report.splitlines()[1:] if line and not line.startswith("health")]
    return {row[0]: row for row in rows}


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
